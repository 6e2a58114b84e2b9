/*
 * replay_cache: the bounded in-memory cache of replay checkpoints, per
 * (run, domain, layer, momentum), evicting the least recently used key
 * first. It only stores and hands out states; whether one is still valid
 * is the walk's question (replay.c, and replay.h for why the answers stay
 * exact). One mutex guards it all: states are copied in and out under it.
 */
#include "replay_private.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* The checkpoints of one key. */
struct entry {
	struct entry *next;
	struct replay_key key;
	struct replay_ckpt *ck; /* sorted by step */
	size_t n_ck, cap_ck;
	uint64_t last_used;
};

struct replay_cache {
	pthread_mutex_t mu;
	struct entry *head;
	size_t max_bytes; /* set once at creation: read without the lock */
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

bool replay_cache_enabled(const struct replay_cache *c)
{
	return c != NULL && c->max_bytes > 0;
}

static size_t ckpt_bytes(size_t channels)
{
	return 2 * channels * sizeof(double) + sizeof(struct replay_ckpt);
}

/* Drop the checkpoints of e from index i on. Caller holds c->mu. */
static void entry_truncate(struct replay_cache *c, struct entry *e, size_t i)
{
	size_t j;

	for (j = i; j < e->n_ck; j++) {
		free(e->ck[j].state);
		c->used -= ckpt_bytes(e->key.channels);
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

static bool key_equal(const struct replay_key *a, const struct replay_key *b)
{
	return a->run_id == b->run_id && a->domain_id == b->domain_id &&
	       a->layer_id == b->layer_id && a->momentum == b->momentum &&
	       a->channels == b->channels;
}

/* Caller holds c->mu. */
static struct entry *entry_find(struct replay_cache *c, const struct replay_key *key)
{
	struct entry *e;

	for (e = c->head; e != NULL; e = e->next)
		if (key_equal(&e->key, key))
			return e;
	return NULL;
}

struct replay_resume replay_cache_lookup(struct replay_cache *c, const struct replay_key *key,
					 int64_t step, double *state)
{
	struct replay_resume res = { 0 };
	struct entry *e;
	size_t i;

	pthread_mutex_lock(&c->mu);
	e = entry_find(c, key);
	if (e != NULL) {
		e->last_used = ++c->clock;
		for (i = e->n_ck; i > 0; i--) {
			if (e->ck[i - 1].step <= step) {
				const struct replay_ckpt *k = &e->ck[i - 1];

				memcpy(state, k->state, 2 * key->channels * sizeof(double));
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

void replay_cache_invalidate(struct replay_cache *c, const struct replay_key *key, int64_t step)
{
	struct entry *e;
	size_t i;

	pthread_mutex_lock(&c->mu);
	e = entry_find(c, key);
	if (e != NULL) {
		for (i = 0; i < e->n_ck && e->ck[i].step < step; i++)
			;
		entry_truncate(c, e, i);
	}
	pthread_mutex_unlock(&c->mu);
}

/* Evict least recently used entries until the cache fits. Caller holds c->mu.
 */
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
			c->used -= ckpt_bytes(e->key.channels);
			c->n_ckpts--;
			continue;
		} else {
			struct entry *v = *victim;

			*victim = v->next;
			entry_free(c, v);
		}
	}
}

void replay_cache_add(struct replay_cache *c, const struct replay_key *key, struct replay_ckpt k)
{
	struct entry *e;
	size_t i;

	if (c->max_bytes < ckpt_bytes(key->channels)) {
		free(k.state);
		return;
	}
	pthread_mutex_lock(&c->mu);
	e = entry_find(c, key);
	if (e == NULL) {
		e = calloc(1, sizeof(*e));
		if (e == NULL)
			goto drop;
		e->key = *key;
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
		struct replay_ckpt *p = realloc(e->ck, cap * sizeof(*p));

		if (p == NULL)
			goto drop;
		e->ck = p;
		e->cap_ck = cap;
	}
	memmove(e->ck + i + 1, e->ck + i, (e->n_ck - i) * sizeof(*e->ck));
	e->ck[i] = k;
	e->n_ck++;
	c->used += ckpt_bytes(key->channels);
	c->n_ckpts++;
	cache_evict(c, e);
	pthread_mutex_unlock(&c->mu);
	return;
drop:
	pthread_mutex_unlock(&c->mu);
	free(k.state);
}
