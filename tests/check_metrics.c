/*
 * check_metrics: the Prometheus text metrics.c writes, the only writer of
 * it: counters and histograms, the gauges fed through struct
 * metrics_sources, label escaping, a failing run walk, and the bounded
 * counts of refusals of non-finite values, and the drift gauges: set,
 * replaced, forgotten with their run, bounded (docs/OPERATIONS.md,
 * "Monitoring").
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/error.h"
#include "metrics.h"
#include "check_main.h"

/* A walk over a fixed list of runs; fail_at >= 0 stops it there with -EIO. */
struct fake_runs {
	const struct metrics_run *runs;
	size_t n;
	long fail_at;
};

static int walk_fake(void *ctx, metrics_emit_run_fn emit, void *emit_ctx, struct bn_error *err)
{
	const struct fake_runs *fr = ctx;
	size_t i;
	int rc;

	for (i = 0; i < fr->n; i++) {
		if ((long)i == fr->fail_at)
			return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "walk failed");
		rc = emit(emit_ctx, &fr->runs[i]);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* The text metrics_render() writes for src; rc gets its return value. */
static char *render(const struct metrics_sources *src, int *rc)
{
	struct bn_error err;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	ck_assert_ptr_nonnull(f);
	bn_error_clear(&err);
	*rc = metrics_render(f, src, &err);
	fclose(f);
	return text;
}

/* The value of the sample line that starts with `series ` in text. */
static double sample(const char *text, const char *series)
{
	size_t n = strlen(series);
	const char *p = text;

	while ((p = strstr(p, series)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		p += n;
	}
	ck_abort_msg("no sample %s in:\n%s", series, text);
	return 0;
}

START_TEST(test_counters_and_histograms)
{
	struct metrics_sources src = { 0 };
	double ok0, acc0, dup0, other0, inf0, le001, bytes0;
	char *text;
	int rc;

	/* counters are process-wide: measure differences */
	text = render(&src, &rc);
	ck_assert_int_eq(rc, 0);
	ok0 = sample(text, "bnstat_commits_total{result=\"ok\"}");
	acc0 = sample(text, "bnstat_uploads_total{outcome=\"accepted\"}");
	dup0 = sample(text, "bnstat_uploads_total{outcome=\"duplicate\"}");
	other0 = sample(text, "bnstat_uploads_total{outcome=\"other\"}");
	inf0 = sample(text, "bnstat_commit_seconds_bucket{le=\"+Inf\"}");
	le001 = sample(text, "bnstat_commit_seconds_bucket{le=\"0.001\"}");
	bytes0 = sample(text, "bnstat_received_bytes_total");
	free(text);

	metrics_upload("accepted");
	metrics_upload("accepted");
	metrics_upload("duplicate");
	metrics_upload("no-such-outcome");
	metrics_bytes(1000);
	metrics_commit(0.0005, 3, 1);
	metrics_commit(2.0, 1, 0);

	text = render(&src, &rc);
	ck_assert_int_eq(rc, 0);
	ck_assert(sample(text, "bnstat_uploads_total{outcome=\"accepted\"}") == acc0 + 2);
	ck_assert(sample(text, "bnstat_uploads_total{outcome=\"duplicate\"}") == dup0 + 1);
	ck_assert(sample(text, "bnstat_uploads_total{outcome=\"other\"}") == other0 + 1);
	ck_assert(sample(text, "bnstat_received_bytes_total") == bytes0 + 1000);
	ck_assert(sample(text, "bnstat_commits_total{result=\"ok\"}") == ok0 + 1);
	/* cumulative buckets: 0.5 ms lands in le=0.001 and every bucket above */
	ck_assert(sample(text, "bnstat_commit_seconds_bucket{le=\"0.001\"}") == le001 + 1);
	ck_assert(sample(text, "bnstat_commit_seconds_bucket{le=\"+Inf\"}") == inf0 + 2);
	ck_assert(sample(text, "bnstat_commit_seconds_count") == inf0 + 2);
	/* no run walk: no run gauges */
	ck_assert_ptr_null(strstr(text, "bnstat_runs"));
	free(text);
}
END_TEST

START_TEST(test_gauges_and_runs)
{
	const struct metrics_run runs[] = {
		{ "a", true, 7, 123456 },
		{ "empty", false, 0, 0 },
		{ "b\"q\\z\nx", true, 12, 8 },
	};
	struct fake_runs fr = { runs, 3, -1 };
	struct metrics_sources src = { 5, 4096, walk_fake, &fr };
	char *text;
	int rc;

	text = render(&src, &rc);
	ck_assert_int_eq(rc, 0);
	ck_assert(sample(text, "bnstat_queue_depth") == 5);
	ck_assert(sample(text, "bnstat_database_bytes") == 4096);
	/* every run counts; only runs with data have a last step */
	ck_assert(sample(text, "bnstat_runs") == 3);
	ck_assert(sample(text, "bnstat_run_last_step{run=\"a\"}") == 7);
	ck_assert_ptr_null(strstr(text, "run=\"empty\""));
	/* a label value has its backslash, quote and newline escaped */
	ck_assert(sample(text, "bnstat_run_last_step{run=\"b\\\"q\\\\z\\nx\"}") == 12);
	/* the family's TYPE line comes before its samples */
	ck_assert(strstr(text, "# TYPE bnstat_run_last_step gauge") <
		  strstr(text, "bnstat_run_last_step{"));
	/* the bytes per run, a family of its own after the last steps */
	ck_assert(sample(text, "bnstat_run_bytes{run=\"a\"}") == 123456);
	ck_assert(sample(text, "bnstat_run_bytes{run=\"b\\\"q\\\\z\\nx\"}") == 8);
	ck_assert(strstr(text, "# TYPE bnstat_run_bytes gauge") <
		  strstr(text, "bnstat_run_bytes{"));
	ck_assert(strstr(text, "bnstat_run_last_step{run=\"b") <
		  strstr(text, "# TYPE bnstat_run_bytes"));
	free(text);
}
END_TEST

START_TEST(test_database_state_and_free_space)
{
	struct metrics_sources src = { 0 };
	char *text;
	int rc;

	/* without a state and a known free space, neither is rendered */
	text = render(&src, &rc);
	ck_assert_int_eq(rc, 0);
	ck_assert_ptr_null(strstr(text, "bnstat_database_state"));
	ck_assert_ptr_null(strstr(text, "bnstat_disk_free_bytes "));
	ck_assert(sample(text, "bnstat_disk_free_warn_bytes") == 0);
	free(text);

	src.database_state = "read_only";
	src.disk_free_known = true;
	src.disk_free_bytes = 12345;
	src.disk_free_warn_bytes = 1 << 30;
	text = render(&src, &rc);
	ck_assert_int_eq(rc, 0);
	/* one series per state, 1 for the one now */
	ck_assert(sample(text, "bnstat_database_state{state=\"writable\"}") == 0);
	ck_assert(sample(text, "bnstat_database_state{state=\"read_only\"}") == 1);
	ck_assert(sample(text, "bnstat_database_state{state=\"damaged\"}") == 0);
	ck_assert(strstr(text, "# TYPE bnstat_database_state gauge") <
		  strstr(text, "bnstat_database_state{"));
	ck_assert(sample(text, "bnstat_disk_free_bytes") == 12345);
	ck_assert(sample(text, "bnstat_disk_free_warn_bytes") == 1 << 30);
	free(text);
}
END_TEST

START_TEST(test_failed_walk)
{
	const struct metrics_run runs[] = { { "a", true, 1, 0 }, { "b", true, 2, 0 } };
	struct fake_runs fr = { runs, 2, 1 };
	struct metrics_sources src = { 0, 0, walk_fake, &fr };
	char *text;
	int rc;

	text = render(&src, &rc);
	ck_assert_int_lt(rc, 0);
	/* nothing of the half-done walk is written */
	ck_assert_ptr_null(strstr(text, "bnstat_run_last_step{"));
	free(text);
}
END_TEST

/* Whether text holds a line that starts with `series `. */
static bool has_sample(const char *text, const char *series)
{
	size_t n = strlen(series);
	const char *p = text;

	while ((p = strstr(p, series)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ')
			return true;
		p += n;
	}
	return false;
}

/* Checks run each test in a process of its own: the counts start empty. */
START_TEST(test_nonfinite_counter)
{
	struct metrics_sources src = { 0 };
	char *text;
	int rc;

	text = render(&src, &rc);
	ck_assert_int_eq(rc, 0);
	/* the family is always described, and has no sample yet */
	ck_assert_ptr_nonnull(strstr(text, "# TYPE bnstat_refused_nonfinite_total counter\n"));
	ck_assert_ptr_null(strstr(text, "bnstat_refused_nonfinite_total{"));
	free(text);

	/* the count per (run, layer) is returned, for the logs */
	ck_assert_uint_eq(metrics_refused_nonfinite("exp1", "layer1.bn"), 1);
	ck_assert_uint_eq(metrics_refused_nonfinite("exp1", "layer1.bn"), 2);
	ck_assert_uint_eq(metrics_refused_nonfinite("exp1", "layer2.bn"), 1);
	ck_assert_uint_eq(metrics_refused_nonfinite("b\"q\\z\nx", "layer1.bn"), 1);
	ck_assert_uint_eq(metrics_refused_nonfinite("a-run", "layer1.bn"), 1);

	text = render(&src, &rc);
	ck_assert_int_eq(rc, 0);
	/* per run, whatever the layer */
	ck_assert(sample(text, "bnstat_refused_nonfinite_total{run=\"exp1\"}") == 3);
	ck_assert(sample(text, "bnstat_refused_nonfinite_total{run=\"a-run\"}") == 1);
	/* label values escaped */
	ck_assert(sample(text, "bnstat_refused_nonfinite_total{run=\"b\\\"q\\\\z\\nx\"}") == 1);
	/* in run order, after the TYPE line */
	ck_assert(strstr(text, "# TYPE bnstat_refused_nonfinite_total") <
		  strstr(text, "bnstat_refused_nonfinite_total{run=\"a-run\"}"));
	ck_assert(strstr(text, "{run=\"a-run\"}") < strstr(text, "{run=\"b\\"));
	ck_assert(strstr(text, "{run=\"b\\") < strstr(text, "{run=\"exp1\"}"));
	ck_assert(!has_sample(text, "bnstat_refused_nonfinite_total{run=\"" METRICS_NONFINITE_OTHER
				    "\"}"));
	free(text);

	/* a deleted run's series disappears, the others stay */
	metrics_forget_run("exp1");
	metrics_forget_run("no-such-run");
	text = render(&src, &rc);
	ck_assert(!has_sample(text, "bnstat_refused_nonfinite_total{run=\"exp1\"}"));
	ck_assert(sample(text, "bnstat_refused_nonfinite_total{run=\"a-run\"}") == 1);
	free(text);
	/* and a run of that name starts again from nothing */
	ck_assert_uint_eq(metrics_refused_nonfinite("exp1", "layer1.bn"), 1);
	text = render(&src, &rc);
	ck_assert(sample(text, "bnstat_refused_nonfinite_total{run=\"exp1\"}") == 1);
	free(text);
}
END_TEST

/* Past METRICS_NONFINITE_RUNS runs, the others count under one label. */
START_TEST(test_nonfinite_bounds)
{
	struct metrics_sources src = { 0 };
	char run[32], layer[32], *text;
	int rc;

	for (int i = 0; i < METRICS_NONFINITE_RUNS; i++) {
		snprintf(run, sizeof(run), "r%05d", i);
		ck_assert_uint_eq(metrics_refused_nonfinite(run, "bn"), 1);
	}
	/* two runs too many: they share the overflow series */
	ck_assert_uint_eq(metrics_refused_nonfinite("late1", "bn"), 1);
	ck_assert_uint_eq(metrics_refused_nonfinite("late2", "bn"), 1);
	ck_assert_uint_eq(metrics_refused_nonfinite("late2", "bn"), 2);
	text = render(&src, &rc);
	ck_assert_int_eq(rc, 0);
	ck_assert(sample(text, "bnstat_refused_nonfinite_total{run=\"r00000\"}") == 1);
	ck_assert(sample(text, "bnstat_refused_nonfinite_total{run=\"r01023\"}") == 1);
	ck_assert(!has_sample(text, "bnstat_refused_nonfinite_total{run=\"late1\"}"));
	ck_assert(sample(text, "bnstat_refused_nonfinite_total{run=\"" METRICS_NONFINITE_OTHER
			       "\"}") == 3);
	free(text);

	/* a deleted run makes room; the overflow count never goes back */
	metrics_forget_run("r00000");
	ck_assert_uint_eq(metrics_refused_nonfinite("late1", "bn"), 2);
	text = render(&src, &rc);
	ck_assert(sample(text, "bnstat_refused_nonfinite_total{run=\"late1\"}") == 1);
	ck_assert(!has_sample(text, "bnstat_refused_nonfinite_total{run=\"r00000\"}"));
	ck_assert(sample(text, "bnstat_refused_nonfinite_total{run=\"" METRICS_NONFINITE_OTHER
			       "\"}") == 3);
	free(text);

	/*
	 * Past METRICS_NONFINITE_LAYERS pairs, the new ones share one count.
	 * METRICS_NONFINITE_RUNS + 1 pairs are held now (the runs' "bn", with
	 * late1's and late2's, without r00000's): fill up the table.
	 */
	for (int i = 0; i < METRICS_NONFINITE_LAYERS - METRICS_NONFINITE_RUNS - 1; i++) {
		snprintf(layer, sizeof(layer), "bn%d", i);
		ck_assert_uint_eq(metrics_refused_nonfinite("r00001", layer), 1);
	}
	ck_assert_uint_eq(metrics_refused_nonfinite("r00001", "one-more"), 1);
	ck_assert_uint_eq(metrics_refused_nonfinite("r00002", "one-more"), 2);
	/* a pair already counted keeps its own */
	ck_assert_uint_eq(metrics_refused_nonfinite("r00001", "bn0"), 2);
	/* forgetting a run frees its pairs */
	metrics_forget_run("r00001");
	ck_assert_uint_eq(metrics_refused_nonfinite("r00002", "one-more"), 1);
}
END_TEST

/* The drift gauges of one pair: kl, worst layer, batch noise. */
static struct metrics_drift drift(double kl, const char *layer, double worst, double noise)
{
	struct metrics_drift d = { .has_drift = true,
				   .kl = kl,
				   .worst_layer = layer,
				   .worst_kl = worst,
				   .has_noise = true,
				   .batch_noise = noise };

	return d;
}

START_TEST(test_drift_gauges)
{
	struct metrics_sources src = { 0 };
	struct metrics_drift d;
	char *text;
	int rc;

	text = render(&src, &rc);
	ck_assert_int_eq(rc, 0);
	/* the families are always described, and have no sample yet */
	ck_assert_ptr_nonnull(strstr(text, "# TYPE bnstat_ema_drift_kl gauge\n"));
	ck_assert_ptr_nonnull(strstr(text, "# TYPE bnstat_ema_drift_worst_kl gauge\n"));
	ck_assert_ptr_nonnull(strstr(text, "# TYPE bnstat_batch_noise gauge\n"));
	ck_assert_ptr_null(strstr(text, "bnstat_ema_drift_kl{"));
	ck_assert_ptr_null(strstr(text, "bnstat_batch_noise{"));
	free(text);

	d = drift(0.125, "layer1.0.bn1", 0.5, 0.03125);
	ck_assert_int_eq(metrics_drift_set("exp1", "default", metrics_drift_epoch(), &d), 0);
	d = drift(0.1 + 0.2, "x\"y\\z\nw", 1e-300, 7.0);
	ck_assert_int_eq(metrics_drift_set("exp1", "b\"q", metrics_drift_epoch(), &d), 0);
	d = drift(1.0, "bn", 2.0, 3.0);
	ck_assert_int_eq(metrics_drift_set("a-run", "val", metrics_drift_epoch(), &d), 0);
	text = render(&src, &rc);
	ck_assert_int_eq(rc, 0);
	ck_assert(sample(text, "bnstat_ema_drift_kl{run=\"exp1\",domain=\"default\"}") == 0.125);
	ck_assert(sample(text, "bnstat_ema_drift_worst_kl{run=\"exp1\",domain=\"default\","
			       "layer=\"layer1.0.bn1\"}") == 0.5);
	ck_assert(sample(text, "bnstat_batch_noise{run=\"exp1\",domain=\"default\"}") == 0.03125);
	/* exact doubles, escaped labels */
	ck_assert(sample(text, "bnstat_ema_drift_kl{run=\"exp1\",domain=\"b\\\"q\"}") == 0.1 + 0.2);
	ck_assert(sample(text, "bnstat_ema_drift_worst_kl{run=\"exp1\",domain=\"b\\\"q\","
			       "layer=\"x\\\"y\\\\z\\nw\"}") == 1e-300);
	/* by run, then domain, each family after its TYPE line */
	ck_assert(strstr(text, "# TYPE bnstat_ema_drift_kl") <
		  strstr(text, "bnstat_ema_drift_kl{run=\"a-run\""));
	ck_assert(strstr(text, "bnstat_ema_drift_kl{run=\"a-run\"") <
		  strstr(text, "bnstat_ema_drift_kl{run=\"exp1\",domain=\"b"));
	ck_assert(strstr(text, "bnstat_ema_drift_kl{run=\"exp1\",domain=\"b") <
		  strstr(text, "bnstat_ema_drift_kl{run=\"exp1\",domain=\"default\""));
	ck_assert(strstr(text, "# TYPE bnstat_batch_noise") <
		  strstr(text, "bnstat_batch_noise{run=\"a-run\""));
	free(text);

	/* a new worst layer replaces the old series, which disappears */
	d = drift(0.25, "layer4.2.bn3", 0.75, 0.0625);
	ck_assert_int_eq(metrics_drift_set("exp1", "default", metrics_drift_epoch(), &d), 0);
	text = render(&src, &rc);
	ck_assert(sample(text, "bnstat_ema_drift_worst_kl{run=\"exp1\",domain=\"default\","
			       "layer=\"layer4.2.bn3\"}") == 0.75);
	ck_assert_ptr_null(strstr(text, "layer1.0.bn1"));
	ck_assert(sample(text, "bnstat_ema_drift_kl{run=\"exp1\",domain=\"default\"}") == 0.25);
	free(text);

	/* no EMA any more: batch noise only; no finite layer: no worst series */
	d = drift(0, NULL, 0, 0.5);
	d.has_drift = false;
	ck_assert_int_eq(metrics_drift_set("exp1", "default", metrics_drift_epoch(), &d), 0);
	d = drift(NAN, NULL, 0, INFINITY);
	ck_assert_int_eq(metrics_drift_set("a-run", "val", metrics_drift_epoch(), &d), 0);
	text = render(&src, &rc);
	ck_assert(!has_sample(text, "bnstat_ema_drift_kl{run=\"exp1\",domain=\"default\"}"));
	ck_assert_ptr_null(strstr(text, "layer4.2.bn3"));
	ck_assert(sample(text, "bnstat_batch_noise{run=\"exp1\",domain=\"default\"}") == 0.5);
	ck_assert_ptr_nonnull(
		strstr(text, "\nbnstat_ema_drift_kl{run=\"a-run\",domain=\"val\"} NaN\n"));
	ck_assert_ptr_nonnull(
		strstr(text, "\nbnstat_batch_noise{run=\"a-run\",domain=\"val\"} +Inf\n"));
	ck_assert_ptr_null(strstr(text, "bnstat_ema_drift_worst_kl{run=\"a-run\""));
	free(text);

	/* neither drift nor noise, or cleared: the pair has no series */
	d.has_drift = d.has_noise = false;
	ck_assert_int_eq(metrics_drift_set("a-run", "val", metrics_drift_epoch(), &d), 0);
	metrics_drift_clear("exp1", "default");
	metrics_drift_clear("no-such-run", "default");
	text = render(&src, &rc);
	ck_assert_ptr_null(strstr(text, "run=\"a-run\""));
	ck_assert_ptr_null(strstr(text, "domain=\"default\""));
	ck_assert(sample(text, "bnstat_batch_noise{run=\"exp1\",domain=\"b\\\"q\"}") == 7.0);
	free(text);
}
END_TEST

/* A deleted run's gauges go, and values computed across its deletion never land. */
START_TEST(test_drift_forget)
{
	struct metrics_sources src = { 0 };
	struct metrics_drift d = drift(0.5, "bn", 1.0, 0.25);
	unsigned long long epoch = metrics_drift_epoch();
	char *text;
	int rc;

	ck_assert_int_eq(metrics_drift_set("exp1", "default", epoch, &d), 0);
	ck_assert_int_eq(metrics_drift_set("exp1", "val", epoch, &d), 0);
	ck_assert_int_eq(metrics_drift_set("exp2", "default", epoch, &d), 0);
	metrics_forget_run("exp1");
	text = render(&src, &rc);
	ck_assert_ptr_null(strstr(text, "run=\"exp1\""));
	ck_assert(sample(text, "bnstat_ema_drift_kl{run=\"exp2\",domain=\"default\"}") == 0.5);
	free(text);
	/* computed before the forget: refused, whatever the run */
	ck_assert_int_eq(metrics_drift_set("exp1", "default", epoch, &d), -EAGAIN);
	ck_assert_int_eq(metrics_drift_set("exp2", "default", epoch, &d), -EAGAIN);
	text = render(&src, &rc);
	ck_assert_ptr_null(strstr(text, "run=\"exp1\""));
	free(text);
	ck_assert_uint_gt(metrics_drift_epoch(), epoch);
	ck_assert_int_eq(metrics_drift_set("exp1", "default", metrics_drift_epoch(), &d), 0);
	text = render(&src, &rc);
	ck_assert(sample(text, "bnstat_ema_drift_kl{run=\"exp1\",domain=\"default\"}") == 0.5);
	free(text);
}
END_TEST

/* Past METRICS_DRIFT_PAIRS pairs, new ones are refused; known ones still change. */
START_TEST(test_drift_bound)
{
	struct metrics_drift d = drift(0.5, "bn", 1.0, 0.25);
	unsigned long long epoch = metrics_drift_epoch();
	char run[32];

	for (int i = 0; i < METRICS_DRIFT_PAIRS; i++) {
		snprintf(run, sizeof(run), "r%05d", i);
		ck_assert_int_eq(metrics_drift_set(run, "default", epoch, &d), 0);
	}
	ck_assert_int_eq(metrics_drift_set("late", "default", epoch, &d), -ENOSPC);
	ck_assert_int_eq(metrics_drift_set("r00007", "default", epoch, &d), 0);
	metrics_drift_clear("r00007", "default");
	ck_assert_int_eq(metrics_drift_set("late", "default", epoch, &d), 0);
}
END_TEST

static Suite *metrics_suite(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("render");

	tcase_add_test(tc, test_counters_and_histograms);
	tcase_add_test(tc, test_gauges_and_runs);
	tcase_add_test(tc, test_failed_walk);
	tcase_add_test(tc, test_database_state_and_free_space);
	tcase_add_test(tc, test_nonfinite_counter);
	tcase_add_test(tc, test_nonfinite_bounds);
	tcase_add_test(tc, test_drift_gauges);
	tcase_add_test(tc, test_drift_forget);
	tcase_add_test(tc, test_drift_bound);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(metrics_suite)
