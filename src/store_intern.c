/*
 * store_intern: the writer's lookups of runs, domains and layers by name,
 * creating what an upload names for the first time. Writer thread only,
 * inside the group's transaction.
 */
#include "store_private.h"

#include <stdio.h>

static int read_id(void *ctx, sqlite3_stmt *st)
{
	*(int64_t *)ctx = sqlite3_column_int64(st, 0);
	return 1;
}

int store_intern_run(struct store *s, const char *name, int64_t *run_id)
{
	sqlite3_stmt *st = s->wstmt[W_RUN_GET];
	int64_t id;
	int rc;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read_id, run_id);
	if (rc != 0)
		return rc > 0 ? 0 : rc;

	/* A fresh id that no earlier (deleted) run ever had. */
	if (store_sql_run(s->wstmt[W_RUN_ID_NEW]) < 0)
		return -EIO;
	id = sqlite3_last_insert_rowid(s->wdb);
	if (store_sql_run(s->wstmt[W_RUN_ID_DROP]) < 0)
		return -EIO;
	st = s->wstmt[W_RUN_INS];
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, store_now_ms());
	sqlite3_bind_int64(st, 3, id);
	if (store_sql_run(st) < 0)
		return -EIO;
	*run_id = sqlite3_last_insert_rowid(s->wdb);
	return 0;
}

int store_intern_domain(struct store *s, int64_t run_id, const char *name, int64_t *domain_id)
{
	sqlite3_stmt *st = s->wstmt[W_DOM_GET];
	int rc;

	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read_id, domain_id);
	if (rc != 0)
		return rc > 0 ? 0 : rc;

	st = s->wstmt[W_DOM_INS];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	if (store_sql_run(st) < 0)
		return -EIO;
	*domain_id = sqlite3_last_insert_rowid(s->wdb);
	return 0;
}

struct layer_row {
	int64_t id;
	int64_t channels;
};

static int read_layer(void *ctx, sqlite3_stmt *st)
{
	struct layer_row *l = ctx;

	l->id = sqlite3_column_int64(st, 0);
	l->channels = sqlite3_column_int64(st, 1);
	return 1;
}

int store_intern_layer(struct store *s, int64_t run_id, const struct ingest_layer *l, bool create,
		       int64_t *layer_id, struct bn_error *err)
{
	sqlite3_stmt *st = s->wstmt[W_LAYER_GET];
	struct layer_row have = { 0 };
	char path[BN_ERROR_PATH_MAX];
	int rc;

	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, l->name, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read_layer, &have);
	if (rc > 0) {
		*layer_id = have.id;
		if ((size_t)have.channels == l->channels)
			return 0;
		snprintf(path, sizeof(path), "layers.%s.mean", l->name);
		return bn_error_set(err, 422, BN_E_INVALID, path,
				    "layer %s has %lld channels (fixed by its first upload); this "
				    "upload has %zu",
				    l->name, (long long)have.channels, l->channels);
	}
	if (rc < 0)
		return store_sql_error(err, s->wdb, "looking up layer");
	*layer_id = 0;
	if (!create)
		return 0;

	st = s->wstmt[W_LAYER_INS];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, l->name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)l->channels);
	if (store_sql_run(st) < 0)
		return store_sql_error(err, s->wdb, "creating layer");
	*layer_id = sqlite3_last_insert_rowid(s->wdb);
	return 0;
}

int store_intern_find_run(struct store *s, const char *run, int64_t *run_id, struct bn_error *err)
{
	sqlite3_stmt *st = s->wstmt[W_RUN_GET];
	int rc;

	sqlite3_bind_text(st, 1, run, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read_id, run_id);
	if (rc == 0)
		return bn_error_set(err, 404, BN_E_NOT_FOUND, "run", "no run named %s", run);
	if (rc < 0)
		return store_sql_error(err, s->wdb, "looking up run");
	return 0;
}
