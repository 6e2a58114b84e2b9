/*
 * replay: the simulated EMA and its cache of replay checkpoints (see
 * replay.h for the contract and why the cached answers stay exact).
 */
#include "replay.h"

#include "bnstat/stats.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct ckpt {
	int64_t step;
	int64_t gen;	 /* newest late write seen when it was taken */
	int64_t applied; /* steps with data replayed up to here */
	double *state;	 /* [2 * channels]: mean, then var */
};

struct entry {
	struct entry *next;
	int64_t run_id, domain_id, layer_id;
	double momentum;
	size_t channels;
	struct ckpt *ck; /* sorted by step */
	size_t n_ck, cap_ck;
	uint64_t last_used;
};

struct replay_cache {
	pthread_mutex_t mu;
	struct entry *head;
	size_t max_bytes;
	size_t used;
	size_t n_ckpts;
	uint64_t clock;
};

struct replay_cache *replay_cache_new(size_t max_bytes)
{
	struct replay_cache *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	pthread_mutex_init(&c->mu, NULL);
	c->max_bytes = max_bytes;
	return c;
}

static size_t ckpt_bytes(size_t channels)
{
	return 2 * channels * sizeof(double) + sizeof(struct ckpt);
}

/* Drop the checkpoints of e from index i on. Caller holds c->mu. */
static void entry_truncate(struct replay_cache *c, struct entry *e, size_t i)
{
	size_t j;

	for (j = i; j < e->n_ck; j++) {
		free(e->ck[j].state);
		c->used -= ckpt_bytes(e->channels);
		c->n_ckpts--;
	}
	if (i < e->n_ck)
		e->n_ck = i;
}

static void entry_free(struct replay_cache *c, struct entry *e)
{
	entry_truncate(c, e, 0);
	free(e->ck);
	free(e);
}

void replay_cache_free(struct replay_cache *c)
{
	struct entry *e, *next;

	if (c == NULL)
		return;
	for (e = c->head; e != NULL; e = next) {
		next = e->next;
		entry_free(c, e);
	}
	pthread_mutex_destroy(&c->mu);
	free(c);
}

void replay_cache_usage(struct replay_cache *c, size_t *checkpoints, size_t *bytes)
{
	pthread_mutex_lock(&c->mu);
	*checkpoints = c->n_ckpts;
	*bytes = c->used;
	pthread_mutex_unlock(&c->mu);
}

/* Caller holds c->mu. */
static struct entry *entry_find(struct replay_cache *c, int64_t run_id, int64_t domain_id,
				int64_t layer_id, double momentum, size_t channels)
{
	struct entry *e;

	for (e = c->head; e != NULL; e = e->next)
		if (e->run_id == run_id && e->domain_id == domain_id && e->layer_id == layer_id &&
		    e->momentum == momentum && e->channels == channels)
			return e;
	return NULL;
}

/* A checkpoint found for resuming, copied out of the cache. */
struct resume {
	bool found;
	int64_t step, gen, applied;
};

/*
 * Copy the latest checkpoint at or before `step` into state (2*channels).
 * Caller holds nothing.
 */
static struct resume cache_lookup(struct replay_cache *c, int64_t run_id, int64_t domain_id,
				  int64_t layer_id, double momentum, size_t channels, int64_t step,
				  double *state)
{
	struct resume res = { 0 };
	struct entry *e;
	size_t i;

	pthread_mutex_lock(&c->mu);
	e = entry_find(c, run_id, domain_id, layer_id, momentum, channels);
	if (e != NULL) {
		e->last_used = ++c->clock;
		for (i = e->n_ck; i > 0; i--) {
			if (e->ck[i - 1].step <= step) {
				const struct ckpt *k = &e->ck[i - 1];

				memcpy(state, k->state, 2 * channels * sizeof(double));
				res.found = true;
				res.step = k->step;
				res.gen = k->gen;
				res.applied = k->applied;
				break;
			}
		}
	}
	pthread_mutex_unlock(&c->mu);
	return res;
}

/* Forget every checkpoint of the key at or after `step`. */
static void cache_invalidate(struct replay_cache *c, int64_t run_id, int64_t domain_id,
			     int64_t layer_id, double momentum, size_t channels, int64_t step)
{
	struct entry *e;
	size_t i;

	pthread_mutex_lock(&c->mu);
	e = entry_find(c, run_id, domain_id, layer_id, momentum, channels);
	if (e != NULL) {
		for (i = 0; i < e->n_ck && e->ck[i].step < step; i++)
			;
		entry_truncate(c, e, i);
	}
	pthread_mutex_unlock(&c->mu);
}

/* Evict least recently used entries until the cache fits. Caller holds c->mu. */
static void cache_evict(struct replay_cache *c, const struct entry *keep)
{
	while (c->used > c->max_bytes) {
		struct entry **pp, **victim = NULL;

		for (pp = &c->head; *pp != NULL; pp = &(*pp)->next)
			if (*pp != keep &&
			    (victim == NULL || (*pp)->last_used < (*victim)->last_used))
				victim = pp;
		if (victim == NULL) {
			/* Only the entry being filled is left: shed its oldest checkpoints. */
			struct entry *e = c->head;

			if (e == NULL || e->n_ck == 0)
				return;
			free(e->ck[0].state);
			memmove(e->ck, e->ck + 1, (e->n_ck - 1) * sizeof(*e->ck));
			e->n_ck--;
			c->used -= ckpt_bytes(e->channels);
			c->n_ckpts--;
			continue;
		} else {
			struct entry *v = *victim;

			*victim = v->next;
			entry_free(c, v);
		}
	}
}

/* Keep checkpoint k (its state is taken over by the cache, or freed). */
static void cache_add(struct replay_cache *c, int64_t run_id, int64_t domain_id, int64_t layer_id,
		      double momentum, size_t channels, struct ckpt k)
{
	struct entry *e;
	size_t i;

	if (c->max_bytes < ckpt_bytes(channels)) {
		free(k.state);
		return;
	}
	pthread_mutex_lock(&c->mu);
	e = entry_find(c, run_id, domain_id, layer_id, momentum, channels);
	if (e == NULL) {
		e = calloc(1, sizeof(*e));
		if (e == NULL)
			goto drop;
		e->run_id = run_id;
		e->domain_id = domain_id;
		e->layer_id = layer_id;
		e->momentum = momentum;
		e->channels = channels;
		e->next = c->head;
		c->head = e;
	}
	e->last_used = ++c->clock;
	for (i = 0; i < e->n_ck && e->ck[i].step < k.step; i++)
		;
	if (i < e->n_ck && e->ck[i].step == k.step)
		goto drop; /* already there */
	if (e->n_ck == e->cap_ck) {
		size_t cap = e->cap_ck ? 2 * e->cap_ck : 8;
		struct ckpt *p = realloc(e->ck, cap * sizeof(*p));

		if (p == NULL)
			goto drop;
		e->ck = p;
		e->cap_ck = cap;
	}
	memmove(e->ck + i + 1, e->ck + i, (e->n_ck - i) * sizeof(*e->ck));
	e->ck[i] = k;
	e->n_ck++;
	c->used += ckpt_bytes(channels);
	c->n_ckpts++;
	cache_evict(c, e);
	pthread_mutex_unlock(&c->mu);
	return;
drop:
	pthread_mutex_unlock(&c->mu);
	free(k.state);
}

/* --- the replay ---------------------------------------------------------------------- */

struct walk {
	struct store_reader *r;
	size_t channels;
	size_t first, width; /* channels replayed: [first, first + width) */
	double a;
	double *rmean, *rvar; /* [width] the state */
	double *xmean, *xm2;  /* [width] the step's pooled statistics */
	double *row;	      /* [2 * width] scratch for one row */
	int64_t xn;	      /* elements pooled at the current step */
	int64_t cur_step;
	bool pending;
	int64_t applied;
	/* this reader's snapshot: newest late write, highest step (walk_run) */
	bool snapshot_known;
	int64_t gen, max_step;
	/* checkpoints (whole-layer walks only) */
	bool checkpoint;
	int64_t since;
	struct replay_cache *cache;
	int64_t run_id, domain_id, layer_id;
	/* per-step output (channel walks only) */
	replay_point_fn fn;
	void *ctx;
	int64_t emit_after;
};

static int walk_flush(struct walk *w)
{
	double a = w->a;
	size_t i;

	if (!w->pending)
		return 0;
	w->pending = false;
	for (i = 0; i < w->width; i++)
		stats_ema_step(a, w->xn, w->xmean[i], w->xm2[i], &w->rmean[i], &w->rvar[i]);
	w->applied++;
	if (w->fn != NULL && w->cur_step > w->emit_after) {
		int rc = w->fn(w->ctx, w->cur_step, w->rmean[0], w->rvar[0]);

		if (rc != 0)
			return rc;
	}
	if (w->checkpoint && ++w->since >= REPLAY_CHECKPOINT_EVERY && w->cur_step < w->max_step) {
		struct ckpt k = { .step = w->cur_step, .gen = w->gen, .applied = w->applied };

		k.state = malloc(2 * w->width * sizeof(double));
		if (k.state != NULL) {
			memcpy(k.state, w->rmean, w->width * sizeof(double));
			memcpy(k.state + w->width, w->rvar, w->width * sizeof(double));
			cache_add(w->cache, w->run_id, w->domain_id, w->layer_id, a, w->channels,
				  k);
		}
		w->since = 0;
	}
	return 0;
}

/* One stored per-step aggregate: pool it into the current step. */
static int walk_row(void *ctx, const struct store_row *row)
{
	struct walk *w = ctx;
	double *m = w->row, *m2 = w->row + w->width;
	size_t i;
	int rc;

	if (w->pending && row->step != w->cur_step) {
		rc = walk_flush(w);
		if (rc != 0)
			return rc;
	}
	/* The blob holds mean[channels] then m2[channels] first. */
	if (store_row_read(w->r, STORE_BLOB_AGG, row->rowid, w->first, w->width, m) < 0 ||
	    store_row_read(w->r, STORE_BLOB_AGG, row->rowid, w->channels + w->first, w->width, m2) <
		    0)
		return -EIO;
	if (!w->pending) {
		memcpy(w->xmean, m, w->width * sizeof(double));
		memcpy(w->xm2, m2, w->width * sizeof(double));
		w->xn = row->n;
		w->cur_step = row->step;
		w->pending = true;
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

static int walk_init(struct walk *w, size_t width)
{
	double *p = malloc(6 * width * sizeof(double));

	if (p == NULL)
		return -ENOMEM;
	w->width = width;
	w->rmean = p;
	w->rvar = p + width;
	w->xmean = p + 2 * width;
	w->xm2 = p + 3 * width;
	w->row = p + 4 * width;
	return 0;
}

/*
 * Set w's state to the latest usable checkpoint at or before `step` (or the
 * initial 0/1) and return the step the replay resumes after.
 */
static int walk_resume(struct walk *w, struct replay_cache *c, int64_t step, int64_t *resume_after)
{
	double *state = NULL;
	size_t i;

	*resume_after = INT64_MIN;
	for (i = 0; i < w->width; i++) {
		w->rmean[i] = 0.0;
		w->rvar[i] = 1.0;
	}
	w->applied = 0;
	if (c == NULL || c->max_bytes == 0 || !w->snapshot_known)
		return 0;
	state = malloc(2 * w->channels * sizeof(double));
	if (state == NULL)
		return -ENOMEM;
	for (;;) {
		struct resume res = cache_lookup(c, w->run_id, w->domain_id, w->layer_id, w->a,
						 w->channels, step, state);
		int late;

		/*
		 * A checkpoint taken by a reader of a newer snapshot (a newer late
		 * write, or past our highest step) is not ours to use.
		 */
		if (!res.found || res.gen > w->gen || res.step > w->max_step)
			break;
		late = store_late_since(w->r, w->run_id, w->domain_id, res.gen, res.step);
		if (late < 0) {
			free(state);
			return late;
		}
		if (late == 0) {
			memcpy(w->rmean, state + w->first, w->width * sizeof(double));
			memcpy(w->rvar, state + w->channels + w->first, w->width * sizeof(double));
			w->applied = res.applied;
			*resume_after = res.step;
			break;
		}
		/* History changed at or before it: this and later checkpoints are stale. */
		cache_invalidate(c, w->run_id, w->domain_id, w->layer_id, w->a, w->channels,
				 res.step);
	}
	free(state);
	return 0;
}

/*
 * Read what this reader's snapshot holds (once, for both resuming and
 * taking checkpoints), resume at the latest usable checkpoint at or before
 * resume_at and replay every step up to `to`; whole-layer walks
 * (take_checkpoints) leave checkpoints on the way.
 */
static int walk_run(struct walk *w, int64_t resume_at, int64_t to, bool take_checkpoints)
{
	struct replay_cache *c = w->cache;
	int64_t after;
	int rc;

	if (c != NULL && c->max_bytes > 0)
		w->snapshot_known =
			store_late_gen(w->r, w->run_id, &w->gen) == 0 &&
			store_latest_step(w->r, w->run_id, w->domain_id, &w->max_step) == 0;
	w->checkpoint = take_checkpoints && w->snapshot_known;
	rc = walk_resume(w, c, resume_at, &after);
	if (rc == 0)
		rc = store_layer_aggs(w->r, w->run_id, w->domain_id, w->layer_id,
				      after == INT64_MIN ? -1 : after, to, walk_row, w);
	if (rc == 0)
		rc = walk_flush(w);
	return rc;
}

int replay_layer(struct replay_cache *c, struct store_reader *r, int64_t run_id, int64_t domain_id,
		 int64_t layer_id, size_t channels, double momentum, int64_t step, double *mean_out,
		 double *var_out, int64_t *applied)
{
	struct walk w = {
		.r = r,
		.channels = channels,
		.first = 0,
		.a = momentum,
		.cache = c,
		.run_id = run_id,
		.domain_id = domain_id,
		.layer_id = layer_id,
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
		.channels = channels,
		.first = channel,
		.a = momentum,
		.cache = c,
		.run_id = run_id,
		.domain_id = domain_id,
		.layer_id = layer_id,
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
