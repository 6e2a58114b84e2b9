/*
 * store: opening and closing the store — the connections, the PRAGMAs a
 * fresh database gets, the migrations, and starting and stopping the
 * checkpointer and the writer — and the few facts about the database file
 * itself. How the parts fit: store.h; their state: store_private.h.
 */
#include "store_private.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "log.h"

void store_options_default(struct store_options *o)
{
	static const double momenta[] = { 0.3, 0.1, 0.03, 0.01, 0.003, 0.001 };
	size_t i;

	*o = (struct store_options){ .queue_max = 1024,
				     .group_max = 512,
				     .sync_full = true,
				     .integrity_check = true,
				     .history_full_steps = 5000,
				     .open_steps_bytes = (size_t)256 << 20,
				     .disk_free_warn_bytes = (size_t)1 << 30 };
	for (i = 0; i < sizeof(momenta) / sizeof(momenta[0]); i++)
		o->sim_momenta[i] = momenta[i];
	o->n_sim_momenta = i;
}

static int first_text(void *ctx, sqlite3_stmt *st)
{
	const unsigned char *t = sqlite3_column_text(st, 0);

	snprintf(ctx, 256, "%s", t ? (const char *)t : "");
	return 1;
}

/*
 * PRAGMA quick_check before anything is written (docs/OPERATIONS.md, "A
 * damaged database"): a file whose pages do not hold together is refused,
 * rather than acknowledging uploads into it. It reads the whole file once.
 */
static int integrity_check(struct store *s, struct bn_error *err)
{
	char first[256] = "";
	sqlite3_stmt *st;
	struct timespec t0, t1;
	int rc;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (store_sql_prepare(s->wdb, "PRAGMA quick_check(1)", &st) < 0) {
		/* not even the schema reads: as damaged as it gets */
		snprintf(first, sizeof(first), "%s", sqlite3_errmsg(s->wdb));
		rc = 1;
	} else {
		rc = store_sql_rows(st, first_text, first);
		if (rc < 0)
			snprintf(first, sizeof(first), "%s", sqlite3_errmsg(s->wdb));
		sqlite3_finalize(st);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	for (char *c = first; *c != '\0'; c++)
		if ((unsigned char)*c < 0x20)
			*c = ' '; /* quick_check's report is lines: keep the log line one */
	if (rc >= 0 && strcmp(first, "ok") == 0) {
		log_info("integrity_check", "result=ok seconds=%.3f",
			 (double)(t1.tv_sec - t0.tv_sec) +
				 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
		return 0;
	}
	log_error("integrity_check", "result=damaged db=\"%s\" first=\"%s\"", s->path, first);
	return bn_error_set(
		err, 500, BN_E_INTERNAL, NULL,
		"database %s is damaged (PRAGMA quick_check: %s); nothing was written "
		"to it: restore a backup or recover it (docs/OPERATIONS.md, \"A damaged "
		"database\")",
		s->path, first);
}

/*
 * A write at start failed. A full disk (or one that refuses writes) leaves
 * the store READ_ONLY and the start goes on, serving reads (docs/OPERATIONS.md,
 * "A full disk"); anything else fails it. Returns 0 or -EIO.
 */
static int start_write_failed(struct store *s)
{
	return store_health_after_write(s, "start") == STORE_READ_ONLY ? 0 : -EIO;
}

int store_open(const char *path, const struct store_options *opt, struct store **out,
	       struct bn_error *err)
{
	struct store *s;
	char pragma[64];
	int64_t pages = 0;

	*out = NULL;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
	if (opt != NULL)
		s->opt = *opt;
	else
		store_options_default(&s->opt);
	if (s->opt.queue_max == 0)
		s->opt.queue_max = 1;
	if (s->opt.group_max == 0)
		s->opt.group_max = 1;
	pthread_mutex_init(&s->queue.mu, NULL);
	pthread_cond_init(&s->queue.cv, NULL);
	pthread_mutex_init(&s->readers.mu, NULL);
	pthread_mutex_init(&s->ckpt.mu, NULL);
	pthread_cond_init(&s->ckpt.cv, NULL);
	pthread_cond_init(&s->ckpt.idle, NULL);
	store_health_init(s);
	s->path = strdup(path);
	if (s->path == NULL) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		goto fail;
	}

	if (store_sql_open(path, true, &s->wdb, err) < 0)
		goto fail;
	/* before anything writes: even a PRAGMA may rewrite the file's header */
	if (s->opt.integrity_check && integrity_check(s, err) < 0)
		goto fail;
	/*
	 * These two only take effect on a new, empty database (and on an old
	 * one auto_vacuum would rewrite the header for nothing). Large pages
	 * suit rows that are blobs of tens to hundreds of KB (fewer overflow
	 * pages per row); incremental auto-vacuum lets retention shrink the
	 * file.
	 */
	if (store_sql_int64(s->wdb, "PRAGMA page_count", 0, 0, NULL, &pages) < 0) {
		store_sql_error(err, s->wdb, "reading the page count");
		goto fail;
	}
	if (pages == 0 && (store_sql_exec(s->wdb, "PRAGMA page_size=65536", err) < 0 ||
			   store_sql_exec(s->wdb, "PRAGMA auto_vacuum=INCREMENTAL", err) < 0))
		goto fail;
	if (store_sql_exec(s->wdb, "PRAGMA journal_mode=WAL", err) < 0 && start_write_failed(s) < 0)
		goto fail;
	snprintf(pragma, sizeof(pragma), "PRAGMA synchronous=%s",
		 s->opt.sync_full ? "FULL" : "NORMAL");
	if (store_sql_exec(s->wdb, pragma, err) < 0 ||
	    store_sql_exec(s->wdb, "PRAGMA foreign_keys=ON", err) < 0)
		goto fail;
	/* a migration that cannot be written fails the start: reads need the new schema */
	if (store_schema_migrate(s, err) < 0)
		goto fail;
	/*
	 * late_writes only serve to validate replay checkpoints, which live in
	 * memory: none exists yet, so the log can start empty. On a full disk
	 * the old rows stay: they are older than any checkpoint made from now on.
	 */
	if (store_health_writable(s) &&
	    store_sql_exec(s->wdb, "DELETE FROM late_writes", err) < 0 && start_write_failed(s) < 0)
		goto fail;
	if (store_checkpoint_start(s, err) < 0 || store_schema_prepare(s, err) < 0)
		goto fail;
	/* a full disk that the steps above did not need to write to shows here */
	if (store_health_writable(s))
		store_health_probe_start(s);
	/* A bucketing pass may have been cut short: look at every domain once. */
	store_history_touch_all(s);
	/* what the reads of the start met (a damaged page: no write is acknowledged) */
	store_health_after_write(s, "start");
	if (store_writer_start(s, err) < 0)
		goto fail;
	*out = s;
	return 0;

fail:
	store_close(s);
	return -EIO;
}

void store_close(struct store *s)
{
	if (s == NULL)
		return;
	store_stop_writer(s);
	store_checkpoint_stop(s);
	store_schema_finalize(s);
	store_readers_close(s);
	if (s->wdb != NULL) {
		/* A clean close checkpoints the WAL into the main file. */
		if (sqlite3_close(s->wdb) != SQLITE_OK)
			log_error("close_failed", "error=\"%s\"", sqlite3_errmsg(s->wdb));
	}
	pthread_mutex_destroy(&s->queue.mu);
	pthread_cond_destroy(&s->queue.cv);
	pthread_mutex_destroy(&s->readers.mu);
	pthread_mutex_destroy(&s->ckpt.mu);
	pthread_cond_destroy(&s->ckpt.cv);
	pthread_cond_destroy(&s->ckpt.idle);
	store_health_destroy(s);
	store_aggcache_clear(&s->aggcache);
	free(s->wlayer_ids);
	free(s->history.pending);
	free(s->bytes.runs);
	free(s->wscratch);
	free(s->path);
	free(s);
}

unsigned long long store_disk_bytes(struct store *s)
{
	char wal[4200];
	struct stat st;
	unsigned long long n = 0;

	if (stat(s->path, &st) == 0)
		n += (unsigned long long)st.st_size;
	snprintf(wal, sizeof(wal), "%s-wal", s->path);
	if (stat(wal, &st) == 0)
		n += (unsigned long long)st.st_size;
	return n;
}

int store_schema_version(struct store *s)
{
	return s->schema_version;
}
