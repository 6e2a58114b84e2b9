/*
 * store_drift: the per-step drift metrics (docs/DESIGN.md, "Drift
 * metrics"). For every stored entry below its domain's latest step the
 * writer computes, once, what /drift answers by default there: per layer
 * the metrics of the entry's first worker by name's EMA against the
 * entry's own pooled statistics (window 1), the same operations
 * query_drift.c performs, so the same bits. The history pass
 * (store_history.c) computes them in step order behind a mark (tier
 * STORE_DRIFT_TIER of the history table: every entry at or below it has
 * its row); an upload drops its step's row and moves the mark back; a new
 * bucket drops the rows it covers and computes its own. Readers take the
 * rows with store_drift_steps().
 */
#include "store_private.h"

#include <math.h>
#include <string.h>

#include "bnstat/stats.h"

/* One layer's record in a row: the layer id, then the three metrics. */
#define DRIFT_RECORD (4 * sizeof(double))

struct drift_entry {
	struct store *s;
	int64_t run_id, domain_id, step;
	const char *worker;
	unsigned char *data; /* records */
	size_t n, cap;	     /* records */
	double *buf;	     /* [4 * c]: precise mean, var; EMA mean, var */
	size_t c, cap_c;
	int rc;
};

static int reserve_channels(struct drift_entry *e, size_t c)
{
	double *p;

	if (c <= e->cap_c)
		return 0;
	p = realloc(e->buf, 4 * c * sizeof(double));
	if (p == NULL)
		return -ENOMEM;
	e->buf = p;
	e->cap_c = c;
	return 0;
}

static int add_record(struct drift_entry *e, int64_t layer_id, const struct stats_cmp *cmp)
{
	double m[3] = { cmp->mean_err, cmp->var_err, cmp->kl };
	unsigned char *rec;

	if (e->n == e->cap) {
		size_t cap = e->cap ? 2 * e->cap : 64;
		unsigned char *p = realloc(e->data, cap * DRIFT_RECORD);

		if (p == NULL)
			return -ENOMEM;
		e->data = p;
		e->cap = cap;
	}
	rec = e->data + e->n * DRIFT_RECORD;
	memcpy(rec, &layer_id, sizeof(layer_id));
	memcpy(rec + sizeof(double), m, sizeof(m));
	e->n++;
	return 0;
}

/* The entry's own aggregate of one layer: its pooled mean and variance, and c. */
static int read_agg(void *ctx, sqlite3_stmt *st)
{
	struct drift_entry *e = ctx;
	size_t bytes = (size_t)sqlite3_column_bytes(st, 4), c, i;
	const unsigned char *data = sqlite3_column_blob(st, 4);
	int64_t rows_n = sqlite3_column_int64(st, 0);
	double *pm, *pv;

	c = bytes / (STATS_AGG_ARRAYS * sizeof(double));
	if (c == 0 || bytes != STATS_AGG_ARRAYS * c * sizeof(double))
		return -EIO;
	if (reserve_channels(e, c) < 0)
		return -ENOMEM;
	pm = e->buf;
	pv = e->buf + c;
	/* as query_drift.c's window of this one row: merged into nothing, then M2 / n */
	for (i = 0; i < c; i++) {
		int64_t n = 0;
		double mean = 0.0, m2 = 0.0, mb, m2b;

		memcpy(&mb, data + i * sizeof(double), sizeof(double));
		memcpy(&m2b, data + (c + i) * sizeof(double), sizeof(double));
		stats_merge1(&n, &mean, &m2, rows_n, mb, m2b);
		pm[i] = mean;
		pv[i] = n > 0 ? m2 / (double)n : 0.0;
	}
	e->c = c;
	return 1;
}

/* One EMA row of the entry's first worker: compare it with the layer's aggregate. */
static int read_ema(void *ctx, sqlite3_stmt *st)
{
	struct drift_entry *e = ctx;
	int64_t layer_id = sqlite3_column_int64(st, 0);
	size_t bytes = (size_t)sqlite3_column_bytes(st, 1), c, i;
	const unsigned char *blob = sqlite3_column_blob(st, 1);
	sqlite3_stmt *q = e->s->wstmt[W_AGG_GET];
	double *pm, *pv, *em, *ev;
	struct stats_cmp cmp;
	int rc;

	store_sql_bind_ints(q, (int64_t[]){ e->run_id, e->domain_id, e->step, layer_id }, 4);
	rc = store_sql_rows(q, read_agg, e);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return 0; /* no statistics of the layer here: no value, as in /drift */
	c = e->c;
	pm = e->buf;
	pv = pm + c;
	em = pv + c;
	ev = em + c;
	/* an EMA of floats or of doubles (store_batch.c): the length says which */
	if (bytes == 2 * c * sizeof(float)) {
		for (i = 0; i < 2 * c; i++) {
			float x;

			memcpy(&x, blob + i * sizeof(float), sizeof(x));
			em[i] = (double)x;
		}
	} else if (bytes == 2 * c * sizeof(double)) {
		memcpy(em, blob, bytes);
	} else {
		return -EIO;
	}
	stats_compare(c, em, ev, pm, pv, &cmp);
	return add_record(e, layer_id, &cmp) < 0 ? -ENOMEM : 0;
}

static int read_first(void *ctx, sqlite3_stmt *st)
{
	char **first = ctx;

	if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
		*first = strdup((const char *)sqlite3_column_text(st, 0));
		if (*first == NULL)
			return -ENOMEM;
	}
	return 1;
}

int store_drift_entry(struct store *s, int64_t run_id, int64_t domain_id, int64_t step)
{
	struct drift_entry e = { .s = s, .run_id = run_id, .domain_id = domain_id, .step = step };
	sqlite3_stmt *st = s->wstmt[W_DRIFT_FIRST];
	char *first = NULL;
	int rc;

	store_sql_bind_ints(st, (int64_t[]){ run_id, domain_id, step }, 3);
	rc = store_sql_rows(st, read_first, &first);
	if (rc < 0)
		return rc == -ENOMEM ? -ENOMEM : -EIO;
	rc = 0;
	if (first != NULL) {
		st = s->wstmt[W_DRIFT_EMAS];
		store_sql_bind_ints(st, (int64_t[]){ run_id, domain_id, step }, 3);
		sqlite3_bind_text(st, 4, first, -1, SQLITE_STATIC);
		rc = store_sql_rows(st, read_ema, &e);
		sqlite3_clear_bindings(st); /* `first` is freed below */
	}
	if (rc == 0) {
		st = s->wstmt[W_DRIFT_PUT];
		store_sql_bind_ints(st, (int64_t[]){ run_id, domain_id, step }, 3);
		if (first != NULL)
			sqlite3_bind_text(st, 4, first, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 4);
		sqlite3_bind_blob(st, 5, e.n ? (const void *)e.data : "", (int)(e.n * DRIFT_RECORD),
				  SQLITE_STATIC);
		rc = store_sql_run(st);
		sqlite3_clear_bindings(st);
	}
	free(first);
	free(e.data);
	free(e.buf);
	return rc < 0 ? rc : 0;
}

/* --- the mark ---------------------------------------------------------------------- */

/* One row of one int64 column: 1 and the value, or 2 for NULL. */
static int read_i64(void *ctx, sqlite3_stmt *st)
{
	if (sqlite3_column_type(st, 0) == SQLITE_NULL)
		return 2;
	*(int64_t *)ctx = sqlite3_column_int64(st, 0);
	return 1;
}

/* The domain's mark: 1 and *done, 0 when it has none yet, or -EIO. */
static int mark_get(struct store *s, int64_t run_id, int64_t domain_id, int64_t *done)
{
	sqlite3_stmt *st = s->wstmt[W_DRIFT_MARK];
	int rc;

	store_sql_bind_ints(st, (int64_t[]){ run_id, domain_id }, 2);
	rc = store_sql_rows(st, read_i64, done);
	return rc < 0 ? -EIO : rc == 1;
}

static int mark_put(struct store *s, int64_t run_id, int64_t domain_id, int64_t done)
{
	sqlite3_stmt *st = s->wstmt[W_HIST_PUT];

	store_sql_bind_ints(st, (int64_t[]){ run_id, domain_id, STORE_DRIFT_TIER, done }, 4);
	return store_sql_run(st);
}

/* --- the writer's calls ---------------------------------------------------------- */

int store_drift_forget(struct store *s, int64_t run_id, int64_t domain_id, int64_t step)
{
	sqlite3_stmt *st = s->wstmt[W_DRIFT_DEL];

	store_sql_bind_ints(st, (int64_t[]){ run_id, domain_id, step }, 3);
	if (store_sql_run(st) < 0)
		return -EIO;
	st = s->wstmt[W_DRIFT_BACK];
	store_sql_bind_ints(st, (int64_t[]){ run_id, domain_id, step }, 3);
	return store_sql_run(st);
}

int store_drift_bucket(struct store *s, int64_t run_id, int64_t domain_id, int64_t lo, int64_t end)
{
	sqlite3_stmt *st = s->wstmt[W_DRIFT_DEL_RANGE];
	int64_t done;
	int rc;

	store_sql_bind_ints(st, (int64_t[]){ run_id, domain_id, lo, end }, 4);
	if (store_sql_run(st) < 0)
		return -EIO;
	rc = mark_get(s, run_id, domain_id, &done);
	if (rc <= 0)
		return rc;
	if (done >= end)
		return store_drift_entry(s, run_id, domain_id, end);
	if (done > lo)
		return mark_put(s, run_id, domain_id, lo) < 0 ? -EIO : 0;
	return 0;
}

/* Entries skipped per pass at most (they have their row already). */
#define DRIFT_SKIPS 4096

int store_drift_pass(struct store *s, int64_t run_id, int64_t domain_id, int64_t latest,
		     int64_t late_floor, int *budget, bool dry)
{
	int64_t from = -1, start;
	int skips = 0, rc;

	rc = mark_get(s, run_id, domain_id, &from);
	if (rc < 0)
		return rc;
	if (rc == 0)
		from = -1;
	start = from;
	rc = 0;
	while (*budget > 0 && skips < DRIFT_SKIPS) {
		sqlite3_stmt *st = s->wstmt[W_HIST_NEXT_STEP];
		int64_t next = 0;
		int have;

		store_sql_bind_ints(st, (int64_t[]){ run_id, domain_id, from }, 3);
		have = store_sql_rows(st, read_i64, &next);
		if (have < 0)
			return -EIO;
		if (have != 1 || next >= latest) {
			rc = 0;
			break; /* the latest step is still open */
		}
		if (next >= late_floor) {
			rc = 2; /* held back while late uploads reach here */
			break;
		}
		if (dry)
			return 1;
		st = s->wstmt[W_DRIFT_HAS];
		store_sql_bind_ints(st, (int64_t[]){ run_id, domain_id, next }, 3);
		have = store_sql_rows(st, NULL, NULL);
		if (have < 0)
			return -EIO;
		if (have == 0) {
			int e = store_drift_entry(s, run_id, domain_id, next);

			if (e < 0)
				return e;
			(*budget)--;
		} else {
			skips++;
		}
		from = next;
		rc = 1;
	}
	if (from != start && mark_put(s, run_id, domain_id, from) < 0)
		return -EIO;
	if (rc == 1 && *budget > 0 && skips < DRIFT_SKIPS)
		rc = 0;
	return rc;
}

/* --- readers ------------------------------------------------------------------------ */

struct drift_walk {
	store_drift_fn fn;
	void *ctx;
	int64_t *layer_id;
	double *metric;
	size_t cap;
};

static int read_row(void *ctx, sqlite3_stmt *st)
{
	struct drift_walk *w = ctx;
	struct store_drift_row row;
	size_t bytes = (size_t)sqlite3_column_bytes(st, 2), i;
	const unsigned char *data = sqlite3_column_blob(st, 2);

	if (bytes % DRIFT_RECORD != 0)
		return -EIO;
	row.step = sqlite3_column_int64(st, 0);
	row.width = sqlite3_column_int64(st, 3);
	row.worker = (const char *)sqlite3_column_text(st, 1);
	row.n = bytes / DRIFT_RECORD;
	if (row.n > w->cap) {
		int64_t *ids = realloc(w->layer_id, row.n * sizeof(*ids));
		double *m;

		if (ids == NULL)
			return -ENOMEM;
		w->layer_id = ids;
		m = realloc(w->metric, row.n * 3 * sizeof(*m));
		if (m == NULL)
			return -ENOMEM;
		w->metric = m;
		w->cap = row.n;
	}
	row.layer_id = w->layer_id;
	row.metric = w->metric;
	for (i = 0; i < row.n; i++) {
		memcpy(&w->layer_id[i], data + i * DRIFT_RECORD, sizeof(int64_t));
		memcpy(&w->metric[3 * i], data + i * DRIFT_RECORD + sizeof(double),
		       3 * sizeof(double));
	}
	return w->fn(w->ctx, &row);
}

int store_drift_steps(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t lo,
		      int64_t hi, store_drift_fn fn, void *ctx)
{
	struct drift_walk w = { fn, ctx, NULL, NULL, 0 };
	int64_t a[4] = { run_id, domain_id, lo, hi };
	int rc = store_sql_select(
		r->db,
		"SELECT step, worker, data, width FROM drift_steps WHERE run_id = ?1"
		" AND domain_id = ?2 AND step >= ?3 AND step <= ?4 ORDER BY step",
		a, 4, read_row, &w);

	free(w.layer_id);
	free(w.metric);
	return rc;
}

int store_drift_through(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t *through)
{
	int rc = store_sql_int64(r->db,
				 "SELECT done FROM history WHERE run_id = ?1 AND domain_id = ?2"
				 " AND tier = -1",
				 run_id, domain_id, NULL, through);

	return rc == 0 && *through < 0 ? -ENOENT : rc;
}
