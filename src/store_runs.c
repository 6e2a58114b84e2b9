/*
 * store_runs: describing runs and what they hold — the runs with their
 * counts, a page at a time (by name, from a prefix and a cursor), and a
 * run's layers, domains and workers (docs/API.md, "Runs", "Domains").
 */
#include "store_private.h"

#include <stdio.h>
#include <string.h>

static const char run_info_sql[] =
	"SELECT r.name, r.created,"
	" (SELECT count(*) FROM batches b WHERE b.run_id = r.id),"
	" (SELECT min(step) FROM batches b WHERE b.run_id = r.id),"
	" (SELECT max(step) FROM batches b WHERE b.run_id = r.id),"
	" (SELECT count(*) FROM layers l WHERE l.run_id = r.id),"
	" (SELECT count(*) FROM domains d WHERE d.run_id = r.id),"
	" (SELECT count(DISTINCT worker) FROM batches b WHERE b.run_id = r.id),"
	" r.bytes"
	" FROM runs r";

struct run_walk {
	store_run_fn fn;
	void *ctx;
	bool found;
};

/* A row of run_info_sql. */
static int read_run_info(void *ctx, sqlite3_stmt *st)
{
	struct run_walk *w = ctx;
	struct store_run_info info = {
		.name = (const char *)sqlite3_column_text(st, 0),
		.created_ms = sqlite3_column_int64(st, 1),
		.batches = sqlite3_column_int64(st, 2),
		.step_min = sqlite3_column_int64(st, 3),
		.step_max = sqlite3_column_int64(st, 4),
		.layers = sqlite3_column_int64(st, 5),
		.domains = sqlite3_column_int64(st, 6),
		.workers = sqlite3_column_int64(st, 7),
		.bytes = sqlite3_column_int64(st, 8),
	};

	w->found = true;
	return w->fn(w->ctx, &info);
}

/* A row of (name, highest step with statistics or NULL). */
static int read_last_step(void *ctx, sqlite3_stmt *st)
{
	struct run_walk *w = ctx;
	struct store_run_info info = {
		.name = (const char *)sqlite3_column_text(st, 0),
		.batches = sqlite3_column_type(st, 1) != SQLITE_NULL,
		.step_max = sqlite3_column_int64(st, 1),
		.bytes = sqlite3_column_int64(st, 2),
	};

	return w->fn(w->ctx, &info);
}

/* Run the one-shot query sql (?1 bound to text when not NULL), each row to read. */
static int run_rows(struct store_reader *r, const char *sql, const char *text,
		    store_sql_row_fn read, struct run_walk *w)
{
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(r->db, sql, &st) < 0)
		return -EIO;
	if (text != NULL)
		sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read, w);
	sqlite3_finalize(st);
	return rc;
}

int store_runs_last_step(struct store_reader *r, store_run_fn fn, void *ctx)
{
	struct run_walk w = { fn, ctx, false };

	return run_rows(r,
			"SELECT name, (SELECT max(step) FROM aggs a WHERE a.run_id = r.id), bytes"
			" FROM runs r ORDER BY name",
			NULL, read_last_step, &w);
}

/*
 * The smallest string above every string that starts with prefix (a
 * non-empty prefix of len bytes, compared as SQLite's BINARY collation
 * does: unsigned bytes): the prefix with its last byte below 0xff raised
 * by one and what follows dropped, into end[size]. false when there is
 * none (every byte 0xff: no upper bound).
 */
static bool prefix_end(const char *prefix, size_t len, char *end, size_t size)
{
	while (len > 0 && (unsigned char)prefix[len - 1] == 0xff)
		len--;
	if (len == 0 || len >= size)
		return false;
	memcpy(end, prefix, len);
	end[len - 1] = (char)((unsigned char)end[len - 1] + 1);
	end[len] = '\0';
	return true;
}

int store_runs_page(struct store_reader *r, const char *prefix, const char *after, int64_t limit,
		    store_run_fn fn, void *ctx)
{
	struct run_walk w = { fn, ctx, false };
	char sql[sizeof(run_info_sql) + 128];
	char end[STORE_RUNS_BOUND_MAX + 1];
	const char *lo = NULL, *lower;
	bool lo_open = false, has_end = false;
	sqlite3_stmt *st;
	int rc;

	if (prefix != NULL && prefix[0] != '\0') {
		if (strlen(prefix) > STORE_RUNS_BOUND_MAX)
			return -EINVAL;
		lo = prefix;
		has_end = prefix_end(prefix, strlen(prefix), end, sizeof(end));
	}
	/* one lower bound, the higher of the two: the index is searched from it */
	if (after != NULL && after[0] != '\0' && (lo == NULL || strcmp(after, lo) >= 0)) {
		lo = after;
		lo_open = true;
	}
	/*
	 * A range over the UNIQUE index of runs.name, never LIKE: '_' and '%'
	 * are literal characters of a prefix, and only the page's rows are read.
	 */
	lower = lo == NULL ? "1" : lo_open ? "r.name > ?1" : "r.name >= ?1";
	snprintf(sql, sizeof(sql), "%s WHERE %s%s ORDER BY r.name LIMIT ?3", run_info_sql, lower,
		 has_end ? " AND r.name < ?2" : "");
	if (store_sql_prepare(r->db, sql, &st) < 0)
		return -EIO;
	if (lo != NULL)
		sqlite3_bind_text(st, 1, lo, -1, SQLITE_STATIC);
	if (has_end)
		sqlite3_bind_text(st, 2, end, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, limit < 0 ? -1 : limit);
	rc = store_sql_rows(st, read_run_info, &w);
	sqlite3_finalize(st);
	return rc;
}

int store_run_describe(struct store_reader *r, const char *run, store_run_fn fn, void *ctx)
{
	struct run_walk w = { fn, ctx, false };
	char sql[sizeof(run_info_sql) + 32];
	int rc;

	snprintf(sql, sizeof(sql), "%s WHERE r.name = ?1", run_info_sql);
	rc = run_rows(r, sql, run, read_run_info, &w);
	return rc == 0 && !w.found ? -ENOENT : rc;
}

/* --- a run's layers, domains and workers ------------------------------------ */

struct item_walk {
	store_item_fn fn;
	void *ctx;
};

/* Rows of (id, name, channels). */
static int read_layer(void *ctx, sqlite3_stmt *st)
{
	struct item_walk *w = ctx;
	struct store_item item = { 0 };

	item.id = sqlite3_column_int64(st, 0);
	item.name = (const char *)sqlite3_column_text(st, 1);
	item.layer.channels = sqlite3_column_int64(st, 2);
	return w->fn(w->ctx, &item);
}

/*
 * Rows of (id, name, batches, steps, layers, elements, bucketed through or
 * NULL, drift metrics through or NULL).
 */
static int read_domain(void *ctx, sqlite3_stmt *st)
{
	struct item_walk *w = ctx;
	struct store_item item = { 0 };

	item.id = sqlite3_column_int64(st, 0);
	item.name = (const char *)sqlite3_column_text(st, 1);
	item.domain.batches = sqlite3_column_int64(st, 2);
	item.domain.steps = sqlite3_column_int64(st, 3);
	item.domain.layers = sqlite3_column_int64(st, 4);
	item.domain.elements = sqlite3_column_int64(st, 5);
	item.domain.bucketed = sqlite3_column_type(st, 6) != SQLITE_NULL;
	item.domain.bucketed_through = sqlite3_column_int64(st, 6);
	item.domain.drift = sqlite3_column_type(st, 7) != SQLITE_NULL;
	item.domain.drift_through = sqlite3_column_int64(st, 7);
	return w->fn(w->ctx, &item);
}

/* Rows of (0, worker, batches, last step). */
static int read_worker(void *ctx, sqlite3_stmt *st)
{
	struct item_walk *w = ctx;
	struct store_item item = { 0 };

	item.id = sqlite3_column_int64(st, 0);
	item.name = (const char *)sqlite3_column_text(st, 1);
	item.worker.batches = sqlite3_column_int64(st, 2);
	item.worker.last_step = sqlite3_column_int64(st, 3);
	return w->fn(w->ctx, &item);
}

static int item_rows(struct store_reader *r, const char *sql, int64_t run_id, store_sql_row_fn read,
		     store_item_fn fn, void *ctx)
{
	struct item_walk w = { fn, ctx };
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(r->db, sql, &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	rc = store_sql_rows(st, read, &w);
	sqlite3_finalize(st);
	return rc;
}

int store_layers_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx)
{
	return item_rows(r, "SELECT id, name, channels FROM layers WHERE run_id = ?1 ORDER BY name",
			 run_id, read_layer, fn, ctx);
}

int store_domains_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx)
{
	return item_rows(r,
			 "SELECT d.id, d.name,"
			 " (SELECT count(*) FROM batches b WHERE b.run_id = d.run_id AND "
			 "b.domain_id = d.id),"
			 " (SELECT count(DISTINCT step) FROM aggs a"
			 "  WHERE a.run_id = d.run_id AND a.domain_id = d.id),"
			 " (SELECT count(DISTINCT layer_id) FROM aggs a"
			 "  WHERE a.run_id = d.run_id AND a.domain_id = d.id),"
			 " (SELECT coalesce(sum(n), 0) FROM aggs a"
			 "  WHERE a.run_id = d.run_id AND a.domain_id = d.id),"
			 " (SELECT done FROM history h"
			 "  WHERE h.run_id = d.run_id AND h.domain_id = d.id AND h.tier = 1),"
			 " (SELECT done FROM history h"
			 "  WHERE h.run_id = d.run_id AND h.domain_id = d.id AND h.tier = -1)"
			 " FROM domains d WHERE d.run_id = ?1 ORDER BY d.name",
			 run_id, read_domain, fn, ctx);
}

int store_workers_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx)
{
	return item_rows(r,
			 "SELECT 0, worker, count(*), max(step) FROM batches WHERE run_id = ?1"
			 " GROUP BY worker ORDER BY worker",
			 run_id, read_worker, fn, ctx);
}
