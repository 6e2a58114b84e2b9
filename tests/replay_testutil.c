/* replay_testutil: see replay_testutil.h. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bnstat/ingest.h"
#include "bnstat/stats.h"
#include "replay_testutil.h"

_Static_assert(sizeof(some_steps) / sizeof(some_steps[0]) == N_SOME, "N_SOME counts some_steps");

const char *const layer_names[N_LAYERS] = { "bn", "other" };
const char *const dom_names[N_DOMS] = { "a", "b" };

char dir[256];
char dbpath[300];

/* --- deterministic data ------------------------------------------------------ */

uint64_t rng_state;

uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

double rng_unit(void)
{
	return ((double)(rng_next() >> 11) + 0.5) / 9007199254740992.0;
}

struct gb *gbs;
size_t n_gbs, cap_gbs;

struct pooled pool[N_DOMS + 1][N_LAYERS][MAXSTEP + 8];

void setup(void)
{
	tu_tmpdir_make(dir, sizeof(dir), dbpath, sizeof(dbpath), "check_replay");
	free(gbs);
	gbs = NULL;
	n_gbs = cap_gbs = 0;
}

void teardown(void)
{
	tu_tmpdir_remove(dir);
}

/* --- submitting batches ---------------------------------------------------------- */

/* Submitted but not yet waited for (the writer holds pointers into it). */
struct outcome pending[MAX_PENDING];
size_t n_pending;

void submit_json(struct store *s, const char *json)
{
	struct outcome *o;

	if (n_pending == MAX_PENDING)
		wait_all();
	o = &pending[n_pending++];
	outcome_init(o);
	ck_assert_int_eq(store_submit(s, decode(json), on_done, o), 0);
}

void wait_all(void)
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

void add_gb(const struct gb *g)
{
	if (n_gbs == cap_gbs) {
		cap_gbs = cap_gbs ? 2 * cap_gbs : 1024;
		gbs = realloc(gbs, cap_gbs * sizeof(*gbs));
		ck_assert_ptr_nonnull(gbs);
	}
	gbs[n_gbs++] = *g;
}

size_t append_array(char *p, size_t room, const double *v)
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
void make_batch(struct store *s, int dom, const char *worker, int step, int seq, const bool *layers,
		const bool *unused)
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
bool has_a(int s)
{
	return s % 13 != 7 && !(s >= 200 && s < 210);
}

bool has_b(int s)
{
	return s % 3 == 1 && s < 380;
}

void fill_run(struct store *s, uint64_t seed)
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
void build_pool(void)
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
int64_t ref_replay(int dom_idx, int layer, double a, int64_t step, double *mean, double *var)
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

struct store *open_store_with(const struct store_options *o)
{
	struct store *s = NULL;
	struct bn_error err;

	if (store_open(dbpath, o, &s, &err) < 0)
		ck_abort_msg("store_open: %s", err.message);
	return s;
}

struct store *open_store(void)
{
	struct store_options o;

	/* no replay states kept by the store: the walk and its cache alone */
	store_options_default(&o);
	o.n_sim_momenta = 0;
	return open_store_with(&o);
}

struct ids lookup_ids(struct store_reader *r)
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

struct ema replay(struct replay_cache *cache, struct store_reader *r, const struct ids *ids, int d,
		  int l, double a, int64_t step)
{
	struct ema e;
	double bound;

	memset(&e, 0xa5, sizeof(e)); /* every byte must be written */
	ck_assert_int_eq(replay_layer(cache, r, ids->run, ids->dom[d], ids->layer[l], C, a, step,
				      e.mean, e.var, &e.applied, &bound),
			 0);
	/* per-step history only: every answer is the exact replay */
	ck_assert(bound == 0.0);
	return e;
}

void assert_same_bits(const struct ema *x, const struct ema *y, const char *what, int d, int l,
		      double a, int64_t step)
{
	ck_assert_msg(memcmp(x->mean, y->mean, sizeof(x->mean)) == 0 &&
			      memcmp(x->var, y->var, sizeof(x->var)) == 0 &&
			      x->applied == y->applied,
		      "%s: domain %d layer %d momentum %g step %lld: mean[0] %.17g vs %.17g, "
		      "var[0] %.17g vs %.17g, applied %lld vs %lld",
		      what, d, l, a, (long long)step, x->mean[0], y->mean[0], x->var[0], y->var[0],
		      (long long)x->applied, (long long)y->applied);
}

void assert_matches_ref(const struct ema *e, int d, int l, double a, int64_t step)
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

size_t n_checkpoints(struct replay_cache *c)
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
void check_steps(struct replay_cache *c, struct replay_cache *zero, struct store_reader *r,
		 const struct ids *ids, int d, int l, double a, const int64_t *steps, size_t n)
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
int64_t all_steps[MAXSTEP + 6];
const int64_t some_steps[N_SOME] = { MAXSTEP + 5, MAXSTEP - 1, 64,  63,	 65,  128, 129,
				     300,	  205,	       199, 0,	 1,   7,   10,
				     250,	  383,	       384, 385, 127, 192, 256 };

void scramble_steps(uint64_t seed)
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

int collect_point(void *ctx, int64_t step, double mean, double var, double bound)
{
	struct points *p = ctx;

	ck_assert(bound == 0.0); /* per-step history only */
	ck_assert_uint_lt(p->n, MAXSTEP + 8);
	if (p->n > 0)
		ck_assert_int_gt(step, p->step[p->n - 1]);
	p->step[p->n] = step;
	p->mean[p->n] = mean;
	p->var[p->n] = var;
	p->n++;
	return 0;
}

void check_channel(struct replay_cache *c, struct store_reader *r, const struct ids *ids, int d,
		   int l, double a, int ch, int64_t from_excl, int64_t to)
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
