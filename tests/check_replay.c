/*
 * check_replay: the simulated EMA (src/replay.c) on a real store, with and
 * without its cache of replay checkpoints.
 *
 * Every test fills a fresh store with a long run (about 400 steps, two
 * domains, several workers per step, gaps) through ingest_decode_json() and
 * store_submit(), like a worker would, and then asks replay_layer() and
 * replay_channel() for the EMA:
 *
 *  - with a cache and without one (NULL, or a cache of 0 bytes) the answers
 *    are the same bits (memcmp), at every step, in any order of queries,
 *    with any cache budget (evictions included);
 *  - checkpoints are taken on long replays and are really used;
 *  - a late write (a batch below the latest step, into a step with or
 *    without data) invalidates them: the answers are still the bits of a
 *    replay without cache, and they did change;
 *  - the values equal an independent reference: per-step pooling in long
 *    double with plain two-pass formulas, then r = a*x + (1-a)*r from 0/1
 *    over the steps with data; domain -1 pools the domains of a step.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bnstat/ingest.h"
#include "bnstat/stats.h"
#include "replay.h"
#include "store.h"
#include "store_testutil.h"

#define C 5	    /* channels of both layers */
#define MAXSTEP 420 /* steps 0 .. MAXSTEP-1 */
#define N_LAYERS 2
#define N_DOMS 2
#define BIG_CACHE ((size_t)64 << 20)

static const char *const layer_names[N_LAYERS] = { "bn", "other" };
static const char *const dom_names[N_DOMS] = { "a", "b" };

static char dir[256];
static char dbpath[300];

/* --- deterministic data ------------------------------------------------------ */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double rng_unit(void)
{
	return ((double)(rng_next() >> 11) + 0.5) / 9007199254740992.0;
}

/* One layer of one uploaded batch, as the reference sees it. */
struct gb {
	int dom, layer, step;
	int64_t count;
	int biased;
	double mean[C], var[C];
};

static struct gb *gbs;
static size_t n_gbs, cap_gbs;

/* Per (domain or all, layer, step): pooled statistics of the step. */
struct pooled {
	int64_t n;
	long double mean[C], m2[C];
};
static struct pooled pool[N_DOMS + 1][N_LAYERS][MAXSTEP + 8];

static void setup(void)
{
	tu_tmpdir_make(dir, sizeof(dir), dbpath, sizeof(dbpath), "check_replay");
	free(gbs);
	gbs = NULL;
	n_gbs = cap_gbs = 0;
}

static void teardown(void)
{
	tu_tmpdir_remove(dir);
}

/* --- submitting batches ---------------------------------------------------------- */

/* Submitted but not yet waited for (the writer holds pointers into it). */
#define MAX_PENDING 256
static struct outcome pending[MAX_PENDING];
static size_t n_pending;

static void wait_all(void);

static void submit_json(struct store *s, const char *json)
{
	struct outcome *o;

	if (n_pending == MAX_PENDING)
		wait_all();
	o = &pending[n_pending++];
	outcome_init(o);
	ck_assert_int_eq(store_submit(s, decode(json), on_done, o), 0);
}

static void wait_all(void)
{
	size_t i;

	for (i = 0; i < n_pending; i++) {
		struct outcome *o = &pending[i];

		outcome_wait(o);
		ck_assert_msg(o->res.status == 200 && !o->res.duplicate,
			      "batch %zu: status %d (%s)", i, o->res.status, o->res.err.message);
	}
	n_pending = 0;
}

static void add_gb(const struct gb *g)
{
	if (n_gbs == cap_gbs) {
		cap_gbs = cap_gbs ? 2 * cap_gbs : 1024;
		gbs = realloc(gbs, cap_gbs * sizeof(*gbs));
		ck_assert_ptr_nonnull(gbs);
	}
	gbs[n_gbs++] = *g;
}

static size_t append_array(char *p, size_t room, const double *v)
{
	size_t n = 0;
	int c;

	n += (size_t)snprintf(p + n, room - n, "[");
	for (c = 0; c < C; c++)
		n += (size_t)snprintf(p + n, room - n, "%s%.17g", c ? "," : "", v[c]);
	n += (size_t)snprintf(p + n, room - n, "]");
	return n;
}

/*
 * Make one batch of domain dom at step: random counts, means drifting with
 * the step, unbiased or biased variances; layers[l] says whether layer l is
 * in it (count 0 when it is but unused: want_unused[l]). Queues it and
 * records it for the reference.
 */
static void make_batch(struct store *s, int dom, const char *worker, int step, int seq,
		       const bool *layers, const bool *unused)
{
	char json[4096];
	size_t n = 0, room = sizeof(json);
	int biased = rng_unit() < 0.25;
	int l, c, first = 1;

	n += (size_t)snprintf(
		json + n, room - n,
		"{\"worker\":\"%s\",\"step\":%d,\"seq\":%d,\"domain\":\"%s\",%s\"layers\":{",
		worker, step, seq, dom_names[dom], biased ? "\"var_kind\":\"biased\"," : "");
	for (l = 0; l < N_LAYERS; l++) {
		struct gb g = { .dom = dom, .layer = l, .step = step, .biased = biased };
		static const int64_t counts[] = { 2, 3, 7, 64, 500, 4096, 100000 };

		if (!layers[l])
			continue;
		n += (size_t)snprintf(json + n, room - n, "%s\"%s\":", first ? "" : ",",
				      layer_names[l]);
		first = 0;
		if (unused[l]) {
			n += (size_t)snprintf(json + n, room - n, "{\"count\":0}");
			continue;
		}
		g.count = counts[rng_next() % 7];
		for (c = 0; c < C; c++) {
			double mu = 1.0 + c + 0.01 * step + (dom == 1 ? 2.5 : 0.0) + 3.0 * l;
			double sig = 0.1 + 0.4 * c;

			g.mean[c] = mu + sig * (rng_unit() - 0.5) / sqrt((double)g.count);
			g.var[c] = sig * sig * (0.5 + rng_unit());
		}
		n += (size_t)snprintf(json + n, room - n,
				      "{\"count\":%lld,\"mean\":", (long long)g.count);
		n += append_array(json + n, room - n, g.mean);
		n += (size_t)snprintf(json + n, room - n, ",\"var\":");
		n += append_array(json + n, room - n, g.var);
		n += (size_t)snprintf(json + n, room - n, "}");
		add_gb(&g);
	}
	n += (size_t)snprintf(json + n, room - n, "}}");
	ck_assert_uint_lt(n, room);
	submit_json(s, json);
}

/* Domain a: steps without s % 13 == 7 and 200..209. Domain b: s % 3 == 1, s < 380. */
static bool has_a(int s)
{
	return s % 13 != 7 && !(s >= 200 && s < 210);
}

static bool has_b(int s)
{
	return s % 3 == 1 && s < 380;
}

static void fill_run(struct store *s, uint64_t seed)
{
	static const bool both[N_LAYERS] = { true, true }, bn_only[N_LAYERS] = { true, false };
	int step;

	rng_state = seed;
	for (step = 0; step < MAXSTEP; step++) {
		bool unused[N_LAYERS] = { false, step % 17 == 3 };
		bool none[N_LAYERS] = { false, false };

		if (has_a(step)) {
			make_batch(s, 0, "w0", step, 0, both, unused);
			if (step % 5 == 0)
				make_batch(s, 0, "w0", step, 1, both, none);
			if (rng_unit() < 0.5)
				make_batch(s, 0, "w1", step, 0, both, unused);
		}
		if (has_b(step))
			make_batch(s, 1, "w0", step, 0, bn_only, none);
	}
	wait_all();
}

/* --- the reference -------------------------------------------------------------------- */

/* Pool every recorded batch per (domain, layer, step) and per (all, layer, step). */
static void build_pool(void)
{
	int d, l, s, c;
	size_t i;

	memset(pool, 0, sizeof(pool));
	for (d = 0; d <= N_DOMS; d++) {
		for (l = 0; l < N_LAYERS; l++) {
			for (s = 0; s < MAXSTEP + 8; s++) {
				struct pooled *p = &pool[d][l][s];
				long double sum[C] = { 0 };

				/* two passes: the mean, then M2 around it */
				for (i = 0; i < n_gbs; i++) {
					const struct gb *g = &gbs[i];

					if (g->layer != l || g->step != s ||
					    (d < N_DOMS && g->dom != d))
						continue;
					p->n += g->count;
					for (c = 0; c < C; c++)
						sum[c] += (long double)g->count * g->mean[c];
				}
				if (p->n == 0)
					continue;
				for (c = 0; c < C; c++)
					p->mean[c] = sum[c] / p->n;
				for (i = 0; i < n_gbs; i++) {
					const struct gb *g = &gbs[i];

					if (g->layer != l || g->step != s ||
					    (d < N_DOMS && g->dom != d))
						continue;
					for (c = 0; c < C; c++) {
						long double dm = g->mean[c] - p->mean[c];
						long double m2b =
							(long double)g->var[c] *
							(g->biased ? g->count : g->count - 1);

						p->m2[c] += m2b + g->count * dm * dm;
					}
				}
			}
		}
	}
}

/* The EMA after `step`: dom_idx N_DOMS means all domains. */
static int64_t ref_replay(int dom_idx, int layer, double a, int64_t step, double *mean, double *var)
{
	int64_t s, applied = 0;
	int c;

	for (c = 0; c < C; c++) {
		mean[c] = 0.0;
		var[c] = 1.0;
	}
	for (s = 0; s <= step && s < MAXSTEP + 8; s++) {
		const struct pooled *p = &pool[dom_idx][layer][s];

		if (p->n == 0)
			continue;
		for (c = 0; c < C; c++) {
			double x = (double)p->mean[c];
			double xv = (double)(p->m2[c] / (p->n - 1));

			mean[c] = a * x + (1.0 - a) * mean[c];
			var[c] = a * xv + (1.0 - a) * var[c];
		}
		applied++;
	}
	return applied;
}

/* --- the store side -------------------------------------------------------------------- */

static struct store *open_store(void)
{
	struct store *s = NULL;
	struct bn_error err;

	if (store_open(dbpath, NULL, &s, &err) < 0)
		ck_abort_msg("store_open: %s", err.message);
	return s;
}

struct ids {
	int64_t run, dom[N_DOMS + 1], layer[N_LAYERS];
};

static struct ids lookup_ids(struct store_reader *r)
{
	struct ids ids;
	size_t ch;
	int i;

	ck_assert_int_eq(store_run_find(r, "r1", &ids.run), 0);
	for (i = 0; i < N_DOMS; i++)
		ck_assert_int_eq(store_domain_find(r, ids.run, dom_names[i], &ids.dom[i]), 0);
	ids.dom[N_DOMS] = -1;
	for (i = 0; i < N_LAYERS; i++) {
		ck_assert_int_eq(store_layer_find(r, ids.run, layer_names[i], &ids.layer[i], &ch),
				 0);
		ck_assert_uint_eq(ch, C);
	}
	return ids;
}

struct ema {
	double mean[C], var[C];
	int64_t applied;
};

static struct ema replay(struct replay_cache *cache, struct store_reader *r, const struct ids *ids,
			 int d, int l, double a, int64_t step)
{
	struct ema e;

	memset(&e, 0xa5, sizeof(e)); /* every byte must be written */
	ck_assert_int_eq(replay_layer(cache, r, ids->run, ids->dom[d], ids->layer[l], C, a, step,
				      e.mean, e.var, &e.applied),
			 0);
	return e;
}

static void assert_same_bits(const struct ema *x, const struct ema *y, const char *what, int d,
			     int l, double a, int64_t step)
{
	ck_assert_msg(memcmp(x->mean, y->mean, sizeof(x->mean)) == 0 &&
			      memcmp(x->var, y->var, sizeof(x->var)) == 0 &&
			      x->applied == y->applied,
		      "%s: domain %d layer %d momentum %g step %lld: mean[0] %.17g vs %.17g, "
		      "var[0] %.17g vs %.17g, applied %lld vs %lld",
		      what, d, l, a, (long long)step, x->mean[0], y->mean[0], x->var[0], y->var[0],
		      (long long)x->applied, (long long)y->applied);
}

static void assert_matches_ref(const struct ema *e, int d, int l, double a, int64_t step)
{
	double m[C], v[C];
	int64_t applied = ref_replay(d, l, a, step, m, v);
	int c;

	ck_assert_msg(e->applied == applied,
		      "domain %d layer %d step %lld: applied %lld, want %lld", d, l,
		      (long long)step, (long long)e->applied, (long long)applied);
	for (c = 0; c < C; c++) {
		ck_assert_msg(fabs(e->mean[c] - m[c]) <= 1e-12 * fabs(m[c]) &&
				      fabs(e->var[c] - v[c]) <= 1e-12 * fabs(v[c]),
			      "domain %d layer %d momentum %g step %lld channel %d: mean %.17g "
			      "want %.17g, "
			      "var %.17g want %.17g",
			      d, l, a, (long long)step, c, e->mean[c], m[c], e->var[c], v[c]);
	}
}

static size_t n_checkpoints(struct replay_cache *c)
{
	size_t n, bytes;

	replay_cache_usage(c, &n, &bytes);
	return n;
}

/*
 * Query (d, l, a) at the given steps with cache `c`, and check each answer
 * against a replay without cache (NULL and a 0-byte cache) bit for bit and
 * against the reference. The caller holds a read transaction on r.
 */
static void check_steps(struct replay_cache *c, struct replay_cache *zero, struct store_reader *r,
			const struct ids *ids, int d, int l, double a, const int64_t *steps,
			size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		struct ema with = replay(c, r, ids, d, l, a, steps[i]);
		struct ema none = replay(NULL, r, ids, d, l, a, steps[i]);
		struct ema z = replay(zero, r, ids, d, l, a, steps[i]);

		assert_same_bits(&with, &none, "cache vs NULL", d, l, a, steps[i]);
		assert_same_bits(&z, &none, "0-byte cache vs NULL", d, l, a, steps[i]);
		assert_matches_ref(&none, d, l, a, steps[i]);
	}
}

/* The steps 0..MAXSTEP+5 in a scrambled order, and a few fixed ones. */
static int64_t all_steps[MAXSTEP + 6];
static const int64_t some_steps[] = { MAXSTEP + 5, MAXSTEP - 1, 64,  63,  65,  128, 129,
				      300,	   205,		199, 0,	  1,   7,   10,
				      250,	   383,		384, 385, 127, 192, 256 };
#define N_SOME (sizeof(some_steps) / sizeof(some_steps[0]))

static void scramble_steps(uint64_t seed)
{
	size_t i, n = MAXSTEP + 6;

	for (i = 0; i < n; i++)
		all_steps[i] = (int64_t)i;
	rng_state = seed;
	for (i = n - 1; i > 0; i--) {
		size_t j = rng_next() % (i + 1);
		int64_t t = all_steps[i];

		all_steps[i] = all_steps[j];
		all_steps[j] = t;
	}
}

/* --- tests ------------------------------------------------------------------------------ */

START_TEST(test_cache_equals_no_cache_bitwise)
{
	static const double momenta[] = { 0.1, 0.01, 1.0, 0.37 };
	struct store *s = open_store();
	struct replay_cache *c = replay_cache_new(BIG_CACHE), *zero = replay_cache_new(0);
	struct store_reader *r;
	struct bn_error err;
	struct ids ids;
	size_t mi, before;
	int d, l;

	fill_run(s, 1);
	build_pool();
	scramble_steps(7);
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	store_read_begin(r);
	ids = lookup_ids(r);

	/* a long replay takes checkpoints (about one per 64 steps with data) */
	ck_assert_uint_eq(n_checkpoints(c), 0);
	check_steps(c, zero, r, &ids, 0, 0, 0.1, some_steps, 1);
	ck_assert_uint_ge(n_checkpoints(c), 4);
	ck_assert_uint_eq(n_checkpoints(zero), 0);
	/* the same replay again adds none */
	before = n_checkpoints(c);
	check_steps(c, zero, r, &ids, 0, 0, 0.1, some_steps, 1);
	ck_assert_uint_eq(n_checkpoints(c), before);

	for (mi = 0; mi < sizeof(momenta) / sizeof(momenta[0]); mi++)
		for (d = 0; d <= N_DOMS; d++)
			for (l = 0; l < N_LAYERS; l++) {
				if (d == 1 && l == 1)
					continue; /* no data: checked below */
				check_steps(c, zero, r, &ids, d, l, momenta[mi], some_steps,
					    N_SOME);
			}
	/* every step, in a scrambled order, for one key per domain */
	check_steps(c, zero, r, &ids, 0, 0, 0.1, all_steps, MAXSTEP + 6);
	check_steps(c, zero, r, &ids, N_DOMS, 1, 0.01, all_steps, MAXSTEP + 6);
	check_steps(c, zero, r, &ids, 1, 0, 0.5, all_steps, MAXSTEP + 6);
	ck_assert_uint_ge(n_checkpoints(c), 20);

	/* a layer without data in a domain: nothing applied, the initial 0 and 1 */
	{
		struct ema e = replay(c, r, &ids, 1, 1, 0.1, MAXSTEP);
		int ch;

		ck_assert_int_eq(e.applied, 0);
		for (ch = 0; ch < C; ch++)
			ck_assert(e.mean[ch] == 0.0 && e.var[ch] == 1.0);
	}
	store_read_end(r);
	store_reader_put(s, r);
	replay_cache_free(c);
	replay_cache_free(zero);
	store_close(s);
}
END_TEST

/* Every point of replay_channel equals replay_layer at that step, bit for bit. */
struct points {
	int64_t step[MAXSTEP + 8];
	double mean[MAXSTEP + 8], var[MAXSTEP + 8];
	size_t n;
};

static int collect_point(void *ctx, int64_t step, double mean, double var)
{
	struct points *p = ctx;

	ck_assert_uint_lt(p->n, MAXSTEP + 8);
	if (p->n > 0)
		ck_assert_int_gt(step, p->step[p->n - 1]);
	p->step[p->n] = step;
	p->mean[p->n] = mean;
	p->var[p->n] = var;
	p->n++;
	return 0;
}

static void check_channel(struct replay_cache *c, struct store_reader *r, const struct ids *ids,
			  int d, int l, double a, int ch, int64_t from_excl, int64_t to)
{
	struct points *p = calloc(1, sizeof(*p));
	int64_t s;
	size_t k = 0;

	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(replay_channel(c, r, ids->run, ids->dom[d], ids->layer[l], C, (size_t)ch,
					a, from_excl, to, collect_point, p),
			 0);
	for (s = from_excl + 1; s <= to && s < MAXSTEP + 8; s++) {
		struct ema e;

		if (s < 0 || pool[d][l][s].n == 0)
			continue;
		ck_assert_msg(k < p->n && p->step[k] == s,
			      "replay_channel domain %d layer %d (%lld, %lld]: step %lld missing",
			      d, l, (long long)from_excl, (long long)to, (long long)s);
		e = replay(NULL, r, ids, d, l, a, s);
		ck_assert_msg(
			memcmp(&p->mean[k], &e.mean[ch], sizeof(double)) == 0 &&
				memcmp(&p->var[k], &e.var[ch], sizeof(double)) == 0,
			"replay_channel domain %d layer %d channel %d step %lld: %.17g/%.17g, "
			"replay_layer %.17g/%.17g",
			d, l, ch, (long long)s, p->mean[k], p->var[k], e.mean[ch], e.var[ch]);
		k++;
	}
	ck_assert_uint_eq(k, p->n);
	free(p);
}

START_TEST(test_channel_walk_equals_layer_walk)
{
	struct store *s = open_store();
	struct replay_cache *c = replay_cache_new(BIG_CACHE);
	struct store_reader *r;
	struct bn_error err;
	struct ids ids;
	int d;

	fill_run(s, 2);
	build_pool();
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	store_read_begin(r);
	ids = lookup_ids(r);
	for (d = 0; d <= N_DOMS; d++) {
		/* cold, then with the checkpoints a layer replay leaves */
		check_channel(c, r, &ids, d, 0, 0.1, 3, -1, MAXSTEP);
		replay(c, r, &ids, d, 0, 0.1, MAXSTEP);
		check_channel(c, r, &ids, d, 0, 0.1, 3, -1, MAXSTEP);
		check_channel(c, r, &ids, d, 0, 0.1, 0, 150, 300);
		check_channel(c, r, &ids, d, 0, 0.1, 4, 64, 65);
		check_channel(c, r, &ids, d, 0, 0.1, 1, 299, MAXSTEP + 3);
		check_channel(NULL, r, &ids, d, 0, 0.1, 2, 100, 390);
	}
	ck_assert_uint_gt(n_checkpoints(c), 0);
	store_read_end(r);
	store_reader_put(s, r);
	replay_cache_free(c);
	store_close(s);
}
END_TEST

/*
 * The checkpoints are really used: rewrite an early aggregate behind the
 * store's back (no late-write record), and a cached replay past the first
 * checkpoint still gives the old answer while a fresh one sees the change.
 * (This is fault injection to observe the cache; the store never does it.)
 */
START_TEST(test_checkpoints_are_used)
{
	struct store *s = open_store();
	struct replay_cache *c = replay_cache_new(BIG_CACHE);
	struct store_reader *r;
	struct bn_error err;
	struct ids ids;
	struct ema cached_before, cached_after, fresh_after, low_cached, low_fresh;
	sqlite3 *db;

	fill_run(s, 3);
	build_pool();
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	store_read_begin(r);
	ids = lookup_ids(r);
	cached_before = replay(c, r, &ids, 0, 0, 0.01, MAXSTEP);
	store_read_end(r);
	ck_assert_uint_ge(n_checkpoints(c), 4);

	/* mean[0] of domain a, layer bn, step 2: +1000 */
	ck_assert_int_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 10000);
	{
		sqlite3_stmt *st;
		double v;
		const void *blob;
		int bytes;
		void *copy;

		ck_assert_int_eq(
			sqlite3_prepare_v2(db,
					   "SELECT id, data FROM aggs WHERE run_id = ?1 "
					   "AND domain_id = ?2 AND layer_id = ?3 AND step = 2",
					   -1, &st, NULL),
			SQLITE_OK);
		sqlite3_bind_int64(st, 1, ids.run);
		sqlite3_bind_int64(st, 2, ids.dom[0]);
		sqlite3_bind_int64(st, 3, ids.layer[0]);
		ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
		{
			int64_t id = sqlite3_column_int64(st, 0);
			sqlite3_stmt *up;

			blob = sqlite3_column_blob(st, 1);
			bytes = sqlite3_column_bytes(st, 1);
			ck_assert_int_eq(bytes, (int)(STATS_AGG_ARRAYS * C * sizeof(double)));
			copy = malloc((size_t)bytes);
			memcpy(copy, blob, (size_t)bytes);
			memcpy(&v, copy, sizeof(v));
			v += 1000.0;
			memcpy(copy, &v, sizeof(v));
			sqlite3_finalize(st);
			ck_assert_int_eq(
				sqlite3_prepare_v2(db, "UPDATE aggs SET data = ?1 WHERE id = ?2",
						   -1, &up, NULL),
				SQLITE_OK);
			sqlite3_bind_blob(up, 1, copy, bytes, free);
			sqlite3_bind_int64(up, 2, id);
			ck_assert_int_eq(sqlite3_step(up), SQLITE_DONE);
			sqlite3_finalize(up);
		}
	}
	sqlite3_close(db);

	store_read_begin(r);
	cached_after = replay(c, r, &ids, 0, 0, 0.01, MAXSTEP);
	fresh_after = replay(NULL, r, &ids, 0, 0, 0.01, MAXSTEP);
	low_cached = replay(c, r, &ids, 0, 0, 0.01, 40);
	low_fresh = replay(NULL, r, &ids, 0, 0, 0.01, 40);
	store_read_end(r);
	/* resumed from a checkpoint taken before the change: the old bits */
	assert_same_bits(&cached_after, &cached_before, "resumed from a checkpoint", 0, 0, 0.01,
			 MAXSTEP);
	ck_assert(memcmp(fresh_after.mean, cached_before.mean, sizeof(fresh_after.mean)) != 0);
	/* (a step below the first checkpoint has nothing to resume from) */
	if (n_checkpoints(c) > 0 && 40 < REPLAY_CHECKPOINT_EVERY)
		assert_same_bits(&low_cached, &low_fresh, "below the first checkpoint", 0, 0, 0.01,
				 40);
	store_reader_put(s, r);
	replay_cache_free(c);
	store_close(s);
}
END_TEST

/* Batches below the latest step invalidate the checkpoints at or after them. */
START_TEST(test_late_writes_invalidate)
{
	static const struct {
		int dom, step;
		const char *worker;
	} late[] = {
		{ 0, 10, "late0" },  /* an old step with data, before every checkpoint */
		{ 0, 7, "late1" },   /* a step that had no data (7 % 13 == 7) */
		{ 0, 205, "late2" }, /* a gap step between checkpoints */
		{ 1, 100, "late3" }, /* the other domain: a and b differ, all follows */
		{ 0, 300, "late4" },
		{ 1, 2, "late5" }, /* a new step in b, before its first checkpoint */
	};
	static const double momenta[] = { 0.1, 0.01 };
	struct store *s = open_store();
	struct replay_cache *c = replay_cache_new(BIG_CACHE), *zero = replay_cache_new(0);
	struct store_reader *r;
	struct bn_error err;
	struct ids ids;
	struct ema prev[N_DOMS + 1][2];
	size_t i, mi;
	int d;

	fill_run(s, 4);
	build_pool();
	scramble_steps(11);
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	store_read_begin(r);
	ids = lookup_ids(r);
	for (d = 0; d <= N_DOMS; d++)
		for (mi = 0; mi < 2; mi++) {
			check_steps(c, zero, r, &ids, d, 0, momenta[mi], some_steps, N_SOME);
			prev[d][mi] = replay(c, r, &ids, d, 0, momenta[mi], MAXSTEP);
		}
	store_read_end(r);

	for (i = 0; i < sizeof(late) / sizeof(late[0]); i++) {
		static const bool bn_only[N_LAYERS] = { true, false },
				  none[N_LAYERS] = { false, false };
		size_t ck = n_checkpoints(c);

		ck_assert_uint_ge(ck, 6);
		rng_state = 1000 + i;
		make_batch(s, late[i].dom, late[i].worker, late[i].step, 0, bn_only, none);
		wait_all();
		build_pool();

		store_read_begin(r);
		/* first a query that resumes from the highest (stale) checkpoint */
		for (d = 0; d <= N_DOMS; d++)
			for (mi = 0; mi < 2; mi++) {
				struct ema now = replay(c, r, &ids, d, 0, momenta[mi], MAXSTEP);
				struct ema none_ =
					replay(NULL, r, &ids, d, 0, momenta[mi], MAXSTEP);
				bool affected = d == N_DOMS || d == late[i].dom;

				assert_same_bits(&now, &none_, "after a late write", d, 0,
						 momenta[mi], MAXSTEP);
				assert_matches_ref(&now, d, 0, momenta[mi], MAXSTEP);
				/* the late batch mattered where it landed (momentum 0.01: still
				 * visible) */
				if (mi == 1)
					ck_assert_msg(affected == (memcmp(&now, &prev[d][mi],
									  sizeof(now)) != 0),
						      "late write %zu: domain %d %s", i, d,
						      affected ? "unchanged" : "changed");
				prev[d][mi] = now;
			}
		/* then everything else, in a scrambled order */
		for (d = 0; d <= N_DOMS; d++)
			for (mi = 0; mi < 2; mi++)
				check_steps(c, zero, r, &ids, d, 0, momenta[mi], some_steps,
					    N_SOME);
		check_steps(c, zero, r, &ids, 0, 0, 0.01, all_steps, MAXSTEP + 6);
		store_read_end(r);
	}
	store_reader_put(s, r);
	replay_cache_free(c);
	replay_cache_free(zero);
	store_close(s);
}
END_TEST

/*
 * A query below the late write resumes from a valid checkpoint and leaves the
 * stale ones above it in the cache; a later query above must not use them.
 */
START_TEST(test_stale_checkpoints_left_above_are_not_used)
{
	static const bool bn_only[N_LAYERS] = { true, false }, none[N_LAYERS] = { false, false };
	struct store *s = open_store();
	struct replay_cache *c = replay_cache_new(BIG_CACHE);
	struct store_reader *r;
	struct bn_error err;
	struct ids ids;
	struct ema x, y;

	fill_run(s, 5);
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	store_read_begin(r);
	ids = lookup_ids(r);
	replay(c, r, &ids, 0, 0, 0.1, MAXSTEP);
	store_read_end(r);
	ck_assert_uint_ge(n_checkpoints(c), 5);

	rng_state = 99;
	make_batch(s, 0, "late", 180, 0, bn_only, none);
	wait_all();
	build_pool();
	store_read_begin(r);
	x = replay(c, r, &ids, 0, 0, 0.1, 100); /* resumes below 180 */
	y = replay(NULL, r, &ids, 0, 0, 0.1, 100);
	assert_same_bits(&x, &y, "below the late write", 0, 0, 0.1, 100);
	x = replay(c, r, &ids, 0, 0, 0.1, 330);
	y = replay(NULL, r, &ids, 0, 0, 0.1, 330);
	assert_same_bits(&x, &y, "above the late write", 0, 0, 0.1, 330);
	assert_matches_ref(&x, 0, 0, 0.1, 330);
	check_channel(c, r, &ids, 0, 0, 0.1, 2, 250, MAXSTEP);
	store_read_end(r);
	store_reader_put(s, r);
	replay_cache_free(c);
	store_close(s);
}
END_TEST

/* Tiny budgets: evictions everywhere, the same bits, never over budget. */
START_TEST(test_tiny_cache_budget)
{
	/* one checkpoint of C channels is 2*C doubles plus a small header */
	static const size_t budgets[] = { 1, 2 * C * sizeof(double), 300, 1000, 4000 };
	static const double momenta[] = { 0.1, 0.01, 0.5 };
	struct store *s = open_store();
	struct store_reader *r;
	struct bn_error err;
	struct ids ids;
	size_t bi, i;

	fill_run(s, 6);
	build_pool();
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	store_read_begin(r);
	ids = lookup_ids(r);
	for (bi = 0; bi < sizeof(budgets) / sizeof(budgets[0]); bi++) {
		struct replay_cache *c = replay_cache_new(budgets[bi]);
		size_t max_n = 0;

		rng_state = 500 + bi;
		for (i = 0; i < 400; i++) {
			int d = (int)(rng_next() % (N_DOMS + 1));
			int l = d == 1 ? 0 : (int)(rng_next() % N_LAYERS);
			double a = momenta[rng_next() % 3];
			int64_t step = (int64_t)(rng_next() % (MAXSTEP + 4));
			struct ema with, none;
			size_t n, bytes;

			if (i % 7 == 0)
				step = MAXSTEP; /* long replays: many checkpoints to evict */
			with = replay(c, r, &ids, d, l, a, step);
			none = replay(NULL, r, &ids, d, l, a, step);
			assert_same_bits(&with, &none, "tiny cache", d, l, a, step);
			replay_cache_usage(c, &n, &bytes);
			ck_assert_msg(bytes <= budgets[bi], "budget %zu: %zu bytes used",
				      budgets[bi], bytes);
			if (n > max_n)
				max_n = n;
			if (i % 50 == 0)
				assert_matches_ref(&with, d, l, a, step);
		}
		if (budgets[bi] < 2 * C * sizeof(double))
			ck_assert_uint_eq(max_n, 0);
		if (budgets[bi] >= 1000)
			ck_assert_uint_ge(max_n, 2);
		replay_cache_free(c);
	}
	store_read_end(r);
	store_reader_put(s, r);
	store_close(s);
}
END_TEST

/* Domain -1 pools the domains of a step (Chan's merge, then the EMA). */
START_TEST(test_all_domains_pool_per_step)
{
	struct store *s = open_store();
	struct replay_cache *c = replay_cache_new(BIG_CACHE);
	struct store_reader *r;
	struct bn_error err;
	struct ids ids;
	struct ema all, a_only, b_only;
	int64_t step;
	int shared = 0;

	fill_run(s, 8);
	build_pool();
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	store_read_begin(r);
	ids = lookup_ids(r);
	for (step = 0; step < MAXSTEP; step++) {
		if (!(has_a((int)step) && has_b((int)step)))
			continue;
		shared++;
		all = replay(c, r, &ids, N_DOMS, 0, 1.0, step);
		a_only = replay(c, r, &ids, 0, 0, 1.0, step);
		b_only = replay(c, r, &ids, 1, 0, 1.0, step);
		/* momentum 1: the EMA is the step's pooled statistics themselves */
		assert_matches_ref(&all, N_DOMS, 0, 1.0, step);
		assert_matches_ref(&a_only, 0, 0, 1.0, step);
		ck_assert_msg(all.mean[0] != a_only.mean[0] && all.mean[0] != b_only.mean[0],
			      "step %lld: domain -1 does not pool", (long long)step);
		/* between the two domains' values */
		ck_assert(all.mean[0] > fmin(a_only.mean[0], b_only.mean[0]) &&
			  all.mean[0] < fmax(a_only.mean[0], b_only.mean[0]));
	}
	ck_assert_int_gt(shared, 100);
	/* steps in only one domain (b at 7, 202..208; a elsewhere) count too */
	for (step = 0; step < MAXSTEP + 3; step += 1)
		if (step % 10 == 0 || (step >= 200 && step < 212) || step % 13 == 7) {
			all = replay(c, r, &ids, N_DOMS, 0, 0.1, step);
			assert_matches_ref(&all, N_DOMS, 0, 0.1, step);
			all = replay(c, r, &ids, N_DOMS, 1, 0.01, step);
			assert_matches_ref(&all, N_DOMS, 1, 0.01, step);
		}
	store_read_end(r);
	store_reader_put(s, r);
	replay_cache_free(c);
	store_close(s);
}
END_TEST

static Suite *replay_suite(void)
{
	Suite *s = suite_create("replay");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_cache_equals_no_cache_bitwise);
	tcase_add_test(tc, test_channel_walk_equals_layer_walk);
	tcase_add_test(tc, test_checkpoints_are_used);
	tcase_add_test(tc, test_late_writes_invalidate);
	tcase_add_test(tc, test_stale_checkpoints_left_above_are_not_used);
	tcase_add_test(tc, test_tiny_cache_budget);
	tcase_add_test(tc, test_all_domains_pool_per_step);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(replay_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
