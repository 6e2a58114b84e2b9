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

#include "log.h"

void store_options_default(struct store_options *o)
{
	static const double momenta[] = { 0.3, 0.1, 0.03, 0.01, 0.003, 0.001 };
	size_t i;

	*o = (struct store_options){ .queue_max = 1024,
				     .group_max = 512,
				     .sync_full = true,
				     .history_full_steps = 5000,
				     .open_steps_bytes = (size_t)256 << 20 };
	for (i = 0; i < sizeof(momenta) / sizeof(momenta[0]); i++)
		o->sim_momenta[i] = momenta[i];
	o->n_sim_momenta = i;
}

int store_open(const char *path, const struct store_options *opt, struct store **out,
	       struct bn_error *err)
{
	struct store *s;
	char pragma[64];

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
	s->path = strdup(path);
	if (s->path == NULL) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		goto fail;
	}

	if (store_sql_open(path, true, &s->wdb, err) < 0)
		goto fail;
	/*
	 * These two only take effect on a new, empty database. Large pages suit
	 * rows that are blobs of tens to hundreds of KB (fewer overflow pages
	 * per row); incremental auto-vacuum lets retention shrink the file.
	 */
	if (store_sql_exec(s->wdb, "PRAGMA page_size=65536", err) < 0 ||
	    store_sql_exec(s->wdb, "PRAGMA auto_vacuum=INCREMENTAL", err) < 0 ||
	    store_sql_exec(s->wdb, "PRAGMA journal_mode=WAL", err) < 0)
		goto fail;
	snprintf(pragma, sizeof(pragma), "PRAGMA synchronous=%s",
		 s->opt.sync_full ? "FULL" : "NORMAL");
	if (store_sql_exec(s->wdb, pragma, err) < 0 ||
	    store_sql_exec(s->wdb, "PRAGMA foreign_keys=ON", err) < 0)
		goto fail;
	if (store_schema_migrate(s, err) < 0)
		goto fail;
	/*
	 * late_writes only serve to validate replay checkpoints, which live in
	 * memory: none exists yet, so the log can start empty.
	 */
	if (store_sql_exec(s->wdb, "DELETE FROM late_writes", err) < 0)
		goto fail;
	if (store_checkpoint_start(s, err) < 0 || store_schema_prepare(s, err) < 0)
		goto fail;
	/* A bucketing pass may have been cut short: look at every domain once. */
	store_history_touch_all(s);
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
