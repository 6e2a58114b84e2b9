/*
 * replay_private: what the walk (replay.c) asks of the checkpoint cache
 * (replay_cache.c), and nothing outside the replay may see.
 */
#ifndef BNSTAT_REPLAY_PRIVATE_H
#define BNSTAT_REPLAY_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "replay.h"

/* What a checkpoint is the replay state of. */
struct replay_key {
	int64_t run_id, domain_id, layer_id;
	double momentum;
	size_t channels;
};

/* One replay state, taken after a step with data. */
struct replay_ckpt {
	int64_t step;
	int64_t gen;	 /* newest late write seen when it was taken */
	int64_t applied; /* steps with data replayed up to here */
	double *state;	 /* [2 * channels]: mean, then var */
};

/* A checkpoint found for resuming, copied out of the cache. */
struct replay_resume {
	bool found;
	int64_t step, gen, applied;
};

/* Does c keep checkpoints at all (not NULL, a budget above 0)? */
bool replay_cache_enabled(const struct replay_cache *c);

/*
 * Copy the latest checkpoint of key at or before `step` into state (2 *
 * channels doubles, the caller's) and say where it was taken. Any thread.
 */
struct replay_resume replay_cache_lookup(struct replay_cache *c, const struct replay_key *key,
					 int64_t step, double *state);

/* Forget every checkpoint of key at or after `step`. Any thread. */
void replay_cache_invalidate(struct replay_cache *c, const struct replay_key *key, int64_t step);

/*
 * Keep checkpoint k of key: the cache takes over k.state (a malloc'ed
 * block), or frees it when it does not keep it. May evict the least
 * recently used checkpoints to stay within budget. Any thread.
 */
void replay_cache_add(struct replay_cache *c, const struct replay_key *key, struct replay_ckpt k);

#endif
