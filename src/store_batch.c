/*
 * store_batch: applying one upload inside the group's transaction — its
 * identity checked against the batches seen before (a duplicate or a
 * conflict, docs/DESIGN.md "Data flow", "Retries"), the late-write log
 * and the retention horizon, its layers merged into the writer's aggregate
 * cache and its worker EMAs written. Writer thread only.
 */
#include "store_private.h"

#include <stdlib.h>
#include <string.h>

/* Does every value of v[0..n) survive a round trip through float? */
static bool all_floats(const double *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if ((double)(float)v[i] != v[i])
			return false;
	return true;
}

/*
 * Write the worker's EMA of layer l. Most EMAs are float32 tensors: when
 * every value is a float the blob holds floats, half the bytes, read back
 * exactly (store_row_read); otherwise doubles.
 */
static int ema_put(struct store *s, int64_t run_id, int64_t domain_id, int64_t layer_id,
		   const struct ingest_batch *b, const struct ingest_layer *l, struct bn_error *err)
{
	sqlite3_stmt *st = s->wstmt[W_EMA_PUT];
	size_t c = l->channels, i, bytes;

	if (store_scratch_reserve(&s->wscratch, &s->wscratch_cap, c) < 0)
		return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
	if (all_floats(l->ema_mean, c) && all_floats(l->ema_var, c)) {
		float *f = (float *)(void *)s->wscratch;

		for (i = 0; i < c; i++) {
			f[i] = (float)l->ema_mean[i];
			f[c + i] = (float)l->ema_var[i];
		}
		bytes = 2 * c * sizeof(float);
	} else {
		memcpy(s->wscratch, l->ema_mean, c * sizeof(double));
		memcpy(s->wscratch + c, l->ema_var, c * sizeof(double));
		bytes = 2 * c * sizeof(double);
	}
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, layer_id);
	sqlite3_bind_text(st, 4, b->worker, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, b->step);
	sqlite3_bind_int64(st, 6, b->seq);
	sqlite3_bind_blob(st, 7, s->wscratch, (int)bytes, SQLITE_STATIC);
	/* the upsert's update leaves the last rowid alone: a new one means a new row */
	sqlite3_set_last_insert_rowid(s->wdb, 0);
	if (store_sql_run(st) < 0)
		return store_sql_error(err, s->wdb, "writing worker EMA");
	if (sqlite3_last_insert_rowid(s->wdb) != 0)
		store_bytes_add(s, run_id, (int64_t)bytes);
	return 0;
}

static bool batch_merges(const struct ingest_batch *b)
{
	size_t i;

	for (i = 0; i < b->n_layers; i++)
		if (b->layers[i].count > 0)
			return true;
	return false;
}

/* The run's highest step with statistics, when it has one. */
struct max_step {
	bool have;
	int64_t step;
};

static int read_max_step(void *ctx, sqlite3_stmt *st)
{
	struct max_step *m = ctx;

	if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
		m->have = true;
		m->step = sqlite3_column_int64(st, 0);
	}
	return 1;
}

/*
 * A batch below the run's highest step rewrites history for replayed EMAs:
 * log it (replay.c keeps its cached replays exact by it). Batches at or
 * above the highest step, the normal case in training, log nothing.
 * Returns 1 for a late batch that merges data, 0 for any other accepted
 * one, or a negative errno with *err filled in (refused).
 */
static int note_late_write(struct store *s, int64_t run_id, int64_t domain_id,
			   const struct ingest_batch *b, struct bn_error *err)
{
	sqlite3_stmt *st = s->wstmt[W_RUN_MAX_STEP];
	struct max_step max = { 0 };
	bool late;

	sqlite3_bind_int64(st, 1, run_id);
	if (store_sql_rows(st, read_max_step, &max) <= 0)
		return store_sql_error(err, s->wdb, "reading the run's last step");
	late = max.have && b->step < max.step;
	if (max.have && s->opt.retain_steps > 0 && b->step <= max.step - s->opt.retain_steps)
		return bn_error_set(
			err, 422, BN_E_INVALID, "step",
			"step %lld is older than the retention horizon: this server keeps "
			"the last %lld steps of a run (now steps > %lld)",
			(long long)b->step, (long long)s->opt.retain_steps,
			(long long)(max.step - s->opt.retain_steps));
	if (late) {
		bool bucketed;
		int64_t through;

		if (store_history_bucketed_through(s, run_id, domain_id, &bucketed, &through) < 0)
			return store_sql_error(err, s->wdb, "reading the domain's history");
		if (bucketed && b->step <= through)
			return bn_error_set(
				err, 409, BN_E_STEP_COMPACTED, "step",
				"step %lld of domain %s is already merged into a bucket (steps <= "
				"%lld are); this server keeps the last %lld steps per step "
				"(history-full-steps)",
				(long long)b->step, b->domain, (long long)through,
				(long long)s->opt.history_full_steps);
	}
	if (!late || !batch_merges(b))
		return 0;
	st = s->wstmt[W_LATE_INS];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, b->step);
	if (store_sql_run(st) < 0)
		return store_sql_error(err, s->wdb, "recording a late write");
	return 1;
}

/*
 * A late batch: the replay states kept at or after its step no longer hold
 * (docs/DESIGN.md, "History"); drop them and move the checkpoint mark back.
 */
static int drop_late_states(struct store *s, int64_t run_id, int64_t domain_id,
			    const struct ingest_batch *b, struct bn_error *err)
{
	int64_t a[3] = { run_id, domain_id, b->step };
	int64_t c[3] = { run_id, domain_id, 0 }, gone;
	sqlite3_stmt *st;
	int i;

	/* back to the last checkpoint boundary before the step */
	c[2] = b->step > 0 ? (b->step - 1) / STORE_HISTORY_CKPT_EVERY * STORE_HISTORY_CKPT_EVERY
			   : -1;
	if (store_bytes_of(s->wstmt[W_SUM_SIMS_LATE], a, 3, &gone) < 0)
		return store_sql_error(err, s->wdb, "dropping replay checkpoints");
	st = s->wstmt[W_HIST_SIM_LATE];
	for (i = 0; i < 3; i++)
		sqlite3_bind_int64(st, i + 1, a[i]);
	if (store_sql_run(st) < 0)
		return store_sql_error(err, s->wdb, "dropping replay checkpoints");
	store_bytes_add(s, run_id, -gone);
	st = s->wstmt[W_HIST_CKPT_LATE];
	for (i = 0; i < 3; i++)
		sqlite3_bind_int64(st, i + 1, c[i]);
	if (store_sql_run(st) < 0)
		return store_sql_error(err, s->wdb, "dropping replay checkpoints");
	return 0;
}

/* Is the stored hash of this identity the batch's own? */
static int read_same_hash(void *ctx, sqlite3_stmt *st)
{
	const struct ingest_batch *b = ctx;

	return sqlite3_column_bytes(st, 0) == INGEST_HASH_SIZE &&
			       memcmp(sqlite3_column_blob(st, 0), b->hash, INGEST_HASH_SIZE) == 0
		       ? 1
		       : 2;
}

/*
 * Has this identity been seen: 0 no, 1 with the same content, 2 with
 * other content; or -EIO.
 */
static int batch_seen(struct store *s, int64_t run_id, int64_t domain_id,
		      const struct ingest_batch *b)
{
	sqlite3_stmt *st = s->wstmt[W_BATCH_GET];

	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_text(st, 3, b->worker, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, b->step);
	sqlite3_bind_int64(st, 5, b->seq);
	return store_sql_rows(st, read_same_hash, (void *)b);
}

struct new_layer {
	size_t order; /* ingest_layer.order */
	size_t i;     /* index in the batch's layers */
};

static int new_layer_cmp(const void *a, const void *b)
{
	const struct new_layer *x = a, *y = b;

	if (x->order != y->order)
		return x->order < y->order ? -1 : 1;
	return (x->i > y->i) - (x->i < y->i);
}

/*
 * Create the batch's layers that the run lacks (s->wlayer_ids[i] == 0), in
 * the upload's order, filling in their ids. Returns 0, or -EINVAL with *err
 * set.
 */
static int create_new_layers(struct store *s, int64_t run_id, const struct ingest_batch *b,
			     struct bn_error *err)
{
	struct new_layer *v;
	size_t i, n = 0;
	int rc = 0;

	for (i = 0; i < b->n_layers; i++)
		n += b->layers[i].channels > 0 && s->wlayer_ids[i] == 0;
	if (n == 0)
		return 0;
	v = malloc(n * sizeof(*v));
	if (v == NULL) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		return -EINVAL;
	}
	for (i = 0, n = 0; i < b->n_layers; i++)
		if (b->layers[i].channels > 0 && s->wlayer_ids[i] == 0)
			v[n++] = (struct new_layer){ b->layers[i].order, i };
	qsort(v, n, sizeof(*v), new_layer_cmp);
	for (i = 0; i < n && rc == 0; i++)
		if (store_intern_layer(s, run_id, &b->layers[v[i].i], true, &s->wlayer_ids[v[i].i],
				       err) < 0)
			rc = -EINVAL;
	free(v);
	return rc;
}

int store_batch_apply(struct store *s, struct store_job *j)
{
	const struct ingest_batch *b = j->batch;
	struct bn_error *err = &j->res.err;
	sqlite3_stmt *st;
	int64_t run_id, domain_id, layer_id = 0;
	size_t i;
	bool late;
	int rc;

	j->res.layers = b->n_layers;
	if (store_intern_run(s, b->run, &run_id) < 0)
		return store_sql_error(err, s->wdb, "creating run");
	if (store_intern_domain(s, run_id, b->domain, &domain_id) < 0)
		return store_sql_error(err, s->wdb, "creating domain");

	rc = batch_seen(s, run_id, domain_id, b);
	if (rc == 1) {
		j->res.duplicate = true;
		return 0;
	}
	if (rc == 2)
		return bn_error_set(err, 409, BN_E_CONFLICT, NULL,
				    "batch (domain %s, worker %s, step %lld, seq %lld) was already "
				    "received with different content",
				    b->domain, b->worker, (long long)b->step, (long long)b->seq);
	if (rc < 0)
		return store_sql_error(err, s->wdb, "looking up batch");

	rc = note_late_write(s, run_id, domain_id, b, err);
	if (rc < 0)
		return rc;
	late = rc == 1;
	/*
	 * Every check that can refuse the batch comes first (the savepoint
	 * undoes SQL, not the in-memory aggregates); only then merge.
	 */
	if (b->n_layers > s->wlayer_cap) {
		int64_t *p = realloc(s->wlayer_ids, b->n_layers * sizeof(*p));

		if (p == NULL)
			return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		s->wlayer_ids = p;
		s->wlayer_cap = b->n_layers;
	}
	/*
	 * The layers the run has, in name order (so that which of several
	 * mismatched channel counts is refused does not depend on the upload's
	 * order); then the new ones, created in the upload's order: a run's
	 * layers are listed in the order of their first upload, a model's
	 * module order (docs/API.md, "Runs").
	 */
	for (i = 0; i < b->n_layers; i++) {
		if (b->layers[i].channels == 0)
			continue; /* unused in this batch and nothing sent */
		if (store_intern_layer(s, run_id, &b->layers[i], false, &s->wlayer_ids[i], err) < 0)
			return -EINVAL;
	}
	if (create_new_layers(s, run_id, b, err) < 0)
		return -EINVAL;
	if (late && drop_late_states(s, run_id, domain_id, b, err) < 0)
		return -EIO;
	for (i = 0; i < b->n_layers; i++) {
		const struct ingest_layer *l = &b->layers[i];

		if (l->channels == 0)
			continue;
		layer_id = s->wlayer_ids[i];
		if (l->count > 0 && store_aggcache_merge(s, run_id, domain_id, b->step, layer_id,
							 b->var_kind, l, err) < 0)
			return -EIO;
		if (l->ema_mean != NULL && ema_put(s, run_id, domain_id, layer_id, b, l, err) < 0)
			return -EIO;
	}

	st = s->wstmt[W_BATCH_INS];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_text(st, 3, b->worker, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, b->step);
	sqlite3_bind_int64(st, 5, b->seq);
	sqlite3_bind_blob(st, 6, b->hash, INGEST_HASH_SIZE, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, (sqlite3_int64)b->n_layers);
	sqlite3_bind_int64(st, 8, store_now_ms());
	if (store_sql_run(st) < 0)
		return store_sql_error(err, s->wdb, "recording batch");
	/* the step's drift metrics, if computed, no longer hold (store_drift.c) */
	if (store_drift_forget(s, run_id, domain_id, b->step) < 0)
		return store_sql_error(err, s->wdb, "dropping the step's drift metrics");
	store_bytes_upload(s, run_id);
	store_history_touch(s, run_id, domain_id, late ? b->step : INT64_MAX);
	return 0;
}
