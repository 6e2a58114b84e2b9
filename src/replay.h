/*
 * replay: the simulated EMA, with its replay states cached.
 *
 * Files: replay.c (the walk), replay_cache.c (the checkpoint cache),
 * replay_private.h (what the one asks of the other).
 *
 * The simulated EMA replays a layer's per-step pooled batch statistics in
 * step order with PyTorch's update r <- (1-a)*r + a*x (x the pooled mean
 * and the pooled unbiased variance M2/(n-1)), from mean 0 and variance 1
 * before the first step with data. Replaying a long run for every query
 * would read every step's arrays, so the states reached on the way are kept
 * as checkpoints, per (run, domain, layer, momentum), every
 * REPLAY_CHECKPOINT_EVERY steps with data; a query resumes from the latest
 * valid checkpoint at or before its step.
 *
 * Exactness: a checkpoint stays valid only while no batch has landed at or
 * before its step since it was taken. The store logs every batch that lands
 * below the run's highest step (a "late write") in the same transaction as
 * its data, and a checkpoint is checked against that log inside the
 * reader's transaction before use; checkpoints are only taken below the
 * highest step, so the ordinary in-order upload never invalidates one. A
 * resumed replay performs the very same floating-point operations as a
 * full one, so the answer is bit-identical.
 *
 * Buckets (docs/API.md, "History"): a bucket row stands for many steps.
 * For the momenta the store keeps (sim_momenta) the replay state at each
 * bucket end was computed from the per-step rows before they were merged;
 * the walk takes it from the store, and resumes from the latest such state
 * at or before its start, so the answer stays the full replay's. For any
 * other momentum, or domain "*", a bucket is applied as one step of its
 * pooled statistics and the walk reports a bound: 1 right after such a
 * bucket, times (1 - momentum) per exact step after it — the weight the
 * approximate history still has in the state. Checkpoints are taken only
 * where that bound is 0, and one that a bucket later covered is dropped.
 */
#ifndef BNSTAT_REPLAY_H
#define BNSTAT_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define REPLAY_CHECKPOINT_EVERY 64

struct replay_cache;

/*
 * A cache of at most max_bytes of checkpoint states (0: no caching), or
 * NULL when out of memory. A new cache the caller owns and releases with
 * replay_cache_free(). Thread-safe: any number of threads may replay
 * through it at once.
 */
struct replay_cache *replay_cache_new(size_t max_bytes);

/*
 * Free the cache and every checkpoint it holds; NULL is fine. The caller
 * must be its owner and the last user: no replay through c may be running
 * or start afterwards.
 */
void replay_cache_free(struct replay_cache *c);

/*
 * The simulated EMA of every channel of a layer after step `step` with
 * momentum a in (0, 1], in domain domain_id (< 0: all domains pooled per
 * step), into mean_out/var_out (channels doubles each, the caller's).
 * Runs inside the caller's read transaction on r, on the thread that
 * holds r; c may be NULL (no caching) and is borrowed. *applied receives the
 * number of steps with data replayed from the start of the run (0: no data
 * at or before `step`; the outputs are then the initial 0 and 1), *bound
 * the share of the answer's weight that comes from buckets replayed as one
 * step each (0: exact; see "Buckets" above). Returns 0 or a negative errno.
 */
int replay_layer(struct replay_cache *c, struct store_reader *r, int64_t run_id, int64_t domain_id,
		 int64_t layer_id, size_t channels, double momentum, int64_t step, double *mean_out,
		 double *var_out, int64_t *applied, double *bound);

/*
 * The simulated EMA of one channel at every step with data in
 * (from_excl, to], handed to fn(ctx, step, mean, var, bound) in step order, on
 * the caller's thread; a nonzero return from fn stops the walk and is
 * returned. Resumes from a cached checkpoint before from_excl when one is
 * valid; takes none (only whole-layer replays do). Runs inside the
 * caller's read transaction on r, as replay_layer() does. Returns 0, fn's
 * nonzero value or a negative errno.
 */
typedef int (*replay_point_fn)(void *ctx, int64_t step, double mean, double var, double bound);
int replay_channel(struct replay_cache *c, struct store_reader *r, int64_t run_id,
		   int64_t domain_id, int64_t layer_id, size_t channels, size_t channel,
		   double momentum, int64_t from_excl, int64_t to, replay_point_fn fn, void *ctx);

/*
 * The simulated EMA of every channel of a layer at every step with data in
 * (from_excl, to], handed to fn(ctx, step, mean, var, bound) in step order
 * (mean and var: channels doubles each, borrowed for the call), on the
 * caller's thread; otherwise as replay_channel().
 */
typedef int (*replay_state_fn)(void *ctx, int64_t step, const double *mean, const double *var,
			       double bound);
int replay_layer_steps(struct replay_cache *c, struct store_reader *r, int64_t run_id,
		       int64_t domain_id, int64_t layer_id, size_t channels, double momentum,
		       int64_t from_excl, int64_t to, replay_state_fn fn, void *ctx);

/*
 * One step of one layer in a walk over several momenta
 * (replay_layers_momenta): the
 * step's pooled statistics and every momentum's state after it. Every
 * array is the walk's, borrowed for the call.
 */
struct replay_step {
	int64_t step;
	int64_t n;		       /* elements per channel pooled at the step */
	const double *mean;	       /* [channels] pooled mean */
	const double *m2;	       /* [channels] pooled sum of squared deviations */
	const double *const *ema_mean; /* [momenta][channels] the simulated EMA after the step */
	const double *const *ema_var;
	const double *bound; /* [momenta] as replay_layer()'s bound */
};
typedef int (*replay_steps_fn)(void *ctx, size_t layer, const struct replay_step *st);

/*
 * The simulated EMA of every channel of n_layers layers (layer_ids, with
 * channels[] channels each) at n_momenta momenta at once, over one read
 * of the rows in step order (each page of the range read once): every
 * step with data in (rows_after, to] of each layer is handed to fn(ctx,
 * layer, st), layer the index into layer_ids, in step order (then by
 * layer id), on the caller's thread, with the step's pooled statistics
 * (all domains pooled when domain_id < 0) and each momentum's state after
 * it. Each (layer, momentum) resumes from its own latest checkpoint at or
 * before from_excl (cached, or kept by the store), so the states are
 * exact — the full replay's, as replay_layer() gives — at every step after
 * from_excl; at steps up to from_excl a momentum may still hold its
 * checkpoint. Leaves no checkpoints (it would leave one for every layer
 * and momentum). A nonzero
 * return from fn stops the walk and is returned. Memory: a few arrays of
 * channels doubles per layer and momentum, whatever the range. Runs inside
 * the caller's read transaction on r. Returns 0, fn's value or a negative
 * errno.
 */
int replay_layers_momenta(struct replay_cache *c, struct store_reader *r, int64_t run_id,
			  int64_t domain_id, size_t n_layers, const int64_t *layer_ids,
			  const size_t *channels, const double *momenta, size_t n_momenta,
			  int64_t from_excl, int64_t rows_after, int64_t to, replay_steps_fn fn,
			  void *ctx);

/* Checkpoints held and bytes used, for metrics and tests. Any thread. */
void replay_cache_usage(struct replay_cache *c, size_t *checkpoints, size_t *bytes);

#endif
