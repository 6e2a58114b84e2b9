/*
 * check_query_slide: the sliding precise window (src/query_slide.c) against
 * a direct merge of the entries of each window, in long double with
 * two-pass formulas, over walks with gaps between steps and windows from
 * one step to wider than the walk; and the array EMA of stats
 * (stats_unbiased_vars, stats_ema_update) against stats_ema_step, bit for
 * bit, since the replay uses the one where it used the other.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/stats.h"
#include "check_main.h"
#include "query_private.h"

#define CH 3
#define N_ENTRIES 300

struct entry {
	int64_t step, n, batches;
	double mean[CH], m2[CH];
};

static struct entry entries[N_ENTRIES];
static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static double unit(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) / 9007199254740992.0;
}

static void make_entries(void)
{
	int64_t step = 0;
	size_t i, c;

	for (i = 0; i < N_ENTRIES; i++) {
		step += 1 + (unit() < 0.2 ? (int64_t)(unit() * 6) : 0); /* gaps */
		entries[i].step = step;
		entries[i].n = 2 + (int64_t)(unit() * 50);
		entries[i].batches = 1 + (int64_t)(unit() * 4);
		for (c = 0; c < CH; c++) {
			entries[i].mean[c] = 100.0 * (double)c + unit() - 0.5 + 0.01 * (double)step;
			entries[i].m2[c] = (0.5 + unit()) * (double)(entries[i].n - 1);
		}
	}
}

/* The window (step - w, step] ending at entry i, merged directly. */
static void direct(size_t i, int64_t w, double *mean, double *var)
{
	size_t c, j;

	for (c = 0; c < CH; c++) {
		long double n = 0, sum = 0, m, m2 = 0;

		for (j = 0; j <= i; j++)
			if (entries[j].step > entries[i].step - w) {
				n += entries[j].n;
				sum += (long double)entries[j].n * entries[j].mean[c];
			}
		m = sum / n;
		for (j = 0; j <= i; j++)
			if (entries[j].step > entries[i].step - w) {
				long double d = entries[j].mean[c] - m;

				m2 += entries[j].m2[c] + (long double)entries[j].n * d * d;
			}
		mean[c] = (double)m;
		var[c] = (double)(m2 / n);
	}
}

static void check_window(int64_t w, size_t every)
{
	struct query_slide_rule rule = { .window = w };
	struct query_slide s;
	double mean[CH], var[CH], dm[CH], dv[CH];
	size_t i, c;

	ck_assert_int_eq(query_slide_init(&s, CH, &rule), 0);
	for (i = 0; i < N_ENTRIES; i++) {
		ck_assert_int_eq(query_slide_push(&s, entries[i].step, entries[i].n,
						  entries[i].mean, entries[i].m2),
				 0);
		if (i % every != 0 && i != N_ENTRIES - 1)
			continue; /* asked for some windows only: the others stay lazy */
		query_slide_estimate(&s, mean, var);
		direct(i, w, dm, dv);
		for (c = 0; c < CH; c++) {
			ck_assert_msg(fabs(mean[c] - dm[c]) <= 1e-12 * fabs(dm[c]),
				      "window %lld entry %zu mean[%zu] %.17g vs %.17g",
				      (long long)w, i, c, mean[c], dm[c]);
			ck_assert_msg(fabs(var[c] - dv[c]) <= 1e-12 * dv[c],
				      "window %lld entry %zu var[%zu] %.17g vs %.17g", (long long)w,
				      i, c, var[c], dv[c]);
		}
	}
	query_slide_free(&s);
}

START_TEST(test_slide_equals_direct_merge)
{
	static const int64_t windows[] = { 1, 2, 3, 7, 64, 100000 };
	size_t k, every;

	make_entries();
	for (k = 0; k < sizeof(windows) / sizeof(windows[0]); k++)
		for (every = 1; every <= 13; every += 6)
			check_window(windows[k], every);
}
END_TEST

START_TEST(test_slide_wanted)
{
	struct query_slide_rule rule = { .window = 5 };
	struct query_slide s;

	ck_assert_int_eq(query_slide_init(&s, CH, &rule), 0);
	ck_assert(query_slide_wanted(&s, 10, 10));
	ck_assert(query_slide_wanted(&s, 6, 10));
	ck_assert(!query_slide_wanted(&s, 5, 10));
	query_slide_free(&s);
}
END_TEST

START_TEST(test_ema_update_is_ema_step)
{
	double mean[CH], m2[CH], x[CH], rm[CH], rv[CH], em[CH], ev[CH];
	static const double momenta[] = { 0.3, 0.1, 0.01, 0.001, 1.0 };
	static const int64_t counts[] = { 1, 2, 7, 200704 };
	size_t k, j, c, t;

	for (c = 0; c < CH; c++)
		rm[c] = em[c] = 0.0, rv[c] = ev[c] = 1.0;
	for (t = 0; t < 50; t++)
		for (k = 0; k < sizeof(momenta) / sizeof(momenta[0]); k++)
			for (j = 0; j < sizeof(counts) / sizeof(counts[0]); j++) {
				for (c = 0; c < CH; c++) {
					mean[c] = unit() * 10.0 - 5.0;
					m2[c] = unit() * 3.0 * (double)counts[j];
				}
				stats_unbiased_vars(CH, counts[j], m2, x);
				stats_ema_update(CH, momenta[k], mean, x, rm, rv);
				for (c = 0; c < CH; c++) {
					stats_ema_step(momenta[k], counts[j], mean[c], m2[c],
						       &em[c], &ev[c]);
					ck_assert(memcmp(&rm[c], &em[c], sizeof(double)) == 0);
					ck_assert(memcmp(&rv[c], &ev[c], sizeof(double)) == 0);
				}
			}
}
END_TEST

static Suite *slide_suite(void)
{
	Suite *s = suite_create("query_slide");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_slide_equals_direct_merge);
	tcase_add_test(tc, test_slide_wanted);
	tcase_add_test(tc, test_ema_update_is_ema_step);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(slide_suite)
