/*
 * store_bytes: each run's `bytes` (the bytes of its stored arrays, GET
 * /v1/runs/{run}) and `updated` (its last accepted batch), kept by the
 * writer. Whoever inserts or deletes a row
 * with a blob adds the change here; the changes are written once per
 * transaction, just before its COMMIT (one UPDATE per run touched), and
 * dropped with it when it rolls back. Writer thread only.
 */
#include "store_private.h"

/* The pending change of run_id, made when missing; NULL when out of memory. */
static struct store_bytes_delta *entry(struct store *s, int64_t run_id)
{
	struct store_bytes_delta *p;
	size_t i;

	for (i = s->bytes.n; i > 0; i--)
		if (s->bytes.runs[i - 1].run_id == run_id)
			return &s->bytes.runs[i - 1];
	if (s->bytes.n == s->bytes.cap) {
		size_t cap = s->bytes.cap ? 2 * s->bytes.cap : 16;

		p = realloc(s->bytes.runs, cap * sizeof(*p));
		if (p == NULL)
			return NULL; /* approximate: a lost change only skews the count */
		s->bytes.runs = p;
		s->bytes.cap = cap;
	}
	p = &s->bytes.runs[s->bytes.n++];
	p->run_id = run_id;
	p->delta = 0;
	p->upload = false;
	return p;
}

void store_bytes_add(struct store *s, int64_t run_id, int64_t delta)
{
	struct store_bytes_delta *p = delta != 0 ? entry(s, run_id) : NULL;

	if (p != NULL)
		p->delta += delta;
}

void store_bytes_upload(struct store *s, int64_t run_id)
{
	struct store_bytes_delta *p = entry(s, run_id);

	if (p != NULL)
		p->upload = true;
}

int store_bytes_flush(struct store *s)
{
	int64_t now = store_now_ms();
	size_t i;

	for (i = 0; i < s->bytes.n; i++) {
		const struct store_bytes_delta *p = &s->bytes.runs[i];
		sqlite3_stmt *st = s->wstmt[p->upload ? W_RUN_TOUCH : W_RUN_BYTES];

		sqlite3_bind_int64(st, 1, p->run_id);
		sqlite3_bind_int64(st, 2, p->delta);
		if (p->upload)
			sqlite3_bind_int64(st, 3, now);
		if (store_sql_run(st) < 0)
			return -EIO;
	}
	s->bytes.n = 0;
	return 0;
}

void store_bytes_drop(struct store *s)
{
	s->bytes.n = 0;
}

static int read_sum(void *ctx, sqlite3_stmt *st)
{
	*(int64_t *)ctx = sqlite3_column_int64(st, 0);
	return 1;
}

int store_bytes_of(sqlite3_stmt *st, const int64_t *args, int n, int64_t *bytes)
{
	int i;

	*bytes = 0;
	for (i = 0; i < n; i++)
		sqlite3_bind_int64(st, i + 1, args[i]);
	return store_sql_rows(st, read_sum, bytes) < 0 ? -EIO : 0;
}

int store_bytes_recount(struct store *s, int64_t run_id)
{
	sqlite3_stmt *st = s->wstmt[W_RUN_BYTES_RECOUNT];

	sqlite3_bind_int64(st, 1, run_id);
	return store_sql_run(st);
}
