/*
 * store_retention: with retain_steps set, drop per-step statistics and
 * batch identities at or below each run's horizon (highest step -
 * retain_steps), with the worker EMAs of those steps; snapshots stay. With
 * retain_runs_days set, delete whole runs that many days after their last
 * accepted batch, one run a pass (and forget the daemon's counts of it,
 * metrics.h). The writer runs bounded passes between
 * groups, so that a large backlog never holds uploads up for long. Writer
 * thread only.
 */
#include "store_private.h"

#include <stdio.h>

#include "log.h"
#include "metrics.h"

/* Rows a pass drops at most (about). */
#define RETENTION_BUDGET 2000
/* Runs a pass looks at at most (the LIMIT of W_RET_RUNS). */
#define RETENTION_RUNS 64

/* A run retain_runs_days expires. */
struct expired_run {
	int64_t id;
	char name[INGEST_NAME_MAX + 1];
};

static int read_expired(void *ctx, sqlite3_stmt *st)
{
	struct expired_run *run = ctx;

	run->id = sqlite3_column_int64(st, 0);
	snprintf(run->name, sizeof(run->name), "%s", (const char *)sqlite3_column_text(st, 1));
	return 1;
}

struct run_horizons {
	struct store *s;
	struct {
		int64_t run_id, horizon;
	} runs[RETENTION_RUNS];
	int n, listed;
};

static int read_run(void *ctx, sqlite3_stmt *st)
{
	struct run_horizons *h = ctx;
	struct store *s = h->s;

	h->listed++;
	s->retention.cursor = sqlite3_column_int64(st, 0);
	if (sqlite3_column_type(st, 1) == SQLITE_NULL)
		return 0;
	h->runs[h->n].run_id = sqlite3_column_int64(st, 0);
	h->runs[h->n].horizon = sqlite3_column_int64(st, 1) - s->opt.retain_steps;
	h->n++;
	return 0;
}

/*
 * One pass over at most about `budget` rows, in its own transaction.
 * Returns true when rows remain to be dropped.
 */
static bool retention_pass(struct store *s, int budget)
{
	sqlite3_stmt *st = s->wstmt[W_RET_RUNS];
	struct run_horizons h = { .s = s };
	int i, deleted = 0;
	bool more;
	struct bn_error err;

	if (store_sql_exec(s->wdb, "BEGIN IMMEDIATE", &err) < 0)
		return false;
	/* Up to 64 runs a pass, resuming after the last one seen: every run gets its turn. */
	sqlite3_bind_int64(st, 1, s->retention.cursor);
	/* a failed step ends the list early, as the end of the runs would */
	(void)store_sql_rows(st, read_run, &h);
	more = h.listed == RETENTION_RUNS; /* more runs after the cursor */
	if (!more)
		s->retention.cursor = 0;
	for (i = 0; i < h.n && deleted < budget; i++) {
		int64_t run_id = h.runs[i].run_id, horizon = h.runs[i].horizon;
		int changed;

		st = s->wstmt[W_RET_AGGS];
		sqlite3_bind_int64(st, 1, run_id);
		sqlite3_bind_int64(st, 2, horizon);
		sqlite3_bind_int64(st, 3, budget - deleted);
		if (store_sql_run(st) < 0)
			goto fail;
		changed = sqlite3_changes(s->wdb);
		st = s->wstmt[W_RET_EMAS];
		sqlite3_bind_int64(st, 1, run_id);
		sqlite3_bind_int64(st, 2, horizon);
		sqlite3_bind_int64(st, 3,
				   budget - deleted - changed > 0 ? budget - deleted - changed : 1);
		if (store_sql_run(st) < 0)
			goto fail;
		changed += sqlite3_changes(s->wdb);
		if (changed == 0)
			continue;
		deleted += changed;
		if (deleted >= budget) {
			more = true;
			/* this run again first next time: it may have more to drop */
			s->retention.cursor = run_id - 1;
		}
		st = s->wstmt[W_RET_BATCHES];
		sqlite3_bind_int64(st, 1, run_id);
		sqlite3_bind_int64(st, 2, horizon);
		if (store_sql_run(st) < 0)
			goto fail;
		st = s->wstmt[W_RET_SIMS];
		sqlite3_bind_int64(st, 1, run_id);
		sqlite3_bind_int64(st, 2, horizon);
		if (store_sql_run(st) < 0)
			goto fail;
		st = s->wstmt[W_RET_DRIFT];
		sqlite3_bind_int64(st, 1, run_id);
		sqlite3_bind_int64(st, 2, horizon);
		if (store_sql_run(st) < 0)
			goto fail;
		if (store_bytes_recount(s, run_id) < 0)
			goto fail;
		st = s->wstmt[W_RET_LATE];
		sqlite3_bind_int64(st, 1, run_id);
		if (store_sql_run(st) < 0)
			goto fail;
		st = s->wstmt[W_RET_LATE_GC];
		sqlite3_bind_int64(st, 1, run_id);
		sqlite3_bind_int64(st, 2, sqlite3_last_insert_rowid(s->wdb));
		if (store_sql_run(st) < 0)
			goto fail;
	}
	if (store_sql_exec(s->wdb, "COMMIT", &err) < 0)
		goto fail;
	if (deleted > 0) {
		/* Give the freed pages back to the file system, a bounded number at a time. */
		sqlite3_exec(s->wdb, "PRAGMA incremental_vacuum(4096)", NULL, NULL, NULL);
		log_info("retention", "rows_dropped=%d more=%d", deleted, more);
	}
	return more;
fail:
	log_error("retention_failed", "error=\"%s\"", sqlite3_errmsg(s->wdb));
	sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
	return false;
}

/*
 * Delete the oldest-numbered run whose last upload is older than
 * retain_runs_days, in its own transaction. Returns true when one was.
 */
static bool expiry_pass(struct store *s)
{
	sqlite3_stmt *st = s->wstmt[W_RUN_EXPIRED];
	struct bn_error err;
	struct expired_run run = { 0, "" };
	int64_t cutoff = store_now_ms() - s->opt.retain_runs_days * 86400000LL;

	if (store_sql_exec(s->wdb, "BEGIN IMMEDIATE", &err) < 0)
		return false;
	sqlite3_bind_int64(st, 1, cutoff);
	if (store_sql_rows(st, read_expired, &run) < 0)
		goto fail;
	if (run.id == 0) {
		sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
		return false;
	}
	st = s->wstmt[W_RUN_DEL];
	sqlite3_bind_int64(st, 1, run.id);
	if (store_sql_run(st) < 0 || store_sql_exec(s->wdb, "COMMIT", &err) < 0)
		goto fail;
	store_aggcache_drop_run(&s->aggcache, run.id);
	metrics_forget_run(run.name);
	sqlite3_exec(s->wdb, "PRAGMA incremental_vacuum(4096)", NULL, NULL, NULL);
	log_info("run_expired", "run=%s retain_runs_days=%lld", run.name,
		 (long long)s->opt.retain_runs_days);
	return true;
fail:
	log_error("retention_failed", "error=\"%s\"", sqlite3_errmsg(s->wdb));
	sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
	return false;
}

/* A retention pass every 10 s, or every 100 ms while a backlog remains. */
bool store_retention_due(struct store *s)
{
	struct timespec now;
	double since;

	if (s->opt.retain_steps <= 0 && s->opt.retain_runs_days <= 0)
		return false;
	clock_gettime(CLOCK_MONOTONIC, &now);
	since = (double)(now.tv_sec - s->retention.last.tv_sec) +
		(double)(now.tv_nsec - s->retention.last.tv_nsec) / 1e9;
	return since >= (s->retention.more ? 0.1 : 10.0);
}

void store_retention_run(struct store *s)
{
	bool more = false;

	if (s->opt.retain_runs_days > 0)
		more = expiry_pass(s);
	if (s->opt.retain_steps > 0 && retention_pass(s, RETENTION_BUDGET))
		more = true;
	s->retention.more = more;
	clock_gettime(CLOCK_MONOTONIC, &s->retention.last);
}
