/*
 * check_stats_estimators: the per-batch estimators of src/stats.c —
 * mean_of_batch_var and batch_noise.
 *
 * Every expected value is computed here from raw generated samples, in long
 * double and with plain two-pass formulas, never through the code under
 * test: the per-batch (count, mean, var) fed to stats_* are what a worker
 * would send, and the references are what those batches' raw elements say.
 * The data come from a fixed-seed splitmix64 + Box-Muller generator, so a
 * failure reproduces.
 */
#include "stats_testutil.h"

#include <check.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check_main.h"

/* --- (f) mean_of_batch_var -------------------------------------------- */

START_TEST(test_mean_of_batch_var)
{
	const size_t channels = 3, nb = 25;
	struct rng r = { 2021 };
	struct dataset ds;
	struct stats_agg a;
	size_t *sizes, b, c, i;
	double pm, pv;

	/*
	 * Unequal batches, so that the unweighted average differs from the
	 * pooled one and a count-weighted implementation would fail; mixed
	 * variance kinds, as different workers may send.
	 */
	sizes = random_sizes(&r, nb, 2, 200);
	ds_init(&ds, channels, sizes, nb);
	for (c = 0; c < channels; c++)
		ds_fill_normal(&ds, &r, c, 1.0 - (double)c, 2.0 + (double)c);
	/* a drift, so that batch means differ more than sampling says */
	for (b = 0; b < nb; b++)
		for (i = 0; i < ds.len[b]; i++)
			ds.x[ds.total + ds.off[b] + i] += 0.3 * (double)b;

	agg_new(&a, channels);
	for (b = 0; b < nb; b++)
		add_ds_batch(&a, &ds, b, b % 2 ? STATS_VAR_BIASED : STATS_VAR_UNBIASED);
	check_mean_of_batch_var(&a, &ds, 1e-12L);
	check_population(&a, &ds, 1e-12L, 1e-12L);
	stats_agg_free(&a);
	free(sizes);
	ds_free(&ds);

	/*
	 * By hand: {5} sent as biased with count 1, {-1, 1, 3} as unbiased.
	 * Batch means 5 and 1; unbiased variances 0 (by contract) and 4.
	 * Pooled: mean 2, squared deviations 9+9+1+1 = 20 over 4 elements.
	 */
	{
		const double m1 = 5.0, v1 = 0.0, m2 = 1.0, v2 = 4.0;

		agg_new(&a, 1);
		stats_agg_add_batch(&a, 1, &m1, &v1, STATS_VAR_BIASED);
		stats_agg_add_batch(&a, 3, &m2, &v2, STATS_VAR_UNBIASED);
		ck_assert_int_eq(stats_estimate(&a, STATS_EST_MEAN_OF_BATCH_VAR, &pm, &pv), 0);
		ck_assert_double_eq(pm, 3.0);
		ck_assert_double_eq(pv, 2.0);
		ck_assert_int_eq(stats_estimate(&a, STATS_EST_POPULATION, &pm, &pv), 0);
		ck_assert_double_eq(pm, 2.0);
		ck_assert_double_eq(pv, 5.0);
		stats_agg_free(&a);
	}
}
END_TEST

/* --- (g) batch_noise --------------------------------------------------- */

/* _i picks the number of batches: the smallest defined case and more. */
static const size_t noise_batches[] = { 2, 3, 50 };

START_TEST(test_batch_noise)
{
	const size_t channels = 6, nb = noise_batches[_i];
	struct rng r = { 555 + (uint64_t)_i };
	struct dataset ds;
	struct stats_agg a;
	size_t *sizes, c;
	long double want;
	double got;

	sizes = random_sizes(&r, nb, 2, 100);
	ds_init(&ds, channels, sizes, nb);
	/* channel 0 is constant: no population variance, left out */
	ds_fill_const(&ds, 0, 3.0);
	for (c = 1; c < channels; c++)
		ds_fill_normal(&ds, &r, c, 4.0 * (double)c, 0.1 * (double)(c * c));

	agg_new(&a, channels);
	add_ds_batches(&a, &ds, NULL, nb, STATS_VAR_UNBIASED);
	ck_assert_uint_eq(ref_batch_noise(&ds, &want), channels - 1);
	ck_assert_int_eq(stats_batch_noise(&a, &got), 0);
	check_close(got, want, 1e-12L, want, "batch_noise", nb);

	stats_agg_free(&a);
	free(sizes);
	ds_free(&ds);
}
END_TEST

START_TEST(test_batch_noise_nodata)
{
	const double mean[2] = { 1.0, 2.0 }, var[2] = { 1.0, 1.0 };
	const double cm[2] = { 7.0, -1.0 }, cv[2] = { 0.0, 0.0 };
	struct stats_agg a;
	double out = 42.0;

	agg_new(&a, 2);
	ck_assert_int_eq(stats_batch_noise(&a, &out), -ENODATA);
	stats_agg_add_batch(&a, 10, mean, var, STATS_VAR_UNBIASED);
	stats_agg_add_batch(&a, 0, NULL, NULL, STATS_VAR_UNBIASED);
	ck_assert_int_eq(a.k, 1);
	ck_assert_int_eq(stats_batch_noise(&a, &out), -ENODATA);
	ck_assert(out == 42.0); /* not written on error */
	stats_agg_add_batch(&a, 10, mean, var, STATS_VAR_UNBIASED);
	ck_assert_int_eq(stats_batch_noise(&a, &out), 0);
	/* two identical batch means: no noise at all */
	ck_assert_double_eq(out, 0.0);

	/* k >= 2 but every channel constant: nothing to average */
	stats_agg_reset(&a);
	stats_agg_add_batch(&a, 4, cm, cv, STATS_VAR_UNBIASED);
	stats_agg_add_batch(&a, 5, cm, cv, STATS_VAR_BIASED);
	stats_agg_add_batch(&a, 6, cm, cv, STATS_VAR_UNBIASED);
	ck_assert_int_eq(a.k, 3);
	ck_assert_int_eq(stats_batch_noise(&a, &out), -ENODATA);
	stats_agg_free(&a);
}
END_TEST

/* --- (h) precision: mean_se and batches_for ----------------------------- */

/* mean_se = batch_noise/sqrt(k) (the mean of sqrt(s2/k)/sigma_p per channel) */
START_TEST(test_precision)
{
	const size_t channels = 4, nb = noise_batches[_i];
	struct rng r = { 777 + (uint64_t)_i };
	struct dataset ds;
	struct stats_agg a;
	size_t *sizes, c;
	long double noise;
	double mean_se, batches_for, r2, got_noise;

	sizes = random_sizes(&r, nb, 2, 60);
	ds_init(&ds, channels, sizes, nb);
	ds_fill_const(&ds, 2, -1.5);
	for (c = 0; c < channels; c++)
		if (c != 2)
			ds_fill_normal(&ds, &r, c, (double)c, 0.5 + (double)c);
	agg_new(&a, channels);
	add_ds_batches(&a, &ds, NULL, nb, STATS_VAR_UNBIASED);
	ck_assert_uint_eq(ref_batch_noise(&ds, &noise), channels - 1);
	ck_assert_int_eq(stats_precision(&a, 0.01, &got_noise, &mean_se, &batches_for), 0);
	check_close(mean_se, noise / sqrtl((long double)nb), 1e-12L, noise, "mean_se", nb);
	/* the smallest k with noise/sqrt(k) <= target: batches_for, not one less */
	ck_assert(batches_for >= 1.0 && batches_for == floor(batches_for));
	r2 = (double)(noise / 0.01L);
	r2 *= r2;
	ck_assert(batches_for >= r2 && batches_for - 1.0 < r2);
	ck_assert_int_eq(stats_precision(&a, 1e3, &got_noise, &mean_se, &batches_for), 0);
	ck_assert_double_eq(batches_for, 1.0);

	stats_agg_free(&a);
	free(sizes);
	ds_free(&ds);
}
END_TEST

START_TEST(test_precision_nodata)
{
	const double mean[1] = { 1.0 }, var[1] = { 1.0 };
	struct stats_agg a;
	double se = 42.0, bf = 42.0, noise = 42.0;

	agg_new(&a, 1);
	stats_agg_add_batch(&a, 10, mean, var, STATS_VAR_UNBIASED);
	ck_assert_int_eq(stats_precision(&a, 0.01, &noise, &se, &bf), -ENODATA);
	ck_assert(se == 42.0 && bf == 42.0);
	stats_agg_free(&a);
}
END_TEST

/* --- driver ------------------------------------------------------------ */

static Suite *stats_suite(void)
{
	Suite *s = suite_create("stats_estimators");
	TCase *tc;

	tc = tcase_create("batch_estimators");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_mean_of_batch_var);
	tcase_add_loop_test(tc, test_batch_noise, 0, 3);
	tcase_add_test(tc, test_batch_noise_nodata);
	tcase_add_loop_test(tc, test_precision, 0, 3);
	tcase_add_test(tc, test_precision_nodata);
	suite_add_tcase(s, tc);

	return s;
}

CHECK_MAIN(stats_suite)
