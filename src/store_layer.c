/*
 * store_layer: one layer across steps, for the series and the simulated
 * EMA (replay.c): its per-step aggregates and worker EMAs seen without
 * their arrays, the arrays read a slice at a time through an open blob
 * handle, and the late-write log that tells replay checkpoints whether
 * they still hold (docs/DESIGN.md, "Data flow", "The simulated EMA").
 */
#include "store_private.h"

#include <stdio.h>
#include <string.h>

struct row_walk {
	store_row_fn fn;
	void *ctx;
};

/* Rows of (id, step, domain_id, n, k, nbs_min, nbs_max, width, layer_id[, data]). */
static int read_agg_row(void *ctx, sqlite3_stmt *st)
{
	struct row_walk *w = ctx;
	struct store_row row = {
		.rowid = sqlite3_column_int64(st, 0),
		.step = sqlite3_column_int64(st, 1),
		.domain_id = sqlite3_column_int64(st, 2),
		.n = sqlite3_column_int64(st, 3),
		.batches = sqlite3_column_int64(st, 4),
		.nbs_min = sqlite3_column_int64(st, 5),
		.nbs_max = sqlite3_column_int64(st, 6),
		.width = sqlite3_column_int64(st, 7),
		.layer_id = sqlite3_column_int64(st, 8),
	};

	if (sqlite3_column_count(st) > 9) {
		row.data = sqlite3_column_blob(st, 9);
		row.data_bytes = (size_t)sqlite3_column_bytes(st, 9);
	}
	return w->fn(w->ctx, &row);
}

/* Rows of (id, step, domain_id, 0, seq, worker). */
static int read_ema_row(void *ctx, sqlite3_stmt *st)
{
	struct row_walk *w = ctx;
	struct store_row row = {
		.rowid = sqlite3_column_int64(st, 0),
		.step = sqlite3_column_int64(st, 1),
		.domain_id = sqlite3_column_int64(st, 2),
		.n = sqlite3_column_int64(st, 3),
		.width = 1,
		.seq = sqlite3_column_int64(st, 4),
		.worker = (const char *)sqlite3_column_text(st, 5),
	};

	return w->fn(w->ctx, &row);
}

/*
 * Run a per-layer row query with parameters ?1 run, ?2 domain, ?3 layer,
 * ?4 and ?5 the step range and ?6 the worker when given; hand each row
 * to fn through read.
 */
static int layer_rows(struct store_reader *r, const char *sql, store_sql_row_fn read,
		      int64_t run_id, int64_t domain_id, int64_t layer_id, int64_t step_lo,
		      int64_t step_hi, const char *worker, store_row_fn fn, void *ctx)
{
	struct row_walk w = { fn, ctx };
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(r->db, sql, &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, layer_id);
	sqlite3_bind_int64(st, 4, step_lo);
	sqlite3_bind_int64(st, 5, step_hi);
	if (worker != NULL)
		sqlite3_bind_text(st, 6, worker, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read, &w);
	sqlite3_finalize(st);
	return rc;
}

int store_layer_aggs(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t layer_id,
		     int64_t step_lo, int64_t step_hi, store_row_fn fn, void *ctx)
{
	const char *sql =
		domain_id < 0
			? "SELECT id, step, domain_id, n, k, nbs_min, nbs_max, width, layer_id"
			  " FROM aggs WHERE run_id = ?1 AND layer_id = ?3 AND step > ?4"
			  " AND step <= ?5 AND ?2 < 0 ORDER BY step, domain_id"
			: "SELECT id, step, domain_id, n, k, nbs_min, nbs_max, width, layer_id"
			  " FROM aggs WHERE run_id = ?1 AND layer_id = ?3 AND domain_id = ?2"
			  " AND step > ?4 AND step <= ?5 ORDER BY step";

	return layer_rows(r, sql, read_agg_row, run_id, domain_id, layer_id, step_lo, step_hi, NULL,
			  fn, ctx);
}

int store_run_aggs(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step_lo,
		   int64_t step_hi, store_row_fn fn, void *ctx)
{
	/*
	 * The data comes with the row: the statement reads the row's pages
	 * anyway (n, k, ... live there), and a blob handle would read them a
	 * second time. ?3 (the layer) is bound but not used: every layer.
	 */
	const char *sql =
		domain_id < 0
			? "SELECT id, step, domain_id, n, k, nbs_min, nbs_max, width, layer_id, "
			  "data"
			  " FROM aggs WHERE run_id = ?1 AND step > ?4 AND step <= ?5 AND ?2 < 0"
			  " AND ?3 = ?3 ORDER BY step, layer_id, domain_id"
			: "SELECT id, step, domain_id, n, k, nbs_min, nbs_max, width, layer_id, "
			  "data"
			  " FROM aggs WHERE run_id = ?1 AND domain_id = ?2 AND step > ?4"
			  " AND step <= ?5 AND ?3 = ?3 ORDER BY step, layer_id";

	return layer_rows(r, sql, read_agg_row, run_id, domain_id, 0, step_lo, step_hi, NULL, fn,
			  ctx);
}

int store_row_values(struct store_reader *r, const struct store_row *row, size_t channels,
		     size_t first, size_t n, double *out)
{
	if (row->data == NULL)
		return store_row_read(r, STORE_BLOB_AGG, row->rowid, channels, first, n, out);
	if ((first + n) * sizeof(double) > row->data_bytes)
		return -EIO;
	memcpy(out, (const char *)row->data + first * sizeof(double), n * sizeof(double));
	return 0;
}

int store_layer_emas(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t layer_id,
		     const char *worker, int64_t step_lo, int64_t step_hi, store_row_fn fn,
		     void *ctx)
{
	const char *sql =
		worker != NULL
			? "SELECT id, step, domain_id, 0, seq, worker FROM emas WHERE run_id = ?1"
			  " AND domain_id = ?2 AND layer_id = ?3 AND worker = ?6"
			  " AND step > ?4 AND step <= ?5 ORDER BY step"
			/* without INDEXED BY the planner walks emas_by_step for its order
			 * and reads every layer's rows to keep this one's */
			: "SELECT id, step, domain_id, 0, seq, worker FROM emas"
			  " INDEXED BY emas_by_layer_step WHERE run_id = ?1"
			  " AND domain_id = ?2 AND layer_id = ?3"
			  " AND step > ?4 AND step <= ?5 ORDER BY step, worker";

	return layer_rows(r, sql, read_ema_row, run_id, domain_id, layer_id, step_lo, step_hi,
			  worker, fn, ctx);
}

/*
 * A blob handle that did not open says only SQLITE_ERROR, also for a
 * damaged file: read the row through a statement, whose failure notes
 * what it met (store_sql_fault_note()), so that store_reader_put() sees a
 * damaged file as any other read's.
 */
static void blob_open_failed(struct store_reader *r, const char *table, int64_t rowid)
{
	char sql[64];
	sqlite3_stmt *st;

	snprintf(sql, sizeof(sql), "SELECT data FROM %s WHERE id = ?1", table);
	if (store_sql_prepare(r->db, sql, &st) < 0)
		return;
	sqlite3_bind_int64(st, 1, rowid);
	(void)store_sql_rows(st, NULL, NULL);
	sqlite3_finalize(st);
}

int store_row_read(struct store_reader *r, enum store_blob which, int64_t rowid, size_t channels,
		   size_t first, size_t n, double *out)
{
	sqlite3_blob **blob = which == STORE_BLOB_AGG ? &r->agg_blob : &r->ema_blob;
	const char *table = which == STORE_BLOB_AGG ? "aggs" : "emas";
	size_t i;
	int rc;

	/* One open blob handle per table, moved from row to row. */
	if (*blob != NULL)
		rc = sqlite3_blob_reopen(*blob, rowid);
	else
		rc = sqlite3_blob_open(r->db, "main", table, "data", rowid, 0, blob);
	if (rc != SQLITE_OK) {
		blob_open_failed(r, table, rowid);
		sqlite3_blob_close(*blob);
		*blob = NULL;
		return -EIO;
	}
	if (which == STORE_BLOB_EMA &&
	    (size_t)sqlite3_blob_bytes(*blob) == 2 * channels * sizeof(float)) {
		/* an EMA every value of which is a float is kept as floats (store_batch.c) */
		float f[64];

		for (i = 0; i < n; i += sizeof(f) / sizeof(f[0])) {
			size_t k, m = n - i < sizeof(f) / sizeof(f[0]) ? n - i
								       : sizeof(f) / sizeof(f[0]);

			rc = sqlite3_blob_read(*blob, f, (int)(m * sizeof(float)),
					       (int)((first + i) * sizeof(float)));
			if (rc != SQLITE_OK) {
				store_sql_fault_note(rc);
				return -EIO;
			}
			for (k = 0; k < m; k++)
				out[i + k] = (double)f[k];
		}
		return 0;
	}
	rc = sqlite3_blob_read(*blob, out, (int)(n * sizeof(double)), (int)(first * sizeof(double)));
	if (rc != SQLITE_OK) {
		store_sql_fault_note(rc);
		return -EIO;
	}
	return 0;
}

struct sim_out {
	size_t channels, first, width;
	double *mean, *var;
	int64_t step, applied;
};

static int read_sim_state(void *ctx, sqlite3_stmt *st)
{
	struct sim_out *o = ctx;
	const double *data = sqlite3_column_blob(st, 2);

	if ((size_t)sqlite3_column_bytes(st, 2) != 2 * o->channels * sizeof(double) ||
	    o->first + o->width > o->channels)
		return -EIO;
	o->step = sqlite3_column_int64(st, 0);
	o->applied = sqlite3_column_int64(st, 1);
	memcpy(o->mean, data + o->first, o->width * sizeof(double));
	memcpy(o->var, data + o->channels + o->first, o->width * sizeof(double));
	return 1;
}

int store_sim_state_read(struct store_reader *r, int64_t run_id, int64_t domain_id,
			 int64_t layer_id, double momentum, int64_t step, bool at_or_before,
			 size_t channels, size_t first, size_t width, double *mean, double *var,
			 int64_t *found_step, int64_t *applied)
{
	struct sim_out o = { channels, first, width, mean, var, 0, 0 };
	sqlite3_stmt *st;
	int rc;

	if (domain_id < 0)
		return -ENOENT; /* kept per domain only */
	if (store_sql_prepare(
		    r->db,
		    at_or_before ? "SELECT step, applied, data FROM sim_states WHERE run_id = ?1"
				   " AND domain_id = ?2 AND layer_id = ?3 AND momentum = ?4"
				   " AND step <= ?5 ORDER BY step DESC LIMIT 1"
				 : "SELECT step, applied, data FROM sim_states WHERE run_id = ?1"
				   " AND domain_id = ?2 AND layer_id = ?3 AND momentum = ?4"
				   " AND step = ?5",
		    &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, layer_id);
	sqlite3_bind_double(st, 4, momentum);
	sqlite3_bind_int64(st, 5, step);
	rc = store_sql_rows(st, read_sim_state, &o);
	sqlite3_finalize(st);
	if (rc == 0)
		return -ENOENT;
	if (rc < 0)
		return rc;
	*found_step = o.step;
	*applied = o.applied;
	return 0;
}

struct name_out {
	char *buf;
	size_t size;
};

static int read_name(void *ctx, sqlite3_stmt *st)
{
	struct name_out *o = ctx;

	if (sqlite3_column_type(st, 0) == SQLITE_NULL)
		return -ENOENT;
	snprintf(o->buf, o->size, "%s", sqlite3_column_text(st, 0));
	return 1;
}

int store_ema_first_worker(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step,
			   char *worker, size_t size)
{
	struct name_out o = { worker, size };
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(r->db,
			      "SELECT min(worker) FROM emas WHERE run_id = ?1"
			      " AND domain_id = ?2 AND step = ?3",
			      &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, step);
	rc = store_sql_rows(st, read_name, &o);
	sqlite3_finalize(st);
	return rc > 0 ? 0 : rc == 0 ? -ENOENT : rc;
}

int store_ema_latest_step(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t *step)
{
	/* emas_by_step (run_id, domain_id, step, worker) answers it from its last entry */
	return store_sql_int64(r->db,
			       "SELECT max(step) FROM emas WHERE run_id = ?1 AND domain_id = ?2",
			       run_id, domain_id, NULL, step);
}

struct first_walk {
	int (*fn)(void *ctx, int64_t step, const char *worker);
	void *ctx;
};

static int read_first(void *ctx, sqlite3_stmt *st)
{
	struct first_walk *w = ctx;

	return w->fn(w->ctx, sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1));
}

int store_ema_first_workers(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t lo,
			    int64_t hi, int (*fn)(void *ctx, int64_t step, const char *worker),
			    void *ctx)
{
	struct first_walk w = { fn, ctx };
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(r->db,
			      "SELECT step, min(worker) FROM emas WHERE run_id = ?1"
			      " AND domain_id = ?2 AND step >= ?3 AND step <= ?4"
			      " GROUP BY step ORDER BY step",
			      &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, lo);
	sqlite3_bind_int64(st, 4, hi);
	rc = store_sql_rows(st, read_first, &w);
	sqlite3_finalize(st);
	return rc;
}

int store_late_gen(struct store_reader *r, int64_t run_id, int64_t *gen)
{
	int rc = store_sql_int64(r->db,
				 "SELECT max(id) FROM late_writes WHERE run_id = ?1 AND ?2 = 0",
				 run_id, 0, NULL, gen);

	if (rc == -ENOENT) {
		*gen = 0;
		rc = 0;
	}
	return rc;
}

int store_late_since(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t gen,
		     int64_t step)
{
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(
		    r->db,
		    "SELECT 1 FROM late_writes WHERE run_id = ?1 AND id > ?2"
		    " AND step <= ?3 AND (?4 < 0 OR domain_id = ?4 OR domain_id < 0) LIMIT 1",
		    &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, gen);
	sqlite3_bind_int64(st, 3, step);
	sqlite3_bind_int64(st, 4, domain_id);
	rc = store_sql_rows(st, NULL, NULL);
	sqlite3_finalize(st);
	return rc;
}
