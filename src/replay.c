/*
 * replay: the walk of the simulated EMA — a layer's per-step aggregates
 * pooled per step and fed to PyTorch's update in step order, resuming from
 * the latest checkpoint of replay_cache.c that this reader's snapshot may
 * use and leaving new ones on the way (see replay.h for the contract and
 * why the cached answers stay exact).
 */
#include "replay_private.h"

#include "bnstat/stats.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* One replay in progress. */
struct walk {
	struct store_reader *r;
	struct replay_key key; /* key.channels: the layer's channels */
	size_t first, width;   /* channels replayed: [first, first + width) */
	double *rmean, *rvar;  /* [width] the state */
	double *xmean, *xm2;   /* [width] the step's pooled statistics */
	double *xvar;	       /* [width] their unbiased variances, when xvar_ready */
	double *row;	       /* [2 * width] scratch for one row */
	int64_t xn;	       /* elements pooled at the current step */
	int64_t cur_step;
	bool pending;
	bool pending_bucket; /* the current step is a bucket's end */
	bool xvar_ready;
	/* the state was resumed after this step: steps up to it are not applied again */
	int64_t resumed_after;
	int64_t applied;
	/* share of the state's weight replayed from buckets as one step (replay.h) */
	double bound;
	/* this reader's snapshot: newest late write, highest step (walk_run) */
	bool snapshot_known;
	int64_t gen, max_step;
	/* checkpoints (whole-layer walks only) */
	bool checkpoint;
	int64_t since;
	struct replay_cache *cache;
	/* per-step output (channel walks: fn; layer walks: sfn) */
	replay_point_fn fn;
	replay_state_fn sfn;
	void *ctx;
	int64_t emit_after;
};

/* Apply the pooled statistics of the current step to the state. */
static int walk_flush(struct walk *w)
{
	double a = w->key.momentum;

	if (!w->pending)
		return 0;
	w->pending = false;
	if (!w->xvar_ready) {
		stats_unbiased_vars(w->width, w->xn, w->xm2, w->xvar);
		w->xvar_ready = true;
	}
	if (w->pending_bucket) {
		/*
		 * A bucket: the state kept at its end when the momentum is one the
		 * store keeps, else the bucket replayed as one step of its pooled
		 * statistics, which the bound then accounts for.
		 */
		int64_t at, applied;
		int rc =
			store_sim_state_read(w->r, w->key.run_id, w->key.domain_id, w->key.layer_id,
					     a, w->cur_step, false, w->key.channels, w->first,
					     w->width, w->rmean, w->rvar, &at, &applied);

		w->pending_bucket = false;
		if (rc == 0) {
			w->applied = applied;
			w->bound = 0.0;
			goto applied;
		}
		if (rc != -ENOENT)
			return rc;
		stats_ema_update(w->width, a, w->xmean, w->xvar, w->rmean, w->rvar);
		w->applied++;
		w->bound = 1.0;
		goto applied;
	}
	stats_ema_update(w->width, a, w->xmean, w->xvar, w->rmean, w->rvar);
	w->applied++;
	w->bound *= 1.0 - a;
applied:
	if (w->fn != NULL && w->cur_step > w->emit_after) {
		int rc = w->fn(w->ctx, w->cur_step, w->rmean[0], w->rvar[0], w->bound);

		if (rc != 0)
			return rc;
	}
	if (w->sfn != NULL && w->cur_step > w->emit_after) {
		int rc = w->sfn(w->ctx, w->cur_step, w->rmean, w->rvar, w->bound);

		if (rc != 0)
			return rc;
	}
	if (w->checkpoint && w->bound == 0.0 && ++w->since >= REPLAY_CHECKPOINT_EVERY &&
	    w->cur_step < w->max_step) {
		struct replay_ckpt k = { .step = w->cur_step,
					 .gen = w->gen,
					 .applied = w->applied };

		k.state = malloc(2 * w->width * sizeof(double));
		if (k.state != NULL) {
			memcpy(k.state, w->rmean, w->width * sizeof(double));
			memcpy(k.state + w->width, w->rvar, w->width * sizeof(double));
			replay_cache_add(w->cache, &w->key, k);
		}
		w->since = 0;
	}
	return 0;
}

/* Pool one stored per-step aggregate into w's current step (flushed by the caller). */
static int walk_pool(struct walk *w, const struct store_row *row)
{
	size_t channels = w->key.channels;
	/* the first row of a step straight into the step's statistics */
	double *m = w->pending ? w->row : w->xmean, *m2 = w->pending ? w->row + w->width : w->xm2;
	size_t i;

	/* The blob holds mean[channels] then m2[channels] first. */
	if (store_row_values(w->r, row, channels, w->first, w->width, m) < 0 ||
	    store_row_values(w->r, row, channels, channels + w->first, w->width, m2) < 0)
		return -EIO;
	if (row->width > 1)
		w->pending_bucket = true;
	if (!w->pending) {
		w->xn = row->n;
		w->cur_step = row->step;
		w->pending = true;
		w->xvar_ready = false;
		return 0;
	}
	/* Another domain at the same step (domain "*"). */
	for (i = 0; i < w->width; i++) {
		int64_t n = w->xn;

		stats_merge1(&n, &w->xmean[i], &w->xm2[i], row->n, m[i], m2[i]);
	}
	w->xn += row->n;
	return 0;
}

/* One stored per-step aggregate: apply the step before it, pool it. */
static int walk_row(void *ctx, const struct store_row *row)
{
	struct walk *w = ctx;
	int rc;

	if (w->pending && row->step != w->cur_step) {
		rc = walk_flush(w);
		if (rc != 0)
			return rc;
	}
	return walk_pool(w, row);
}

static int walk_init(struct walk *w, size_t width)
{
	double *p = malloc(7 * width * sizeof(double));

	if (p == NULL)
		return -ENOMEM;
	w->width = width;
	w->rmean = p;
	w->rvar = p + width;
	w->xmean = p + 2 * width;
	w->xm2 = p + 3 * width;
	w->xvar = p + 4 * width;
	w->row = p + 5 * width;
	w->resumed_after = INT64_MIN;
	return 0;
}

/*
 * Is a checkpoint taken at `step` still a place to resume from? Not once
 * that step lies inside a bucket (it was taken before the steps were
 * merged): the bucket's row comes after it and holds steps before it.
 */
static int ckpt_on_boundary(struct walk *w, int64_t step)
{
	int64_t width;

	if (store_resolution(w->r, w->key.run_id, w->key.domain_id, step, &width) < 0)
		return -EIO;
	return width == 1 || step % width == 0;
}

/* The latest usable cached checkpoint at or before `step`, into w: found or not. */
static int resume_cached(struct walk *w, int64_t step, int64_t *resume_after)
{
	size_t channels = w->key.channels;
	double *state;
	int rc = 0;

	if (!replay_cache_enabled(w->cache) || !w->snapshot_known)
		return 0;
	state = malloc(2 * channels * sizeof(double));
	if (state == NULL)
		return -ENOMEM;
	for (;;) {
		struct replay_resume res = replay_cache_lookup(w->cache, &w->key, step, state);
		int late, usable;

		/*
		 * A checkpoint taken by a reader of a newer snapshot (a newer late
		 * write, or past our highest step) is not ours to use.
		 */
		if (!res.found || res.gen > w->gen || res.step > w->max_step)
			break;
		usable = ckpt_on_boundary(w, res.step);
		if (usable < 0) {
			rc = usable;
			break;
		}
		if (!usable) {
			/* history was bucketed under it: start over from the kept states */
			replay_cache_invalidate(w->cache, &w->key, INT64_MIN);
			break;
		}
		late = store_late_since(w->r, w->key.run_id, w->key.domain_id, res.gen, res.step);
		if (late < 0) {
			rc = late;
			break;
		}
		if (late == 0) {
			memcpy(w->rmean, state + w->first, w->width * sizeof(double));
			memcpy(w->rvar, state + channels + w->first, w->width * sizeof(double));
			w->applied = res.applied;
			*resume_after = res.step;
			break;
		}
		/* History changed at or before it: this and later checkpoints are stale. */
		replay_cache_invalidate(w->cache, &w->key, res.step);
	}
	free(state);
	return rc;
}

/*
 * Set w's state to the latest usable checkpoint at or before `step` — a
 * cached one, or a replay state the store kept at a bucket end, whichever
 * is later — or the initial 0/1, and return the step the replay resumes
 * after.
 */
static int walk_resume(struct walk *w, int64_t step, int64_t *resume_after)
{
	double *kept = NULL;
	int64_t at, applied;
	size_t i;
	int rc;

	*resume_after = INT64_MIN;
	for (i = 0; i < w->width; i++) {
		w->rmean[i] = 0.0;
		w->rvar[i] = 1.0;
	}
	w->applied = 0;
	w->bound = 0.0;
	rc = resume_cached(w, step, resume_after);
	if (rc < 0 || w->key.domain_id < 0)
		return rc;
	kept = malloc(2 * w->width * sizeof(double));
	if (kept == NULL)
		return -ENOMEM;
	rc = store_sim_state_read(w->r, w->key.run_id, w->key.domain_id, w->key.layer_id,
				  w->key.momentum, step, true, w->key.channels, w->first, w->width,
				  kept, kept + w->width, &at, &applied);
	if (rc == 0 && (*resume_after == INT64_MIN || at > *resume_after)) {
		memcpy(w->rmean, kept, w->width * sizeof(double));
		memcpy(w->rvar, kept + w->width, w->width * sizeof(double));
		w->applied = applied;
		*resume_after = at;
	}
	free(kept);
	return rc == -ENOENT ? 0 : rc;
}

/*
 * Read what this reader's snapshot holds (once, for both resuming and
 * taking checkpoints), resume at the latest usable checkpoint at or before
 * resume_at and replay every step up to `to`; whole-layer walks
 * (take_checkpoints) leave checkpoints on the way.
 */
/* What this reader's snapshot holds, once, for resuming and taking checkpoints. */
static void walk_snapshot(struct walk *w, bool take_checkpoints)
{
	if (replay_cache_enabled(w->cache))
		w->snapshot_known =
			store_late_gen(w->r, w->key.run_id, &w->gen) == 0 &&
			store_latest_step(w->r, w->key.run_id, w->key.domain_id, &w->max_step) == 0;
	w->checkpoint = take_checkpoints && w->snapshot_known;
}

static int walk_run(struct walk *w, int64_t resume_at, int64_t to, bool take_checkpoints)
{
	int64_t after;
	int rc;

	walk_snapshot(w, take_checkpoints);
	rc = walk_resume(w, resume_at, &after);
	if (rc == 0)
		rc = store_layer_aggs(w->r, w->key.run_id, w->key.domain_id, w->key.layer_id,
				      after == INT64_MIN ? -1 : after, to, walk_row, w);
	if (rc == 0)
		rc = walk_flush(w);
	return rc;
}

int replay_layer(struct replay_cache *c, struct store_reader *r, int64_t run_id, int64_t domain_id,
		 int64_t layer_id, size_t channels, double momentum, int64_t step, double *mean_out,
		 double *var_out, int64_t *applied, double *bound)
{
	struct walk w = {
		.r = r,
		.key = { run_id, domain_id, layer_id, momentum, channels },
		.first = 0,
		.cache = c,
	};
	int rc;

	rc = walk_init(&w, channels);
	if (rc < 0)
		return rc;
	rc = walk_run(&w, step, step, true);
	if (rc == 0) {
		memcpy(mean_out, w.rmean, channels * sizeof(double));
		memcpy(var_out, w.rvar, channels * sizeof(double));
		*applied = w.applied;
		*bound = w.bound;
	}
	free(w.rmean);
	return rc;
}

int replay_channel(struct replay_cache *c, struct store_reader *r, int64_t run_id,
		   int64_t domain_id, int64_t layer_id, size_t channels, size_t channel,
		   double momentum, int64_t from_excl, int64_t to, replay_point_fn fn, void *ctx)
{
	struct walk w = {
		.r = r,
		.key = { run_id, domain_id, layer_id, momentum, channels },
		.first = channel,
		.cache = c,
		.fn = fn,
		.ctx = ctx,
		.emit_after = from_excl,
	};
	int rc;

	rc = walk_init(&w, 1);
	if (rc < 0)
		return rc;
	rc = walk_run(&w, from_excl, to, false);
	free(w.rmean);
	return rc;
}

int replay_layer_steps(struct replay_cache *c, struct store_reader *r, int64_t run_id,
		       int64_t domain_id, int64_t layer_id, size_t channels, double momentum,
		       int64_t from_excl, int64_t to, replay_state_fn fn, void *ctx)
{
	struct walk w = {
		.r = r,
		.key = { run_id, domain_id, layer_id, momentum, channels },
		.first = 0,
		.cache = c,
		.sfn = fn,
		.ctx = ctx,
		.emit_after = from_excl,
	};
	int rc;

	rc = walk_init(&w, channels);
	if (rc < 0)
		return rc;
	/* a whole-layer walk: it leaves checkpoints, so the next range resumes near */
	rc = walk_run(&w, from_excl, to, true);
	free(w.rmean);
	return rc;
}

/* One layer's momenta in a walk over several (replay_layers_momenta). */
struct multi {
	struct walk *w; /* [n]; w[0] pools the rows, the others share its buffers */
	size_t n, ready;
	const double **mean, **var; /* [n] the states handed out */
	double *bound;		    /* [n] */
};

/* Where a layer id is among a walk's layers. */
struct multi_id {
	int64_t id;
	size_t index;
};

/* A walk over several layers and momenta, the rows read in step order. */
struct multi_run {
	struct multi *layer; /* [n_layers] */
	size_t n_layers;
	struct multi_id *by_id; /* [n_layers] sorted by layer id */
	size_t cur;		/* the layer whose step is being pooled, when have */
	bool have;
	int64_t emit_after;
	replay_steps_fn fn;
	void *ctx;
};

static int multi_id_cmp(const void *a, const void *b)
{
	const struct multi_id *x = a, *y = b;

	return (x->id > y->id) - (x->id < y->id);
}

/* Apply a layer's pooled step to every momentum whose state is not past it, then hand it out. */
static int multi_flush(struct multi_run *mr, size_t li)
{
	struct multi *m = &mr->layer[li];
	struct walk *p = &m->w[0];
	struct replay_step st;
	size_t i;
	int rc;

	if (!p->pending)
		return 0;
	st = (struct replay_step){ .step = p->cur_step,
				   .n = p->xn,
				   .mean = p->xmean,
				   .m2 = p->xm2,
				   .ema_mean = m->mean,
				   .ema_var = m->var,
				   .bound = m->bound };
	stats_unbiased_vars(p->width, p->xn, p->xm2, p->xvar);
	for (i = m->n; i-- > 0;) {
		struct walk *w = &m->w[i];

		/* w[0] last: its flush clears the step the others copy */
		w->pending = true;
		w->pending_bucket = p->pending_bucket;
		w->xn = p->xn;
		w->cur_step = p->cur_step;
		w->xvar_ready = true;
		if (w->cur_step <= w->resumed_after) {
			w->pending = w->pending_bucket = false;
		} else {
			rc = walk_flush(w);
			if (rc != 0)
				return rc;
		}
		m->bound[i] = w->bound;
	}
	return st.step > mr->emit_after ? mr->fn(mr->ctx, li, &st) : 0;
}

/* A row of any layer: the rows of one (step, layer) pool into one step. */
static int multi_row(void *ctx, const struct store_row *row)
{
	struct multi_run *mr = ctx;
	struct multi_id key = { .id = row->layer_id }, *hit;
	int rc;

	hit = bsearch(&key, mr->by_id, mr->n_layers, sizeof(key), multi_id_cmp);
	if (hit == NULL)
		return 0; /* a layer not asked for */
	if (mr->have && (hit->index != mr->cur || row->step != mr->layer[mr->cur].w[0].cur_step)) {
		rc = multi_flush(mr, mr->cur);
		if (rc != 0)
			return rc;
	}
	mr->cur = hit->index;
	mr->have = true;
	return walk_pool(&mr->layer[hit->index].w[0], row);
}

/* Set up layer m's walks, one per momentum, sharing the snapshot of *snap. */
static int multi_init(struct multi *m, struct replay_cache *c, struct store_reader *r,
		      const struct replay_key *key, const double *momenta, size_t n,
		      const struct walk *snap)
{
	size_t i;

	m->n = n;
	m->w = calloc(n, sizeof(*m->w));
	m->mean = calloc(n, sizeof(*m->mean));
	m->var = calloc(n, sizeof(*m->var));
	m->bound = calloc(n, sizeof(*m->bound));
	if (m->w == NULL || m->mean == NULL || m->var == NULL || m->bound == NULL)
		return -ENOMEM;
	for (i = 0; i < n; i++, m->ready++) {
		struct walk *w = &m->w[i];

		w->r = r;
		w->key = *key;
		w->key.momentum = momenta[i];
		w->cache = c;
		if (walk_init(w, key->channels) < 0)
			return -ENOMEM;
		m->mean[i] = w->rmean;
		m->var[i] = w->rvar;
		w->snapshot_known = snap->snapshot_known;
		w->gen = snap->gen;
		w->max_step = snap->max_step;
		w->checkpoint = snap->checkpoint;
		if (i > 0) {
			w->xmean = m->w[0].xmean;
			w->xm2 = m->w[0].xm2;
			w->xvar = m->w[0].xvar;
		}
	}
	return 0;
}

static void multi_free(struct multi *m)
{
	size_t i;

	for (i = 0; i < m->ready; i++)
		free(m->w[i].rmean);
	free(m->w);
	free(m->mean);
	free(m->var);
	free(m->bound);
}

int replay_layers_momenta(struct replay_cache *c, struct store_reader *r, int64_t run_id,
			  int64_t domain_id, size_t n_layers, const int64_t *layer_ids,
			  const size_t *channels, const double *momenta, size_t n_momenta,
			  int64_t from_excl, int64_t rows_after, int64_t to, replay_steps_fn fn,
			  void *ctx)
{
	struct multi_run mr = {
		.n_layers = n_layers, .emit_after = rows_after, .fn = fn, .ctx = ctx
	};
	struct walk snap = { .r = r,
			     .key = { .run_id = run_id, .domain_id = domain_id },
			     .cache = c };
	int64_t start = rows_after, after;
	size_t li, i;
	int rc = -ENOMEM;

	if (n_layers == 0 || n_momenta == 0)
		return -EINVAL;
	mr.layer = calloc(n_layers, sizeof(*mr.layer));
	mr.by_id = calloc(n_layers, sizeof(*mr.by_id));
	if (mr.layer == NULL || mr.by_id == NULL)
		goto done;
	/*
	 * What this reader's snapshot holds: the same for every layer. No
	 * checkpoints are taken: every (layer, momentum) of a whole run would
	 * fill the cache and evict what other queries resume from.
	 */
	walk_snapshot(&snap, false);
	for (li = 0; li < n_layers; li++) {
		struct replay_key key = { run_id, domain_id, layer_ids[li], 0.0, channels[li] };

		rc = multi_init(&mr.layer[li], c, r, &key, momenta, n_momenta, &snap);
		if (rc < 0)
			goto done;
		mr.by_id[li] = (struct multi_id){ layer_ids[li], li };
		/* each momentum from its own latest checkpoint; the rows from the earliest */
		for (i = 0; i < n_momenta; i++) {
			struct walk *w = &mr.layer[li].w[i];

			rc = walk_resume(w, from_excl, &after);
			if (rc < 0)
				goto done;
			w->resumed_after = after;
			if (after < start)
				start = after;
		}
	}
	qsort(mr.by_id, n_layers, sizeof(*mr.by_id), multi_id_cmp);
	rc = store_run_aggs(r, run_id, domain_id, start == INT64_MIN ? -1 : start, to, multi_row,
			    &mr);
	if (rc == 0 && mr.have)
		rc = multi_flush(&mr, mr.cur);
done:
	for (li = 0; mr.layer != NULL && li < n_layers; li++)
		multi_free(&mr.layer[li]);
	free(mr.layer);
	free(mr.by_id);
	return rc;
}
