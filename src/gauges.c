/*
 * gauges: the thread that recomputes the drift gauges of the pairs that
 * changed (see gauges.h and docs/DESIGN.md, "Drift gauges").
 *
 * Two sets of pairs: `pending`, filled by gauges_changed() under the lock,
 * and `work`, the thread's own during a pass. A pass swaps them, so that
 * the writer never waits for a computation, only for the lock of an
 * insertion. Each set is a fixed array with an open-addressed index, so
 * that noting a pair costs a hash and a probe or two, and its memory is
 * fixed at start.
 */
#include "gauges.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bnstat/batch.h"
#include "log.h"
#include "metrics.h"
#include "query.h"

#define SLOTS (2 * GAUGES_PENDING_MAX) /* a power of two, at most half full */

struct pair {
	char run[INGEST_NAME_MAX + 1];
	char domain[INGEST_NAME_MAX + 1];
};

struct pair_set {
	struct pair *v; /* [GAUGES_PENDING_MAX] */
	uint32_t *slot; /* [SLOTS]: 0 empty, else index in v + 1 */
	size_t n;
	bool all; /* overflowed, or the start: every stored pair instead of v */
};

struct gauges {
	unsigned interval_ms;
	pthread_mutex_t mu; /* guards pending */
	pthread_cond_t cv;  /* pending gained its first pair, or closing */
	struct pair_set pending, work;
	_Atomic bool closing;
	struct store *store;
	struct store_reader *reader;
	pthread_t thread;
	bool started;
	bool warned_full;  /* metrics_drift_set() refused a pair: said once */
	struct pair *page; /* a page of the walk over every pair, grown as needed */
	size_t page_n, page_cap;
	_Atomic unsigned long long passes, pairs, begun; /* gauges_stats() */
};

static uint32_t pair_hash(const char *run, const char *domain)
{
	uint32_t h = 2166136261u; /* FNV-1a over run, a NUL, domain */
	const char *p;

	for (p = run; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	h *= 16777619u;
	for (p = domain; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return h;
}

static int set_init(struct pair_set *s)
{
	s->v = malloc(GAUGES_PENDING_MAX * sizeof(*s->v));
	s->slot = calloc(SLOTS, sizeof(*s->slot));
	s->n = 0;
	s->all = false;
	return s->v != NULL && s->slot != NULL ? 0 : -ENOMEM;
}

static void set_clear(struct pair_set *s)
{
	if (s->n > 0)
		memset(s->slot, 0, SLOTS * sizeof(*s->slot));
	s->n = 0;
	s->all = false;
}

static void set_free(struct pair_set *s)
{
	free(s->v);
	free(s->slot);
}

/* Add (run, domain) unless present; a full set turns into "all". */
static void set_add(struct pair_set *s, const char *run, const char *domain)
{
	uint32_t i = pair_hash(run, domain) & (SLOTS - 1);

	if (s->all)
		return;
	for (; s->slot[i] != 0; i = (i + 1) & (SLOTS - 1)) {
		const struct pair *p = &s->v[s->slot[i] - 1];

		if (strcmp(p->run, run) == 0 && strcmp(p->domain, domain) == 0)
			return;
	}
	if (s->n == GAUGES_PENDING_MAX) {
		s->all = true;
		return;
	}
	snprintf(s->v[s->n].run, sizeof(s->v[s->n].run), "%s", run);
	snprintf(s->v[s->n].domain, sizeof(s->v[s->n].domain), "%s", domain);
	s->slot[i] = (uint32_t)++s->n;
}

struct gauges *gauges_new(unsigned interval_ms)
{
	struct gauges *g = calloc(1, sizeof(*g));
	pthread_condattr_t ca;

	if (g == NULL)
		return NULL;
	if (set_init(&g->pending) < 0 || set_init(&g->work) < 0) {
		set_free(&g->pending);
		set_free(&g->work);
		free(g);
		return NULL;
	}
	g->interval_ms = interval_ms;
	pthread_mutex_init(&g->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g->cv, &ca);
	pthread_condattr_destroy(&ca);
	return g;
}

void gauges_changed(void *arg, const char *run, const char *domain)
{
	struct gauges *g = arg;
	bool was_empty;

	pthread_mutex_lock(&g->mu);
	was_empty = g->pending.n == 0 && !g->pending.all;
	set_add(&g->pending, run, domain);
	/* only the first pair wakes the thread: during its wait it needs no more */
	if (was_empty)
		pthread_cond_signal(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

/* Recompute one pair and hand its gauges to metrics.c. */
static void recompute(struct gauges *g, const char *run, const char *domain)
{
	char layer[INGEST_LAYER_NAME_MAX + 1];
	unsigned long long epoch = metrics_drift_epoch();
	struct metrics_drift d;
	struct bn_error err;
	int rc;

	bn_error_clear(&err);
	atomic_fetch_add(&g->pairs, 1);
	rc = query_metrics_drift(g->reader, run, domain, &d, layer, sizeof(layer), &err);
	if (rc == -ENOENT) {
		metrics_drift_clear(run, domain); /* deleted meanwhile */
		return;
	}
	if (rc < 0) {
		/* the gauges stay as they were until the pair's next upload */
		log_warn("gauges_failed", "run=%s domain=%s error=\"%s\"", run, domain,
			 err.message);
		return;
	}
	rc = metrics_drift_set(run, domain, epoch, &d);
	if (rc == -EAGAIN) {
		gauges_changed(g, run, domain); /* a run was forgotten meanwhile */
	} else if (rc < 0 && !g->warned_full) {
		log_warn("gauges_full", "run=%s domain=%s pairs=%d error=\"%s\"", run, domain,
			 METRICS_DRIFT_PAIRS, rc == -ENOSPC ? "too many pairs" : "out of memory");
		g->warned_full = true;
	}
}

static void page_add(void *ctx, const char *run, const char *domain)
{
	struct gauges *g = ctx;

	if (g->page_n == g->page_cap) {
		size_t cap = g->page_cap ? 2 * g->page_cap : 64;
		struct pair *p = realloc(g->page, cap * sizeof(*p));

		if (p == NULL)
			return; /* skipped: it comes back with its next upload */
		g->page = p;
		g->page_cap = cap;
	}
	snprintf(g->page[g->page_n].run, sizeof(g->page[0].run), "%s", run);
	snprintf(g->page[g->page_n].domain, sizeof(g->page[0].domain), "%s", domain);
	g->page_n++;
}

/* Every stored pair, a page of runs at a time. */
static void recompute_all(struct gauges *g)
{
	char after[INGEST_NAME_MAX + 1] = "", last[INGEST_NAME_MAX + 1];
	struct bn_error err;
	size_t i;
	int n;

	do {
		g->page_n = 0;
		bn_error_clear(&err);
		n = query_metrics_pairs(g->reader, after, last, page_add, g, &err);
		if (n < 0) {
			log_warn("gauges_failed", "run=* error=\"%s\"", err.message);
			break;
		}
		for (i = 0; i < g->page_n && !atomic_load(&g->closing); i++)
			recompute(g, g->page[i].run, g->page[i].domain);
		memcpy(after, last, sizeof(after));
	} while (n > 0 && !atomic_load(&g->closing));
	free(g->page);
	g->page = NULL;
	g->page_n = g->page_cap = 0;
}

static void add_ms(struct timespec *t, unsigned ms)
{
	t->tv_sec += ms / 1000;
	t->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (t->tv_nsec >= 1000000000L) {
		t->tv_sec++;
		t->tv_nsec -= 1000000000L;
	}
}

static bool before(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void *gauges_main(void *arg)
{
	struct gauges *g = arg;
	struct timespec next = { 0 }, now, end;
	unsigned long long pairs;
	struct pair_set t;
	size_t i;

	pthread_mutex_lock(&g->mu);
	for (;;) {
		while (!atomic_load(&g->closing) && g->pending.n == 0 && !g->pending.all)
			pthread_cond_wait(&g->cv, &g->mu);
		/* at most one pass per interval: what comes meanwhile waits for the next */
		for (;;) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			if (atomic_load(&g->closing) || !before(&now, &next))
				break;
			pthread_cond_timedwait(&g->cv, &g->mu, &next);
		}
		if (atomic_load(&g->closing))
			break;
		t = g->pending;
		g->pending = g->work;
		g->work = t;
		pthread_mutex_unlock(&g->mu);

		next = now;
		add_ms(&next, g->interval_ms);
		atomic_fetch_add(&g->begun, 1); /* before its pairs: see gauges_stats() */
		pairs = atomic_load(&g->pairs);
		if (g->work.all)
			recompute_all(g);
		else
			for (i = 0; i < g->work.n && !atomic_load(&g->closing); i++)
				recompute(g, g->work.v[i].run, g->work.v[i].domain);
		clock_gettime(CLOCK_MONOTONIC, &end);
		log_debug("gauges_pass", "all=%d pairs=%llu ms=%.3f", g->work.all,
			  atomic_load(&g->pairs) - pairs,
			  (double)(end.tv_sec - now.tv_sec) * 1e3 +
				  (double)(end.tv_nsec - now.tv_nsec) / 1e6);
		set_clear(&g->work);
		atomic_fetch_add(&g->passes, 1);
		pthread_mutex_lock(&g->mu);
	}
	pthread_mutex_unlock(&g->mu);
	return NULL;
}

int gauges_start(struct gauges *g, struct store *s, struct bn_error *err)
{
	if (store_reader_get(s, &g->reader, err) < 0)
		return -EIO;
	g->store = s;
	pthread_mutex_lock(&g->mu);
	g->pending.all = true; /* what is stored already */
	pthread_mutex_unlock(&g->mu);
	if (pthread_create(&g->thread, NULL, gauges_main, g) != 0) {
		store_reader_put(s, g->reader);
		g->reader = NULL;
		return bn_error_set(err, 500, BN_E_INTERNAL, NULL,
				    "cannot start the gauges thread");
	}
	g->started = true;
	return 0;
}

void gauges_stop(struct gauges *g)
{
	if (g == NULL || !g->started)
		return;
	pthread_mutex_lock(&g->mu);
	atomic_store(&g->closing, true);
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
	pthread_join(g->thread, NULL);
	g->started = false;
	store_reader_put(g->store, g->reader);
	g->reader = NULL;
}

void gauges_stats(struct gauges *g, struct gauges_stats *st)
{
	st->passes = atomic_load(&g->passes);
	st->pairs = atomic_load(&g->pairs);
	st->begun = atomic_load(&g->begun);
}

void gauges_free(struct gauges *g)
{
	if (g == NULL)
		return;
	gauges_stop(g);
	set_free(&g->pending);
	set_free(&g->work);
	free(g->page);
	pthread_cond_destroy(&g->cv);
	pthread_mutex_destroy(&g->mu);
	free(g);
}
