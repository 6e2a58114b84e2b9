/*
 * check_replay_cache: the checkpoint cache of the simulated EMA
 * (src/replay_cache.c): checkpoints are taken on long replays and really
 * used; a late write (a batch below the latest step) invalidates them, and
 * the answers are still the bits of a replay without cache; stale
 * checkpoints above a late write are not used; a tiny budget still answers
 * exactly (evictions).
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "bnstat/stats.h"
#include "replay_testutil.h"
#include "check_main.h"

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

static Suite *replay_suite(void)
{
	Suite *s = suite_create("replay_cache");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_checkpoints_are_used);
	tcase_add_test(tc, test_late_writes_invalidate);
	tcase_add_test(tc, test_stale_checkpoints_left_above_are_not_used);
	tcase_add_test(tc, test_tiny_cache_budget);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(replay_suite)
