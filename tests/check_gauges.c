/*
 * check_gauges: the thread behind the drift gauges (gauges.c, docs/DESIGN.md
 * "Drift gauges") on a real store: a stored upload reaches the /metrics text
 * with /compare's own value, without a scrape computing anything; passes
 * are an interval apart and a pair is recomputed once per pass however many
 * uploads it got; a full pending set becomes one walk over the stored pairs;
 * stopping is idempotent. Every wait polls with a deadline.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "gauges.h"
#include "metrics.h"
#include "query.h"
#include "store.h"
#include "store_testutil.h"
#include "check_main.h"

static char dir[256];
static char dbpath[300];

static void setup(void)
{
	tu_tmpdir_make(dir, sizeof(dir), dbpath, sizeof(dbpath), "check_gauges");
}

static void teardown(void)
{
	tu_tmpdir_remove(dir);
}

/* A store whose writer tells g of what it stores. */
static struct store *open_with(struct gauges *g)
{
	struct store_options opt;
	struct store *s = NULL;
	struct bn_error err;

	store_options_default(&opt);
	opt.sync_full = false;
	opt.changed = gauges_changed;
	opt.changed_ctx = g;
	if (store_open(dbpath, &opt, &s, &err) < 0)
		ck_abort_msg("store_open: %s", err.message);
	return s;
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void pause_ms(long ms)
{
	struct timespec t = { 0, ms * 1000000L };

	nanosleep(&t, NULL);
}

/* The whole /metrics text; the caller frees it. */
static char *render_text(void)
{
	struct metrics_sources src = { 0 };
	struct bn_error err;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(metrics_render(f, &src, &err), 0);
	fclose(f);
	return text;
}

/* The value of series `series` in the text, or NAN when it has none. */
static double gauge(const char *series)
{
	char *text = render_text(), *p = text;
	size_t n = strlen(series);
	double v = NAN;

	while ((p = strstr(p, series)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ') {
			v = strtod(p + n + 1, NULL);
			break;
		}
		p += n;
	}
	free(text);
	return v;
}

/* overall.kl of GET /compare?step=...&window=auto of run r1, as its reply says. */
static double compare_kl(struct store *s, const char *step)
{
	struct query_params p = { .step = step, .window = "auto" };
	struct store_reader *r;
	struct bn_error err;
	json_t *out = NULL;
	double kl;

	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	if (query_compare(r, NULL, "r1", &p, &out, &err) < 0)
		ck_abort_msg("compare: %s", err.message);
	kl = json_number_value(json_object_get(json_object_get(out, "overall"), "kl"));
	json_decref(out);
	store_reader_put(s, r);
	return kl;
}

/* An upload of r1 at step, seq, with an EMA whose mean is ema. */
static void put(struct store *s, int step, int seq, double ema)
{
	char doc[512];

	snprintf(doc, sizeof(doc),
		 "{\"worker\":\"w0\",\"step\":%d,\"seq\":%d,\"layers\":{\"bn\":{\"count\":4,"
		 "\"mean\":[%d,%g],\"var\":[2,4],\"ema_mean\":[%g,1],\"ema_var\":[1,2]}}}",
		 step, seq, seq, 0.5 * seq, ema);
	ck_assert_int_eq(tu_put(s, doc).status, 200);
}

#define KL_R1 "bnstat_ema_drift_kl{run=\"r1\",domain=\"default\"}"
#define DEADLINE_S 20.0

/* Wait until the passes reach n; the stats then. */
static struct gauges_stats wait_passes(struct gauges *g, unsigned long long n)
{
	double deadline = now_s() + DEADLINE_S;
	struct gauges_stats st;

	for (;;) {
		gauges_stats(g, &st);
		if (st.passes >= n)
			return st;
		ck_assert_msg(now_s() < deadline, "%llu passes, not %llu", st.passes, n);
		pause_ms(1);
	}
}

/* Wait until the gauge of r1 is kl, exactly. */
static void wait_kl(double kl)
{
	double deadline = now_s() + DEADLINE_S;

	while (gauge(KL_R1) != kl) {
		ck_assert_msg(now_s() < deadline, "the gauge is %.17g, /compare says %.17g",
			      gauge(KL_R1), kl);
		pause_ms(1);
	}
}

START_TEST(test_follows_uploads)
{
	struct gauges *g = gauges_new(10);
	struct store *s;
	struct bn_error err;

	ck_assert_ptr_nonnull(g);
	s = open_with(g);
	ck_assert_int_eq(gauges_start(g, s, &err), 0);
	put(s, 1, 0, 0.25);
	put(s, 1, 1, 0.25);
	wait_kl(compare_kl(s, "1"));
	/* a later step with an EMA moves it there */
	put(s, 2, 0, 3.0);
	put(s, 2, 1, 3.0);
	ck_assert(compare_kl(s, "2") != compare_kl(s, "1"));
	wait_kl(compare_kl(s, "2"));
	gauges_stop(g);
	store_close(s);
	gauges_free(g);
}
END_TEST

/* Uploads in a burst: a recomputation per pass, not per upload. */
START_TEST(test_coalescing)
{
	const unsigned interval_ms = 300;
	struct gauges *g = gauges_new(interval_ms);
	struct gauges_stats s0, s1;
	struct store *s;
	struct bn_error err;
	double t0, elapsed;
	int seq;

	s = open_with(g);
	ck_assert_int_eq(gauges_start(g, s, &err), 0);
	s0 = wait_passes(g, 1); /* the start's walk, over nothing */
	t0 = now_s();
	for (seq = 0; seq < 30; seq++)
		put(s, 1, seq, 0.125 * seq);
	elapsed = now_s() - t0;
	wait_kl(compare_kl(s, "1"));
	gauges_stats(g, &s1);
	/* passes at least interval_ms apart, the pair once in each (begun: the
	 * pass that set the gauge may not have ended yet) */
	ck_assert_uint_le(s1.pairs - s0.pairs, s1.begun - s0.begun);
	ck_assert_uint_le(s1.begun - s0.begun,
			  (unsigned long long)(elapsed * 1000.0 / interval_ms) + 2);
	ck_assert_uint_lt(s1.pairs - s0.pairs, 30);
	gauges_stop(g);
	store_close(s);
	gauges_free(g);
}
END_TEST

/* More pairs than the pending set holds: one walk over what is stored instead. */
START_TEST(test_overflow_walks_the_store)
{
	struct gauges *g = gauges_new(2000);
	struct gauges_stats s0, s1;
	struct store *s;
	struct bn_error err;
	char run[32];
	int i;

	s = open_with(g);
	put(s, 1, 0, 0.25);
	put(s, 1, 1, 0.25);
	ck_assert_int_eq(gauges_start(g, s, &err), 0);
	s0 = wait_passes(g, 1); /* the start's walk: r1 */
	ck_assert_uint_eq(s0.pairs, 1);
	ck_assert(gauge(KL_R1) == compare_kl(s, "1"));
	/* the next pass is 2 s after the first began: these all wait for it */
	for (i = 0; i < GAUGES_PENDING_MAX + 10; i++) {
		snprintf(run, sizeof(run), "x%05d", i);
		gauges_changed(g, run, "default");
	}
	s1 = wait_passes(g, s0.passes + 1);
	ck_assert_uint_eq(s1.pairs - s0.pairs, 1); /* r1 again, none of the x runs */
	ck_assert(gauge(KL_R1) == compare_kl(s, "1"));
	gauges_stop(g);
	gauges_stop(g); /* idempotent */
	store_close(s);
	gauges_free(g);
}
END_TEST

START_TEST(test_never_started)
{
	struct gauges *g = gauges_new(1000);

	ck_assert_ptr_nonnull(g);
	gauges_changed(g, "r1", "default"); /* noted, never computed */
	gauges_stop(g);
	gauges_free(g);
	gauges_free(NULL);
}
END_TEST

static Suite *gauges_suite(void)
{
	Suite *s = suite_create("gauges");
	TCase *tc = tcase_create("thread");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_follows_uploads);
	tcase_add_test(tc, test_coalescing);
	tcase_add_test(tc, test_overflow_walks_the_store);
	tcase_add_test(tc, test_never_started);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(gauges_suite)
