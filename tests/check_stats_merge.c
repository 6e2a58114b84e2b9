/*
 * check_stats_merge: the Chan merge of src/stats.c — any split, any order,
 * large means, count 0, biased and unbiased reports, empty merges, many
 * channels (the population estimator).
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

/* --- lifecycle ---------------------------------------------------------- */

/* a holds `channels` channels and no data: every count and array is 0. */
static void assert_empty(const struct stats_agg *a, size_t channels)
{
	size_t c;

	ck_assert_uint_eq(a->channels, channels);
	ck_assert_int_eq(a->n, 0);
	ck_assert_int_eq(a->k, 0);
	ck_assert_int_eq(a->nbs_min, 0);
	ck_assert_int_eq(a->nbs_max, 0);
	for (c = 0; c < channels; c++)
		ck_assert(a->mean[c] == 0.0 && a->m2[c] == 0.0 && a->bmean[c] == 0.0 &&
			  a->bm2[c] == 0.0 && a->uvar[c] == 0.0);
}

START_TEST(test_init_free_reset)
{
	struct stats_agg a;
	double mean[3] = { 1.0, 2.0, 3.0 }, var[3] = { 0.5, 0.25, 2.0 };
	double om[3], ov[3], noise;
	double *block;
	size_t c;

	memset(&a, 0x5a, sizeof(a));
	ck_assert_int_eq(stats_agg_init(&a, 0), -EINVAL);
	stats_agg_free(&a); /* must be safe after a failed init */

	agg_new(&a, 3);
	assert_empty(&a, 3);
	ck_assert_int_eq(stats_estimate(&a, STATS_EST_POPULATION, om, ov), -ENODATA);
	ck_assert_int_eq(stats_estimate(&a, STATS_EST_MEAN_OF_BATCH_VAR, om, ov), -ENODATA);
	ck_assert_int_eq(stats_batch_noise(&a, &noise), -ENODATA);

	stats_agg_add_batch(&a, 10, mean, var, STATS_VAR_UNBIASED);
	stats_agg_add_batch(&a, 6, var, mean, STATS_VAR_BIASED);
	om[0] = ov[0] = 42.0;
	ck_assert_int_eq(stats_estimate(&a, (enum stats_estimator)7, om, ov), -EINVAL);
	ck_assert(om[0] == 42.0 && ov[0] == 42.0);

	/* reset keeps the channel count and the memory, drops the data */
	block = a.mean;
	stats_agg_reset(&a);
	ck_assert_ptr_eq(a.mean, block);
	assert_empty(&a, 3);
	ck_assert_int_eq(stats_estimate(&a, STATS_EST_POPULATION, om, ov), -ENODATA);
	ck_assert(om[0] == 42.0 && ov[0] == 42.0);

	/* and after a reset it behaves like a fresh aggregate */
	stats_agg_add_batch(&a, 10, mean, var, STATS_VAR_UNBIASED);
	ck_assert_int_eq(stats_estimate(&a, STATS_EST_POPULATION, om, ov), 0);
	for (c = 0; c < 3; c++) {
		ck_assert(om[c] == mean[c]);
		ck_assert_double_eq_tol(ov[c], var[c] * 9.0 / 10.0, 1e-15);
	}

	stats_agg_free(&a);
	ck_assert_ptr_null(a.mean);
	ck_assert_uint_eq(a.channels, 0);
	stats_agg_free(&a); /* twice is fine: a is zeroed */
}
END_TEST

/* --- (a) any split of the same data ------------------------------------ */

/* _i scales every batch: 1 gives 128 elements per channel, 16 gives 2048. */
static const size_t split_scale[] = { 1, 16 };

START_TEST(test_split_invariance)
{
	static const size_t pow_sizes[] = { 2, 2, 4, 8, 16, 32, 64 };
	const size_t scale = split_scale[_i], channels = 4;
	const double mu[4] = { 0.0, -3.5, 120.0, 7e3 };
	const double sigma[4] = { 1.0, 0.01, 25.0, 3.0 };
	struct dataset pow2, equal, whole;
	struct stats_agg a, b, w;
	size_t sizes[8], c, i, total;
	struct rng r = { 42 };

	for (i = 0; i < 7; i++)
		sizes[i] = pow_sizes[i] * scale;
	ds_init(&pow2, channels, sizes, 7);
	total = pow2.total;
	ck_assert_uint_eq(total, 128 * scale);
	for (c = 0; c < channels; c++)
		ds_fill_normal(&pow2, &r, c, mu[c], sigma[c]);

	/* the same elements, cut into 8 equal batches and into one */
	for (i = 0; i < 8; i++)
		sizes[i] = total / 8;
	ds_init(&equal, channels, sizes, 8);
	memcpy(equal.x, pow2.x, channels * total * sizeof(double));
	ds_init(&whole, channels, &total, 1);
	memcpy(whole.x, pow2.x, channels * total * sizeof(double));

	agg_new(&a, channels);
	agg_new(&b, channels);
	agg_new(&w, channels);
	add_ds_batches(&a, &pow2, NULL, pow2.nb, STATS_VAR_UNBIASED);
	add_ds_batches(&b, &equal, NULL, equal.nb, STATS_VAR_UNBIASED);
	add_ds_batches(&w, &whole, NULL, whole.nb, STATS_VAR_UNBIASED);

	check_population(&a, &pow2, 1e-12L, 1e-12L);
	check_population(&b, &equal, 1e-12L, 1e-12L);
	check_population(&w, &whole, 1e-12L, 1e-12L);

	/* and against each other, directly */
	for (c = 0; c < channels; c++) {
		long double sd = sqrtl((long double)b.m2[c] / b.n);

		check_close(a.mean[c], b.mean[c], 1e-12L, fabsl(b.mean[c]) + sd, "split mean", c);
		check_close(a.m2[c] / (double)a.n, b.m2[c] / (double)b.n, 1e-12L,
			    b.m2[c] / (double)b.n, "split var", c);
		check_close(w.m2[c] / (double)w.n, b.m2[c] / (double)b.n, 1e-12L,
			    b.m2[c] / (double)b.n, "whole var", c);
	}

	stats_agg_free(&a);
	stats_agg_free(&b);
	stats_agg_free(&w);
	ds_free(&pow2);
	ds_free(&equal);
	ds_free(&whole);
}
END_TEST

/* --- (b) any order, any tree of merges --------------------------------- */

/* Merge leaves[0..cnt) pairwise, level by level, into leaves[0]. */
static void merge_tree(struct stats_agg *leaves, size_t cnt)
{
	size_t step, i;

	for (step = 1; step < cnt; step *= 2)
		for (i = 0; i + step < cnt; i += 2 * step)
			stats_agg_merge(&leaves[i], &leaves[i + step]);
}

START_TEST(test_order_invariance)
{
	const size_t channels = 5, nb = 40;
	struct rng r = { 7 };
	struct dataset ds;
	struct stats_agg base, got, *parts;
	size_t *sizes, order[40], c, i, p;
	long double ref_noise;
	double base_noise, noise;

	sizes = random_sizes(&r, nb, 2, 300);
	ds_init(&ds, channels, sizes, nb);
	for (c = 0; c < channels; c++)
		ds_fill_normal(&ds, &r, c, 3.0 * (double)c - 5.0, 0.5 + (double)c);
	for (i = 0; i < nb; i++)
		order[i] = i;

	/* sequential, in arrival order; checked against the raw data */
	agg_new(&base, channels);
	add_ds_batches(&base, &ds, NULL, nb, STATS_VAR_UNBIASED);
	check_population(&base, &ds, 1e-12L, 1e-12L);
	check_mean_of_batch_var(&base, &ds, 1e-12L);
	ck_assert_uint_eq(ref_batch_noise(&ds, &ref_noise), channels);
	ck_assert_int_eq(stats_batch_noise(&base, &base_noise), 0);
	check_close(base_noise, ref_noise, 1e-12L, ref_noise, "noise", 0);

	parts = calloc(nb, sizeof(*parts));
	ck_assert(parts != NULL);

	/* several permutations and the reverse order, added one by one */
	agg_new(&got, channels);
	for (p = 0; p < 7; p++) {
		if (p < 6) {
			rng_shuffle(&r, order, nb);
		} else {
			for (i = 0; i < nb; i++)
				order[i] = nb - 1 - i;
		}
		stats_agg_reset(&got);
		add_ds_batches(&got, &ds, order, nb, STATS_VAR_UNBIASED);
		check_agg_close(&got, &base, 1e-12L);
		check_population(&got, &ds, 1e-12L, 1e-12L);
		ck_assert_int_eq(stats_batch_noise(&got, &noise), 0);
		check_close(noise, base_noise, 1e-12L, base_noise, "noise", p);
	}

	/* a balanced tree of single-batch leaves, in a shuffled order */
	rng_shuffle(&r, order, nb);
	for (i = 0; i < nb; i++) {
		agg_new(&parts[i], channels);
		add_ds_batch(&parts[i], &ds, order[i], STATS_VAR_UNBIASED);
	}
	merge_tree(parts, nb);
	check_agg_close(&parts[0], &base, 1e-12L);
	check_population(&parts[0], &ds, 1e-12L, 1e-12L);
	for (i = 0; i < nb; i++)
		stats_agg_free(&parts[i]);

	/*
	 * "Workers": W aggregates filled round-robin, then merged into an
	 * empty total in reverse worker order; and the same workers merged as
	 * a tree. src must come out of every merge untouched.
	 */
	for (p = 3; p <= 7; p += 4) {
		struct stats_agg total;
		struct agg_bytes before;

		rng_shuffle(&r, order, nb);
		for (i = 0; i < p; i++)
			agg_new(&parts[i], channels);
		for (i = 0; i < nb; i++)
			add_ds_batch(&parts[i % p], &ds, order[i], STATS_VAR_UNBIASED);
		agg_new(&total, channels);
		for (i = p; i-- > 0;) {
			agg_snap(&parts[i], &before);
			stats_agg_merge(&total, &parts[i]);
			ck_assert_msg(agg_unchanged(&parts[i], &before),
				      "merge changed its source");
			free(before.arr);
		}
		check_agg_close(&total, &base, 1e-12L);
		merge_tree(parts, p);
		check_agg_close(&parts[0], &base, 1e-12L);
		ck_assert_int_eq(stats_batch_noise(&parts[0], &noise), 0);
		check_close(noise, base_noise, 1e-12L, base_noise, "noise", p);
		stats_agg_free(&total);
		for (i = 0; i < p; i++)
			stats_agg_free(&parts[i]);
	}

	/* uneven chunks of consecutive arrivals, chained left to right */
	rng_shuffle(&r, order, nb);
	stats_agg_reset(&got);
	for (i = 0; i < nb;) {
		size_t len = rng_range(&r, 1, 6);

		if (len > nb - i)
			len = nb - i;
		agg_new(&parts[0], channels);
		add_ds_batches(&parts[0], &ds, order + i, len, STATS_VAR_UNBIASED);
		stats_agg_merge(&got, &parts[0]);
		stats_agg_free(&parts[0]);
		i += len;
	}
	check_agg_close(&got, &base, 1e-12L);

	free(parts);
	free(sizes);
	stats_agg_free(&got);
	stats_agg_free(&base);
	ds_free(&ds);
}
END_TEST

/* --- (c) large mean against the spread --------------------------------- */

static const double big_means[] = { 1e4, 1e6 };

START_TEST(test_large_mean)
{
	const double mu = big_means[_i];
	const size_t channels = 2, nb = 60;
	struct rng r = { 1234 + (uint64_t)_i };
	struct dataset ds;
	struct stats_agg a;
	size_t *sizes, c, i;

	sizes = random_sizes(&r, nb, 2, 512);
	ds_init(&ds, channels, sizes, nb);
	ds_fill_normal(&ds, &r, 0, mu, 1.0);
	ds_fill_normal(&ds, &r, 1, -mu, 1.0);

	agg_new(&a, channels);
	add_ds_batches(&a, &ds, NULL, nb, STATS_VAR_UNBIASED);
	/*
	 * Even E[x^2]-E[x]^2 in double misses 1e-9 here: at mean 1e6, E[x^2]
	 * is 1e12 with an ulp near 1e-4, against a variance of 1.
	 */
	check_population(&a, &ds, 1e-12L, 1e-9L);
	check_mean_of_batch_var(&a, &ds, 1e-9L);

	/*
	 * What fvcore's float32 E[x^2]-E[x]^2 gives on the same data: at
	 * mean 1e4 x^2 is 1e8, whose float ulp is 8, so the "variance" is
	 * noise. Checked, so that this test visibly has teeth.
	 */
	if (FLT_EVAL_METHOD == 0) {
		for (c = 0; c < channels; c++) {
			const double *x = ds.x + c * ds.total;
			float s = 0.0f, q = 0.0f, naive;
			long double rm, rv;

			for (i = 0; i < ds.total; i++) {
				float xf = (float)x[i];

				s += xf;
				q += xf * xf;
			}
			s /= (float)ds.total;
			naive = q / (float)ds.total - s * s;
			ref_population(&ds, c, &rm, &rv);
			ck_assert_msg(fabsl(naive - rv) > 0.1L * rv,
				      "naive float32 var %g vs %Lg: expected it to be wrong",
				      (double)naive, rv);
		}
	}

	stats_agg_free(&a);
	free(sizes);
	ds_free(&ds);
}
END_TEST

/* --- (d) count 0 ------------------------------------------------------- */

START_TEST(test_count_zero_noop)
{
	const double nan_m[2] = { NAN, NAN }, nan_v[2] = { NAN, -1.0 };
	const double mean[2] = { 1.5, -2.0 }, var[2] = { 0.5, 4.0 };
	struct stats_agg a;
	struct agg_bytes before;

	agg_new(&a, 2);

	/* empty aggregate, arrays omitted (NULL) as ingest hands them over */
	agg_snap(&a, &before);
	stats_agg_add_batch(&a, 0, NULL, NULL, STATS_VAR_UNBIASED);
	stats_agg_add_batch(&a, 0, NULL, NULL, STATS_VAR_BIASED);
	ck_assert(agg_unchanged(&a, &before));
	free(before.arr);

	/* non-empty aggregate, arrays given but meaningless */
	stats_agg_add_batch(&a, 8, mean, var, STATS_VAR_UNBIASED);
	stats_agg_add_batch(&a, 3, var, mean, STATS_VAR_BIASED);
	agg_snap(&a, &before);
	stats_agg_add_batch(&a, 0, nan_m, nan_v, STATS_VAR_UNBIASED);
	stats_agg_add_batch(&a, 0, NULL, NULL, STATS_VAR_BIASED);
	stats_agg_add_batch(&a, 0, mean, var, STATS_VAR_BIASED);
	ck_assert(agg_unchanged(&a, &before));
	ck_assert_int_eq(a.k, 2);
	ck_assert_int_eq(a.n, 11);
	ck_assert_int_eq(a.nbs_min, 3);
	free(before.arr);

	stats_agg_free(&a);
}
END_TEST

/* --- (e) biased and unbiased reports of the same data -------------------- */

START_TEST(test_biased_unbiased_same)
{
	/*
	 * Exact case: M2 = j*n*(n-1) makes both variances integers, v_b*n and
	 * v_u*(n-1) exact, so the two aggregates must agree bit for bit.
	 */
	static const int64_t counts[] = { 2, 3, 4, 5, 8, 13, 100 };
	const size_t channels = 3, nb = 7;
	struct stats_agg ub, bi;
	struct rng r = { 99 };
	struct dataset ds;
	size_t *sizes, b, c;

	agg_new(&ub, channels);
	agg_new(&bi, channels);
	for (b = 0; b < nb; b++) {
		double mean[3], vu[3], vb[3];
		int64_t n = counts[b];

		for (c = 0; c < channels; c++) {
			double j = (double)(b + 2 * c + 1);

			mean[c] = 10.0 * rng_normal(&r);
			vu[c] = j * (double)n;
			vb[c] = j * (double)(n - 1);
		}
		stats_agg_add_batch(&ub, n, mean, vu, STATS_VAR_UNBIASED);
		stats_agg_add_batch(&bi, n, mean, vb, STATS_VAR_BIASED);
	}
	ck_assert_msg(agg_same_bits(&ub, &bi), "biased and unbiased reports of exact data differ");

	/*
	 * Random data: each report is rounded to double once, so the two
	 * differ in the last bits; the aggregates must agree to that.
	 */
	sizes = random_sizes(&r, 30, 2, 64);
	ds_init(&ds, channels, sizes, 30);
	for (c = 0; c < channels; c++)
		ds_fill_normal(&ds, &r, c, (double)c * 50.0 - 20.0, 1.0 + (double)c);
	stats_agg_reset(&ub);
	stats_agg_reset(&bi);
	add_ds_batches(&ub, &ds, NULL, ds.nb, STATS_VAR_UNBIASED);
	add_ds_batches(&bi, &ds, NULL, ds.nb, STATS_VAR_BIASED);
	check_agg_close(&bi, &ub, 1e-14L);
	check_population(&bi, &ds, 1e-12L, 1e-12L);
	check_mean_of_batch_var(&bi, &ds, 1e-12L);

	stats_agg_free(&ub);
	stats_agg_free(&bi);
	free(sizes);
	ds_free(&ds);
}
END_TEST

/* --- (h) bookkeeping --------------------------------------------------- */

START_TEST(test_bookkeeping)
{
	static const int64_t counts_a[] = { 5, 0, 3, 17, 0, 2 };
	static const int64_t counts_b[] = { 40, 1, 0, 9 };
	const double mean[1] = { 0.25 }, var[1] = { 1.0 }, zero[1] = { 0.0 };
	struct stats_agg a, b;
	size_t i;

	agg_new(&a, 1);
	agg_new(&b, 1);
	for (i = 0; i < 6; i++)
		stats_agg_add_batch(&a, counts_a[i], mean, var, STATS_VAR_UNBIASED);
	ck_assert_int_eq(a.n, 27);
	ck_assert_int_eq(a.k, 4);
	ck_assert_int_eq(a.nbs_min, 2);
	ck_assert_int_eq(a.nbs_max, 17);

	for (i = 0; i < 4; i++)
		stats_agg_add_batch(&b, counts_b[i], mean, counts_b[i] == 1 ? zero : var,
				    STATS_VAR_BIASED);
	ck_assert_int_eq(b.n, 50);
	ck_assert_int_eq(b.k, 3);
	ck_assert_int_eq(b.nbs_min, 1);
	ck_assert_int_eq(b.nbs_max, 40);

	stats_agg_merge(&a, &b);
	ck_assert_int_eq(a.n, 77);
	ck_assert_int_eq(a.k, 7);
	ck_assert_int_eq(a.nbs_min, 1);
	ck_assert_int_eq(a.nbs_max, 40);
	/* all batches had the same mean, so the means must be that mean */
	ck_assert_double_eq(a.mean[0], 0.25);
	ck_assert_double_eq(a.bmean[0], 0.25);
	ck_assert_double_eq(a.bm2[0], 0.0);

	/* the other way round: min/max taken from whichever side has them */
	stats_agg_reset(&a);
	for (i = 0; i < 6; i++)
		stats_agg_add_batch(&a, counts_a[i], mean, var, STATS_VAR_UNBIASED);
	stats_agg_merge(&b, &a);
	ck_assert_int_eq(b.n, 77);
	ck_assert_int_eq(b.k, 7);
	ck_assert_int_eq(b.nbs_min, 1);
	ck_assert_int_eq(b.nbs_max, 40);

	/* a single batch: min == max == its count */
	stats_agg_reset(&a);
	stats_agg_add_batch(&a, 12, mean, var, STATS_VAR_UNBIASED);
	ck_assert_int_eq(a.nbs_min, 12);
	ck_assert_int_eq(a.nbs_max, 12);

	stats_agg_free(&a);
	stats_agg_free(&b);
}
END_TEST

/* --- (i) merges with an empty aggregate -------------------------------- */

START_TEST(test_merge_empty)
{
	const size_t channels = 4;
	struct rng r = { 31337 };
	struct dataset ds;
	struct stats_agg full, empty, empty2, seq, *leaves;
	struct agg_bytes before, before_src;
	size_t *sizes, c, i;

	sizes = random_sizes(&r, 12, 2, 50);
	ds_init(&ds, channels, sizes, 12);
	for (c = 0; c < channels; c++)
		ds_fill_normal(&ds, &r, c, 10.0 * (double)c, 1.0);
	agg_new(&full, channels);
	agg_new(&empty, channels);
	agg_new(&empty2, channels);
	add_ds_batches(&full, &ds, NULL, ds.nb, STATS_VAR_UNBIASED);

	/* empty into full: nothing changes, on either side */
	agg_snap(&full, &before);
	agg_snap(&empty, &before_src);
	stats_agg_merge(&full, &empty);
	ck_assert(agg_unchanged(&full, &before));
	ck_assert(agg_unchanged(&empty, &before_src));
	free(before.arr);
	free(before_src.arr);

	/* empty into empty: still empty */
	stats_agg_merge(&empty, &empty2);
	ck_assert_int_eq(empty.k, 0);
	ck_assert_int_eq(empty.n, 0);
	ck_assert_int_eq(empty.nbs_min, 0);
	ck_assert_int_eq(empty.nbs_max, 0);
	stats_agg_free(&empty2);

	/* full into empty: an exact copy, source untouched */
	agg_snap(&full, &before_src);
	stats_agg_merge(&empty, &full);
	ck_assert(agg_unchanged(&full, &before_src));
	ck_assert_msg(agg_same_bits(&empty, &full), "merge into empty is not a copy");
	ck_assert_ptr_ne(empty.mean, full.mean);
	check_population(&empty, &ds, 1e-12L, 1e-12L);
	free(before_src.arr);

	/*
	 * A tree whose leaves are half empty (workers that saw nothing) must
	 * equal the same tree without them, bit for bit, and the data.
	 */
	leaves = calloc(2 * ds.nb, sizeof(*leaves));
	ck_assert(leaves != NULL);
	for (i = 0; i < 2 * ds.nb; i++) {
		agg_new(&leaves[i], channels);
		if (i % 2)
			add_ds_batch(&leaves[i], &ds, i / 2, STATS_VAR_UNBIASED);
	}
	merge_tree(leaves, 2 * ds.nb);
	agg_new(&seq, channels);
	for (i = 0; i < ds.nb; i++) {
		agg_new(&empty2, channels);
		add_ds_batch(&empty2, &ds, i, STATS_VAR_UNBIASED);
		stats_agg_merge(&seq, &empty2);
		stats_agg_free(&empty2);
	}
	check_agg_close(&leaves[0], &seq, 1e-12L);
	check_population(&leaves[0], &ds, 1e-12L, 1e-12L);
	for (i = 0; i < 2 * ds.nb; i++)
		stats_agg_free(&leaves[i]);
	free(leaves);

	stats_agg_free(&seq);
	stats_agg_free(&full);
	stats_agg_free(&empty);
	free(sizes);
	ds_free(&ds);
}
END_TEST

/* --- (j) many channels of different location and scale ------------------ */

START_TEST(test_multichannel)
{
	const size_t channels = 64, nb = 30;
	struct rng r = { 64 };
	struct dataset ds;
	struct stats_agg a, w[4];
	size_t *sizes, c, b;
	long double want;
	double got;

	/*
	 * Scales from 1e-4 to 1e4 and means up to 1e3 times the scale, of
	 * both signs, some exactly zero: per-channel independence and no
	 * hidden absolute tolerance.
	 */
	sizes = random_sizes(&r, nb, 2, 256);
	ds_init(&ds, channels, sizes, nb);
	for (c = 0; c < channels; c++) {
		double sigma = pow(10.0, (double)(c % 9) - 4.0);
		double ratio = c % 4 == 0 ? 0.0 : pow(10.0, (double)(c % 4));
		double sign = c % 3 == 0 ? -1.0 : 1.0;

		ds_fill_normal(&ds, &r, c, sign * ratio * sigma * 1.3, sigma);
	}

	agg_new(&a, channels);
	add_ds_batches(&a, &ds, NULL, nb, STATS_VAR_UNBIASED);
	check_population(&a, &ds, 1e-12L, 1e-12L);
	check_mean_of_batch_var(&a, &ds, 1e-12L);
	ck_assert_uint_eq(ref_batch_noise(&ds, &want), channels);
	ck_assert_int_eq(stats_batch_noise(&a, &got), 0);
	check_close(got, want, 1e-12L, want, "batch_noise", 0);

	/* the same through four workers */
	for (c = 0; c < 4; c++)
		agg_new(&w[c], channels);
	for (b = 0; b < nb; b++)
		add_ds_batch(&w[(b * 7) % 4], &ds, b, STATS_VAR_BIASED);
	stats_agg_merge(&w[2], &w[3]);
	stats_agg_merge(&w[0], &w[1]);
	stats_agg_merge(&w[2], &w[0]);
	check_agg_close(&w[2], &a, 1e-12L);
	check_population(&w[2], &ds, 1e-12L, 1e-12L);

	for (c = 0; c < 4; c++)
		stats_agg_free(&w[c]);
	stats_agg_free(&a);
	free(sizes);
	ds_free(&ds);
}
END_TEST

/* --- driver ------------------------------------------------------------ */

static Suite *stats_suite(void)
{
	Suite *s = suite_create("stats_merge");
	TCase *tc;

	tc = tcase_create("lifecycle");
	tcase_add_test(tc, test_init_free_reset);
	tcase_add_test(tc, test_bookkeeping);
	tcase_add_test(tc, test_count_zero_noop);
	suite_add_tcase(s, tc);

	tc = tcase_create("population");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_split_invariance, 0, 2);
	tcase_add_test(tc, test_order_invariance);
	tcase_add_loop_test(tc, test_large_mean, 0, 2);
	tcase_add_test(tc, test_biased_unbiased_same);
	tcase_add_test(tc, test_multichannel);
	suite_add_tcase(s, tc);

	tc = tcase_create("merge");
	tcase_add_test(tc, test_merge_empty);
	suite_add_tcase(s, tc);

	return s;
}

CHECK_MAIN(stats_suite)
