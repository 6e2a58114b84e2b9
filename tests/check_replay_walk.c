/*
 * check_replay_walk: the simulated EMA's walk (src/replay.c) on a real
 * store against an independent reference: with a cache and without one the
 * answers are the same bits at every step in any order of queries, the
 * channel walk equals the layer walk, and domain "*" pools the domains of a
 * step (reference: per-step pooling in long double with two-pass formulas,
 * then r = a*x + (1-a)*r from 0/1 over the steps with data).
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bnstat/stats.h"
#include "replay_testutil.h"
#include "check_main.h"

/* --- tests ------------------------------------------------------------------------------ */

/* Wait (bounded) until the writer kept the replay state of momentum a at `step`. */
static void wait_kept_state(struct store *s, double a, int64_t step)
{
	struct timespec pause = { 0, 10 * 1000 * 1000 };
	int i;

	for (i = 0; i < 1000; i++) {
		struct store_reader *r;
		struct bn_error err;
		struct ids ids;
		double m[C], v[C];
		int64_t at, applied;
		int rc;

		ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
		store_read_begin(r);
		ids = lookup_ids(r);
		rc = store_sim_state_read(r, ids.run, ids.dom[0], ids.layer[0], a, step, false, C,
					  0, C, m, v, &at, &applied);
		store_read_end(r);
		store_reader_put(s, r);
		if (rc == 0)
			return;
		ck_assert_int_eq(rc, -ENOENT);
		nanosleep(&pause, NULL);
	}
	ck_abort_msg("no replay state kept at step %lld after 10 s", (long long)step);
}

/* Every answer of every key, replayed without a cache, against the reference. */
static void check_all_against_ref(struct store *s, const double *momenta, size_t n)
{
	struct replay_cache *zero = replay_cache_new(0);
	struct store_reader *r;
	struct bn_error err;
	struct ids ids;
	size_t mi, k;
	int d, l;

	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	store_read_begin(r);
	ids = lookup_ids(r);
	for (mi = 0; mi < n; mi++)
		for (d = 0; d <= N_DOMS; d++)
			for (l = 0; l < N_LAYERS; l++)
				for (k = 0; k < MAXSTEP + 6; k++) {
					struct ema e = replay(zero, r, &ids, d, l, momenta[mi],
							      all_steps[k]);

					assert_matches_ref(&e, d, l, momenta[mi], all_steps[k]);
				}
	store_read_end(r);
	store_reader_put(s, r);
	replay_cache_free(zero);
}

/*
 * The store keeps replay states every 64 steps for the momenta of
 * sim_momenta; a replay resumes from them (without any cache) and gives the
 * reference's answer at every step, also after a late upload made the
 * states at and after its step stale and the writer took them again.
 */
START_TEST(test_kept_checkpoints_are_exact)
{
	static const double momenta[] = { 0.1, 0.37, 0.01 };
	static const bool both[N_LAYERS] = { true, true }, none[N_LAYERS] = { false, false };
	struct store_options o;
	struct store *s;
	/* the last checkpoint: the largest multiple of 64 at least 64 steps before the last step */
	const int64_t last = (MAXSTEP - 1 - 64) / 64 * 64;

	store_options_default(&o);
	o.sim_momenta[0] = 0.1;
	o.sim_momenta[1] = 0.37;
	o.n_sim_momenta = 2;
	s = open_store_with(&o);
	fill_run(s, 3);
	build_pool();
	scramble_steps(11);
	wait_kept_state(s, 0.1, last);
	wait_kept_state(s, 0.37, 64);
	check_all_against_ref(s, momenta, 3);

	/* a late batch at step 100: the states from 100 on are dropped and taken again */
	make_batch(s, 0, "late", 100, 0, both, none);
	wait_all();
	build_pool();
	check_all_against_ref(s, momenta, 3);
	wait_kept_state(s, 0.1, last);
	check_all_against_ref(s, momenta, 3);
	store_close(s);
}
END_TEST

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

/* --- several layers and momenta over one read (replay_layers_momenta) ----------------- */

#define N_MULTI 3

struct multi_seen {
	struct replay_cache *zero;
	struct store_reader *r;
	const struct ids *ids;
	int d;
	const double *momenta;
	int64_t from_excl, last[N_LAYERS];
	size_t steps[N_LAYERS];
};

static int multi_step(void *ctx, size_t layer, const struct replay_step *st)
{
	struct multi_seen *m = ctx;
	/* the walk was given the layers in reverse order */
	int l = N_LAYERS - 1 - (int)layer;
	size_t i;

	ck_assert_int_gt(st->step, m->last[l]);
	m->last[l] = st->step;
	m->steps[l]++;
	ck_assert_int_eq(st->n, pool[m->d][l][st->step].n);
	if (st->step <= m->from_excl)
		return 0;
	for (i = 0; i < N_MULTI; i++) {
		struct ema want = replay(m->zero, m->r, m->ids, m->d, l, m->momenta[i], st->step);
		struct ema got;

		memcpy(got.mean, st->ema_mean[i], sizeof(got.mean));
		memcpy(got.var, st->ema_var[i], sizeof(got.var));
		got.applied = want.applied;
		assert_same_bits(&got, &want, "momenta walk", m->d, l, m->momenta[i], st->step);
		ck_assert(st->bound[i] == 0.0);
	}
	return 0;
}

/* Each (layer, momentum) of the walk is replay_layer()'s, bit for bit, wherever it resumes. */
START_TEST(test_momenta_walk_equals_layer_walk)
{
	static const double momenta[N_MULTI] = { 0.1, 0.3, 0.01 };
	static const int64_t ranges[][3] = {
		{ -1, -1, MAXSTEP }, { 150, 140, 300 }, { 299, 200, MAXSTEP + 3 }, { 64, 64, 65 }
	};
	static const size_t channels[N_LAYERS] = { C, C };
	struct store *s = open_store();
	struct replay_cache *c = replay_cache_new(BIG_CACHE), *zero = replay_cache_new(0);
	struct store_reader *r;
	struct bn_error err;
	struct ids ids;
	size_t k;
	int d, l;

	fill_run(s, 4);
	build_pool();
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	store_read_begin(r);
	ids = lookup_ids(r);
	for (d = 0; d <= N_DOMS; d++) {
		int64_t dom = d == N_DOMS ? -1 : ids.dom[d];
		int64_t reversed[N_LAYERS] = { ids.layer[1], ids.layer[0] };

		/* momentum 0.1 of layer 1 has checkpoints, the others none: the walk starts early
		 */
		replay(c, r, &ids, d, 1, 0.1, 250);
		for (k = 0; k < sizeof(ranges) / sizeof(ranges[0]); k++) {
			struct multi_seen m = { zero,	      r,	  &ids,	   d, momenta,
						ranges[k][0], { -1, -1 }, { 0, 0 } };

			ck_assert_int_eq(replay_layers_momenta(c, r, ids.run, dom, N_LAYERS,
							       reversed, channels, momenta, N_MULTI,
							       ranges[k][0], ranges[k][1],
							       ranges[k][2], multi_step, &m),
					 0);
			/* every step with data in (rows_after, to] was handed out */
			for (l = 0; l < N_LAYERS; l++) {
				size_t want = 0;
				int64_t st;

				for (st = ranges[k][1] + 1; st <= ranges[k][2] && st < MAXSTEP + 8;
				     st++)
					if (st >= 0 && pool[d][l][st].n > 0)
						want++;
				ck_assert_uint_eq(m.steps[l], want);
			}
		}
	}
	store_read_end(r);
	store_reader_put(s, r);
	replay_cache_free(c);
	replay_cache_free(zero);
	store_close(s);
}
END_TEST

static Suite *replay_suite(void)
{
	Suite *s = suite_create("replay_walk");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_cache_equals_no_cache_bitwise);
	tcase_add_test(tc, test_channel_walk_equals_layer_walk);
	tcase_add_test(tc, test_all_domains_pool_per_step);
	tcase_add_test(tc, test_kept_checkpoints_are_exact);
	tcase_add_test(tc, test_momenta_walk_equals_layer_walk);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(replay_suite)
