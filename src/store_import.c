/*
 * store_import: storing a run file as a new run (docs/API.md, "Moving a
 * run"), inside the group's transaction and the job's savepoint: every row
 * or none. The file's ids only link its rows; the run, its domains, layers
 * and snapshots get new ids here, in the file's order, so that every order
 * the queries take by id is the exporting store's. Writer thread only.
 */
#include "store_private.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

/* A row of the file's domains, layers or snapshots: its id there and here. */
struct id_map_entry {
	int64_t file_id, id, channels;
};

struct id_map {
	struct id_map_entry *v;
	size_t n;
};

static int by_file_id(const void *a, const void *b)
{
	const struct id_map_entry *x = a, *y = b;

	return (x->file_id > y->file_id) - (x->file_id < y->file_id);
}

static const struct id_map_entry *id_find(const struct id_map *m, int64_t file_id)
{
	struct id_map_entry key = { .file_id = file_id };

	return bsearch(&key, m->v, m->n, sizeof(key), by_file_id);
}

/* Which map a table's own ids go to, or that a reference column reads. */
static int map_of(enum store_rf_type type, size_t table)
{
	if (type == STORE_RF_DOMAIN || (type == STORE_RF_ID && table == STORE_RF_T_DOMAINS))
		return 0;
	if (type == STORE_RF_LAYER || (type == STORE_RF_ID && table == STORE_RF_T_LAYERS))
		return 1;
	return 2;
}

/* Is a data blob of len bytes what the table holds for a layer of c channels? */
static bool blob_fits(size_t table, size_t len, int64_t c)
{
	size_t n = (size_t)c;

	switch (table) {
	case STORE_RF_T_AGGS:
		return len == STATS_AGG_ARRAYS * n * sizeof(double);
	case STORE_RF_T_EMAS:
	case STORE_RF_T_SIMS:
		/* mean then var, as doubles, or as floats when every value was one */
		return len == 2 * n * sizeof(double) || len == 2 * n * sizeof(float);
	case STORE_RF_T_SNAPSHOT_LAYERS:
		return len == 2 * n * sizeof(double);
	default:
		return true;
	}
}

struct import {
	struct store *s;
	struct bn_error *err;
	int64_t run_id;
	struct id_map maps[3];
};

static int refuse(struct import *im, size_t table, size_t row, const char *why)
{
	return bn_error_set(im->err, 422, BN_E_INVALID, "tables", "%s row %zu: %s",
			    store_rf_tables[table].name, row, why);
}

/* Insert row i of table t: 0, or a negative errno with im->err filled in. */
static int insert_row(struct import *im, sqlite3_stmt *st, size_t t, size_t i,
		      const struct store_rf_value *vals)
{
	const struct store_rf_table *tab = &store_rf_tables[t];
	int64_t own_id = 0, channels = 0;
	int p = 2;
	size_t c;

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	sqlite3_bind_int64(st, 1, im->run_id);
	for (c = 0; c < tab->n_cols; c++) {
		const struct store_rf_column *col = &tab->cols[c];
		const struct store_rf_value *v = &vals[c];
		const struct id_map_entry *e;

		if (v->null) {
			if (!col->nullable || col->type == STORE_RF_ID)
				return refuse(im, t, i, "a null where a value is needed");
			sqlite3_bind_null(st, p++);
			continue;
		}
		switch (col->type) {
		case STORE_RF_ID:
			own_id = v->i;
			break;
		case STORE_RF_DOMAIN:
		case STORE_RF_LAYER:
		case STORE_RF_SNAPSHOT:
			e = id_find(&im->maps[map_of(col->type, t)], v->i);
			if (e == NULL)
				return refuse(im, t, i, "names a row the file does not have");
			if (col->type == STORE_RF_LAYER)
				channels = e->channels;
			sqlite3_bind_int64(st, p++, e->id);
			break;
		case STORE_RF_INT:
			if (strcmp(col->name, "channels") == 0) {
				if (v->i <= 0 || v->i > (int64_t)(1 << 24))
					return refuse(im, t, i, "channels out of range");
				channels = v->i;
			}
			sqlite3_bind_int64(st, p++, v->i);
			break;
		case STORE_RF_REAL:
			sqlite3_bind_double(st, p++, v->d);
			break;
		case STORE_RF_TEXT:
			sqlite3_bind_text(st, p++, v->p, (int)v->len, SQLITE_STATIC);
			break;
		case STORE_RF_BLOB:
			if (t == STORE_RF_T_BATCHES && v->len != INGEST_HASH_SIZE)
				return refuse(im, t, i, "a batch hash is 16 bytes");
			if (t != STORE_RF_T_BATCHES && !blob_fits(t, v->len, channels))
				return refuse(im, t, i, "data of the wrong length for its layer");
			if (v->len == 0)
				sqlite3_bind_zeroblob(st, p++, 0);
			else
				sqlite3_bind_blob(st, p++, v->p, (int)v->len, SQLITE_STATIC);
			break;
		}
	}
	if (sqlite3_step(st) != SQLITE_DONE) {
		int code = sqlite3_errcode(im->s->wdb) & 0xff;

		sqlite3_reset(st);
		if (code == SQLITE_CONSTRAINT)
			return refuse(im, t, i, sqlite3_errmsg(im->s->wdb));
		return store_sql_error(im->err, im->s->wdb, "importing a run");
	}
	sqlite3_reset(st);
	if (t == STORE_RF_T_DOMAINS || t == STORE_RF_T_LAYERS || t == STORE_RF_T_SNAPSHOTS) {
		struct id_map *m = &im->maps[map_of(STORE_RF_ID, t)];

		m->v[m->n++] = (struct id_map_entry){ .file_id = own_id,
						      .id = sqlite3_last_insert_rowid(im->s->wdb),
						      .channels = channels };
	}
	return 0;
}

/* Insert every row of table t, then sort its ids for the tables that name them. */
static int insert_table(struct import *im, const struct store_runfile *rf, size_t t)
{
	const struct store_rf_table *tab = &store_rf_tables[t];
	sqlite3_stmt *st;
	size_t i;
	int rc = 0;

	if (t == STORE_RF_T_DOMAINS || t == STORE_RF_T_LAYERS || t == STORE_RF_T_SNAPSHOTS) {
		struct id_map *m = &im->maps[map_of(STORE_RF_ID, t)];

		m->v = calloc(rf->n_rows[t] + 1, sizeof(*m->v));
		if (m->v == NULL)
			return bn_error_set(im->err, 500, BN_E_INTERNAL, NULL, "out of memory");
	}
	if (store_sql_prepare(im->s->wdb, store_rf_insert_sql[t], &st) < 0)
		return store_sql_error(im->err, im->s->wdb, "importing a run");
	for (i = 0; i < rf->n_rows[t] && rc == 0; i++)
		rc = insert_row(im, st, t, i, &rf->rows[t][i * tab->n_cols]);
	sqlite3_finalize(st);
	if (rc == 0 &&
	    (t == STORE_RF_T_DOMAINS || t == STORE_RF_T_LAYERS || t == STORE_RF_T_SNAPSHOTS)) {
		struct id_map *m = &im->maps[map_of(STORE_RF_ID, t)];

		qsort(m->v, m->n, sizeof(*m->v), by_file_id);
		for (i = 1; i < m->n; i++)
			if (m->v[i].file_id == m->v[i - 1].file_id)
				return refuse(im, t, i, "two rows with the same id");
	}
	return rc;
}

/* The run's own row, with a fresh id no deleted run had (as store_intern_run). */
static int insert_run(struct import *im, const char *name, const struct store_rf_value *v)
{
	struct store *s = im->s;
	sqlite3_stmt *st;
	int rc;

	if (store_sql_run(s->wstmt[W_RUN_ID_NEW]) < 0)
		return store_sql_error(im->err, s->wdb, "importing a run");
	im->run_id = sqlite3_last_insert_rowid(s->wdb);
	if (store_sql_run(s->wstmt[W_RUN_ID_DROP]) < 0)
		return store_sql_error(im->err, s->wdb, "importing a run");
	if (v[0].null)
		return refuse(im, STORE_RF_T_RUNS, 0, "a null where a value is needed");
	if (store_sql_prepare(
		    s->wdb, "INSERT INTO runs (id, name, created, updated) VALUES (?1, ?2, ?3, ?4)",
		    &st) < 0)
		return store_sql_error(im->err, s->wdb, "importing a run");
	sqlite3_bind_int64(st, 1, im->run_id);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, v[0].i);
	if (v[1].null)
		sqlite3_bind_null(st, 4);
	else
		sqlite3_bind_int64(st, 4, v[1].i);
	rc = store_sql_run(st);
	sqlite3_finalize(st);
	return rc < 0 ? store_sql_error(im->err, s->wdb, "importing a run") : 0;
}

static int read_id(void *ctx, sqlite3_stmt *st)
{
	*(int64_t *)ctx = sqlite3_column_int64(st, 0);
	return 1;
}

int store_import_apply(struct store *s, struct store_job *j)
{
	const struct store_runfile *rf = j->import;
	struct import im = { .s = s, .err = &j->res.err };
	sqlite3_stmt *st = s->wstmt[W_RUN_GET];
	int64_t existing;
	size_t t, i;
	int rc;

	if (rf->n_rows[STORE_RF_T_RUNS] != 1)
		return bn_error_set(im.err, 422, BN_E_INVALID, "tables.runs",
				    "the file holds one run: one row of runs");
	sqlite3_bind_text(st, 1, j->import_run, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read_id, &existing);
	if (rc < 0)
		return store_sql_error(im.err, s->wdb, "looking up a run");
	if (rc > 0)
		return bn_error_set(im.err, 409, BN_E_CONFLICT, NULL,
				    "run %s exists; an import never overwrites a run: delete it "
				    "first or import under another name",
				    j->import_run);
	rc = insert_run(&im, j->import_run, rf->rows[STORE_RF_T_RUNS]);
	for (t = STORE_RF_T_RUNS + 1; t < STORE_RF_TABLES && rc == 0; t++)
		rc = insert_table(&im, rf, t);
	if (rc == 0 && store_bytes_recount(s, im.run_id) < 0)
		rc = store_sql_error(im.err, s->wdb, "counting the run's bytes");
	if (rc == 0) {
		/* buckets that are due and the drift metrics: the history pass's */
		for (i = 0; i < im.maps[0].n; i++)
			store_history_touch(s, im.run_id, im.maps[0].v[i].id, INT64_MAX);
		log_info("run_imported", "run=%s domains=%zu layers=%zu aggs=%zu snapshots=%zu",
			 j->import_run, rf->n_rows[STORE_RF_T_DOMAINS],
			 rf->n_rows[STORE_RF_T_LAYERS], rf->n_rows[STORE_RF_T_AGGS],
			 rf->n_rows[STORE_RF_T_SNAPSHOTS]);
	}
	for (i = 0; i < 3; i++)
		free(im.maps[i].v);
	return rc;
}
