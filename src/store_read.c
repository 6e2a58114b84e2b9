/*
 * store_read: the reader pool and what every query reads first: runs,
 * domains and layers by name, the latest step, and the per-step aggregates
 * of a window. Readers never wait on the writer: WAL mode lets each read
 * the last committed state on its own connection (docs/DESIGN.md, "Data
 * flow", "Readers").
 */
#include "store_private.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

int store_reader_get(struct store *s, struct store_reader **out, struct bn_error *err)
{
	struct store_reader *r;

	pthread_mutex_lock(&s->readers.mu);
	r = s->readers.idle;
	if (r != NULL)
		s->readers.idle = r->next;
	pthread_mutex_unlock(&s->readers.mu);
	if (r == NULL) {
		r = calloc(1, sizeof(*r));
		if (r == NULL)
			return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		if (store_sql_open(s->path, false, &r->db, err) < 0 ||
		    store_sql_exec(r->db, "PRAGMA query_only=ON", err) < 0) {
			sqlite3_close(r->db);
			free(r);
			return -EIO;
		}
	}
	r->next = NULL;
	*out = r;
	return 0;
}

static void reader_blobs_close(struct store_reader *r)
{
	sqlite3_blob_close(r->agg_blob);
	sqlite3_blob_close(r->ema_blob);
	r->agg_blob = r->ema_blob = NULL;
}

void store_reader_put(struct store *s, struct store_reader *r)
{
	if (r == NULL)
		return;
	reader_blobs_close(r);
	if (!sqlite3_get_autocommit(r->db))
		sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
	store_health_after_read(s); /* a read that found the file damaged */
	pthread_mutex_lock(&s->readers.mu);
	r->next = s->readers.idle;
	s->readers.idle = r;
	pthread_mutex_unlock(&s->readers.mu);
}

void store_readers_close(struct store *s)
{
	struct store_reader *r, *next;

	for (r = s->readers.idle; r != NULL; r = next) {
		next = r->next;
		sqlite3_close(r->db);
		free(r->scratch);
		free(r);
	}
	s->readers.idle = NULL;
}

int store_read_begin(struct store_reader *r)
{
	return sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK ? 0 : -EIO;
}

void store_read_end(struct store_reader *r)
{
	reader_blobs_close(r);
	if (!sqlite3_get_autocommit(r->db))
		sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
}

int store_run_find(struct store_reader *r, const char *run, int64_t *run_id)
{
	return store_sql_int64(r->db, "SELECT id FROM runs WHERE name = ?1", 0, 0, run, run_id);
}

static int read_id(void *ctx, sqlite3_stmt *st)
{
	*(int64_t *)ctx = sqlite3_column_int64(st, 0);
	return 1;
}

int store_domain_find(struct store_reader *r, int64_t run_id, const char *domain,
		      int64_t *domain_id)
{
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(r->db, "SELECT id FROM domains WHERE run_id = ?1 AND name = ?2",
			      &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, domain, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read_id, domain_id);
	sqlite3_finalize(st);
	return rc > 0 ? 0 : rc == 0 ? -ENOENT : rc;
}

int store_worker_find(struct store_reader *r, int64_t run_id, int64_t domain_id, const char *worker)
{
	sqlite3_stmt *st;
	int64_t one;
	int rc;

	/* a prefix of the batches' primary key: one probe */
	if (store_sql_prepare(r->db,
			      "SELECT 1 FROM batches WHERE run_id = ?1 AND domain_id = ?2"
			      " AND worker = ?3 LIMIT 1",
			      &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_text(st, 3, worker, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read_id, &one);
	sqlite3_finalize(st);
	return rc > 0 ? 0 : rc == 0 ? -ENOENT : rc;
}

int store_latest_step(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t *step)
{
	if (domain_id < 0)
		return store_sql_int64(r->db,
				       "SELECT max(step) FROM aggs WHERE run_id = ?1 AND ?2 < 0",
				       run_id, domain_id, NULL, step);
	return store_sql_int64(r->db,
			       "SELECT max(step) FROM aggs WHERE run_id = ?1 AND domain_id = ?2",
			       run_id, domain_id, NULL, step);
}

struct entry_walk {
	int (*fn)(void *ctx, int64_t step, int64_t width);
	void *ctx;
};

static int read_entry(void *ctx, sqlite3_stmt *st)
{
	struct entry_walk *w = ctx;

	return w->fn(w->ctx, sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1));
}

int store_entries_foreach(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t lo,
			  int64_t hi, int (*fn)(void *ctx, int64_t step, int64_t width), void *ctx)
{
	struct entry_walk w = { fn, ctx };
	int64_t a[4] = { run_id, domain_id, lo, hi };

	/*
	 * `width` follows `data` in the row (0006_history.sql): read from the
	 * row it would read the blob and its overflow pages. aggs_by_step holds
	 * it (0008_aggs_batches.sql), so the index alone answers.
	 */
	return store_sql_select(
		r->db,
		domain_id < 0 ? "SELECT step, max(width) FROM aggs INDEXED BY aggs_by_step"
				" WHERE run_id = ?1 AND ?2 < 0 AND step >= ?3 AND step <= ?4"
				" GROUP BY step ORDER BY step"
			      : "SELECT step, max(width) FROM aggs INDEXED BY aggs_by_step"
				" WHERE run_id = ?1 AND domain_id = ?2 AND step >= ?3"
				" AND step <= ?4 GROUP BY step ORDER BY step",
		a, 4, read_entry, &w);
}

int store_drift_entries(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t lo,
			int64_t hi, int (*fn)(void *ctx, int64_t step, int64_t width), void *ctx)
{
	struct entry_walk w = { fn, ctx };
	int64_t a[4] = { run_id, domain_id, lo, hi };

	/* up to the drift mark, one row per entry (store_drift.c) */
	return store_sql_select(r->db,
				"SELECT step, width FROM drift_steps WHERE run_id = ?1"
				" AND domain_id = ?2 AND step >= ?3 AND step <= ?4 ORDER BY step",
				a, 4, read_entry, &w);
}

static int read_tier_max(void *ctx, sqlite3_stmt *st)
{
	*(int64_t *)ctx = sqlite3_column_int64(st, 0);
	return 1;
}

int store_resolution(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step,
		     int64_t *width)
{
	sqlite3_stmt *st;
	int64_t tier = 0;
	int rc;

	/* tier t holds the steps <= its `done`; the coarsest such tier holds `step` */
	if (store_sql_prepare(r->db,
			      "SELECT coalesce(max(tier), 0) FROM history WHERE run_id = ?1"
			      " AND (?2 < 0 OR domain_id = ?2) AND done >= ?3",
			      &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, step);
	rc = store_sql_rows(st, read_tier_max, &tier);
	sqlite3_finalize(st);
	if (rc < 0)
		return -EIO;
	for (*width = 1; tier > 0; tier--)
		*width *= 10;
	return 0;
}

struct layer_found {
	int64_t *layer_id;
	size_t *channels;
};

static int read_layer(void *ctx, sqlite3_stmt *st)
{
	struct layer_found *f = ctx;

	*f->layer_id = sqlite3_column_int64(st, 0);
	*f->channels = (size_t)sqlite3_column_int64(st, 1);
	return 1;
}

int store_layer_find(struct store_reader *r, int64_t run_id, const char *layer, int64_t *layer_id,
		     size_t *channels)
{
	struct layer_found f = { layer_id, channels };
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(r->db,
			      "SELECT id, channels FROM layers WHERE run_id = ?1 AND name = ?2",
			      &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, layer, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read_layer, &f);
	sqlite3_finalize(st);
	return rc > 0 ? 0 : rc == 0 ? -ENOENT : rc;
}

struct agg_walk {
	struct store_reader *r;
	store_agg_fn fn;
	void *ctx;
};

static int read_agg(void *ctx, sqlite3_stmt *st)
{
	struct agg_walk *w = ctx;
	struct store_reader *r = w->r;
	struct store_agg_row row;
	struct stats_agg a;
	size_t c = (size_t)sqlite3_column_int64(st, 8);
	size_t bytes = STATS_AGG_ARRAYS * c * sizeof(double);

	if ((size_t)sqlite3_column_bytes(st, 7) != bytes)
		return -EIO;
	/* Copy out: SQLite's blob pointer need not be 8-byte aligned. */
	if (store_scratch_reserve(&r->scratch, &r->scratch_cap, c) < 0)
		return -ENOMEM;
	memcpy(r->scratch, sqlite3_column_blob(st, 7), bytes);
	stats_agg_view(&a, r->scratch, c);
	a.n = sqlite3_column_int64(st, 3);
	a.k = sqlite3_column_int64(st, 4);
	a.nbs_min = sqlite3_column_int64(st, 5);
	a.nbs_max = sqlite3_column_int64(st, 6);
	row.layer_id = sqlite3_column_int64(st, 0);
	row.domain_id = sqlite3_column_int64(st, 1);
	row.step = sqlite3_column_int64(st, 2);
	row.agg = &a;
	return w->fn(w->ctx, &row);
}

int store_aggs_foreach(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step_lo,
		       int64_t step_hi, const int64_t *layer_ids, size_t n_layer_ids,
		       store_agg_fn fn, void *ctx)
{
	struct agg_walk w = { r, fn, ctx };
	sqlite3_stmt *st = NULL;
	char *sql = NULL;
	size_t len, i;
	FILE *f;
	int rc;

	f = open_memstream(&sql, &len);
	if (f == NULL)
		return -ENOMEM;
	fputs("SELECT a.layer_id, a.domain_id, a.step, a.n, a.k, a.nbs_min, a.nbs_max,"
	      " a.data, l.channels FROM aggs a JOIN layers l ON l.id = a.layer_id"
	      " WHERE a.run_id = ?1 AND a.step > ?3 AND a.step <= ?4",
	      f);
	if (domain_id >= 0)
		fputs(" AND a.domain_id = ?2", f);
	if (layer_ids != NULL) {
		fputs(" AND a.layer_id IN (", f);
		for (i = 0; i < n_layer_ids; i++)
			fprintf(f, "%s%lld", i ? "," : "", (long long)layer_ids[i]);
		fputs(")", f);
	}
	fputs(" ORDER BY a.step, a.layer_id, a.domain_id", f);
	if (fclose(f) != 0) {
		free(sql);
		return -ENOMEM;
	}
	if (store_sql_prepare(r->db, sql, &st) < 0) {
		log_error("query_failed", "error=\"%s\"", sqlite3_errmsg(r->db));
		free(sql);
		return -EIO;
	}
	free(sql);
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, step_lo);
	sqlite3_bind_int64(st, 4, step_hi);
	rc = store_sql_rows(st, read_agg, &w);
	sqlite3_finalize(st);
	return rc;
}

/* Rows (step, layer, domain) in index order, folded into one call per step. */
struct step_walk {
	store_step_batches_fn fn;
	void *ctx;
	bool have;
	int64_t step, width, layer, layer_k, best;
};

static int step_walk_flush(struct step_walk *w)
{
	if (!w->have)
		return 0;
	if (w->layer_k > w->best)
		w->best = w->layer_k;
	w->have = false;
	return w->fn(w->ctx, w->step, w->width, w->best);
}

static int read_step_row(void *ctx, sqlite3_stmt *st)
{
	struct step_walk *w = ctx;
	int64_t step = sqlite3_column_int64(st, 0), layer = sqlite3_column_int64(st, 1);
	int64_t k = sqlite3_column_int64(st, 2), width = sqlite3_column_int64(st, 3);
	int rc;

	if (w->have && step != w->step && (rc = step_walk_flush(w)) != 0)
		return rc;
	if (!w->have) {
		w->have = true;
		w->step = step;
		w->width = width;
		w->layer = layer;
		w->layer_k = 0;
		w->best = 0;
	} else if (layer != w->layer) {
		if (w->layer_k > w->best)
			w->best = w->layer_k;
		w->layer = layer;
		w->layer_k = 0;
	}
	w->layer_k += k;
	if (width > w->width)
		w->width = width;
	return 0;
}

int store_step_batches(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step_lo,
		       int64_t step_hi, bool desc, store_step_batches_fn fn, void *ctx)
{
	/* aggs_by_step covers (step, layer_id, domain_id, k, width): the index alone */
	static const char *const sql[2][2] = {
		{ "SELECT step, layer_id, k, width FROM aggs INDEXED BY aggs_by_step"
		  " WHERE run_id = ?1 AND ?2 < 0 AND step > ?3 AND step <= ?4"
		  " ORDER BY step, layer_id",
		  "SELECT step, layer_id, k, width FROM aggs INDEXED BY aggs_by_step"
		  " WHERE run_id = ?1 AND ?2 < 0 AND step > ?3 AND step <= ?4"
		  " ORDER BY step DESC, layer_id DESC" },
		{ "SELECT step, layer_id, k, width FROM aggs INDEXED BY aggs_by_step"
		  " WHERE run_id = ?1 AND domain_id = ?2 AND step > ?3 AND step <= ?4"
		  " ORDER BY step, layer_id",
		  "SELECT step, layer_id, k, width FROM aggs INDEXED BY aggs_by_step"
		  " WHERE run_id = ?1 AND domain_id = ?2 AND step > ?3 AND step <= ?4"
		  " ORDER BY step DESC, layer_id DESC" },
	};
	struct step_walk w = { .fn = fn, .ctx = ctx };
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(r->db, sql[domain_id >= 0][desc], &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, step_lo);
	sqlite3_bind_int64(st, 4, step_hi);
	rc = store_sql_rows(st, read_step_row, &w);
	sqlite3_finalize(st);
	return rc == 0 ? step_walk_flush(&w) : rc;
}
