/*
 * check_query_answers: stats, compare, shift, series, runs, domains and the
 * metrics walk against references worked out by hand from the uploads of
 * tests/query_fixture.c (small dyadic numbers and counts 4 and 12, so most
 * answers are exact doubles compared bit for bit; where a logarithm, a root
 * or a division by a non-power of two comes in, the reference is computed in
 * long double from the exact inputs and compared within 1e-12).
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "query.h"
#include "replay.h"
#include "safetensors_write.h"
#include "store.h"
#include "store_testutil.h"
#include "query_testutil.h"
#include "check_main.h"

#define TOL 1e-12
START_TEST(test_stats_population_window)
{
	static const char *const layers[] = { "bn" };
	struct query_params p = { .step = "2", .window = "2", .layers = layers, .n_layers = 1 };
	struct bn_error err;
	json_t *doc, *bn, *bs;

	ck_assert_int_eq(query_stats(rd, "r1", &p, &doc, &err), 0);
	ck_assert_str_eq(json_string_value(json_object_get(doc, "domain")), "default");
	ck_assert_int_eq(json_integer_value(json_object_get(doc, "step")), 2);
	ck_assert_int_eq(json_object_size(json_object_get(doc, "layers")), 1);
	bn = qtu_layer_of(doc, "bn");
	ck_assert_int_eq(json_integer_value(json_object_get(bn, "count")), 32);
	ck_assert_int_eq(json_integer_value(json_object_get(bn, "batches")), 4);
	/*
	 * Channel 0: sum of n*mean = 2 + 18 + 4 + 24 = 48 over 32; M2 = within
	 * (3*1 + 11*1.5) * 2 = 39 plus between 4*1 + 12*0 + 4*.25 + 12*.25 = 8.
	 * Channel 1: -42/32; M2 = 8.5 + 8.375 = 16.875.
	 */
	qtu_assert_close(qtu_at(bn, "mean", 0), 1.5, 0, "mean[0]");
	qtu_assert_close(qtu_at(bn, "mean", 1), -1.3125, 0, "mean[1]");
	qtu_assert_close(qtu_at(bn, "var", 0), 47.0 / 32, 0, "var[0]");
	qtu_assert_close(qtu_at(bn, "var", 1), 16.875 / 32, 0, "var[1]");
	bs = json_object_get(bn, "batch_size");
	ck_assert_int_eq(json_integer_value(json_object_get(bs, "min")), 4);
	qtu_assert_close(qtu_num(bs, "mean"), 8.0, 0, "batch_size.mean");
	ck_assert_int_eq(json_integer_value(json_object_get(bs, "max")), 12);
	json_decref(doc);
}
END_TEST

START_TEST(test_stats_mean_of_batch_var_and_noise)
{
	struct query_params p = { .step = "2", .window = "2", .estimator = "mean_of_batch_var" };
	struct query_params p1 = { .step = "1" };
	struct bn_error err;
	json_t *doc, *bn, *head;
	double noise;

	ck_assert_int_eq(query_stats(rd, "r1", &p, &doc, &err), 0);
	ck_assert_str_eq(json_string_value(json_object_get(doc, "estimator")), "mean_of_batch_var");
	bn = qtu_layer_of(doc, "bn");
	qtu_assert_close(qtu_at(bn, "mean", 0), (0.5 + 1.5 + 1 + 2) / 4, 0, "mean[0]");
	qtu_assert_close(qtu_at(bn, "mean", 1), (-1 - 0.75 - 2 - 1.75) / 4, 0, "mean[1]");
	qtu_assert_close(qtu_at(bn, "var", 0), (1 + 1.5 + 1 + 1.5) / 4, 0, "var[0]");
	qtu_assert_close(qtu_at(bn, "var", 1), (0.5 + 0.25 + 0.5 + 0.25) / 4, 0, "var[1]");
	json_decref(doc);

	/*
	 * head.bn at step 1: batches (4, 1, 2) and (12, -0.5, 0.5): mean -2/16,
	 * M2 = 6 + 5.5 + 4*1.125^2 + 12*0.375^2 = 18.25. The batch means 1 and
	 * -0.5 have s^2 = 1.125, so the noise is sqrt(1.125 / (18.25/16)) =
	 * sqrt(72/73).
	 */
	ck_assert_int_eq(query_stats(rd, "r1", &p1, &doc, &err), 0);
	head = qtu_layer_of(doc, "head.bn");
	qtu_assert_close(qtu_at(head, "mean", 0), -0.125, 0, "mean");
	qtu_assert_close(qtu_at(head, "var", 0), 18.25 / 16, 0, "var");
	noise = (double)sqrtl(72.0L / 73.0L);
	qtu_assert_close(qtu_num(head, "batch_noise"), noise, TOL, "batch_noise");
	json_decref(doc);
}
END_TEST

START_TEST(test_stats_all_domains)
{
	struct query_params p = { .domain = "*" };
	struct bn_error err;
	json_t *doc, *bn;

	/*
	 * The latest step of any domain is 2; bn there: (4, 1, 1), (12, 2, 1.5)
	 * and val's (4, 2, 2): mean 36/20, M2 = 3 + 16.5 + 6 + 4*.64 + 12*.04 +
	 * 4*.04 = 28.7.
	 */
	ck_assert_int_eq(query_stats(rd, "r1", &p, &doc, &err), 0);
	ck_assert_int_eq(json_integer_value(json_object_get(doc, "step")), 2);
	bn = qtu_layer_of(doc, "bn");
	ck_assert_int_eq(json_integer_value(json_object_get(bn, "count")), 20);
	ck_assert_int_eq(json_integer_value(json_object_get(bn, "batches")), 3);
	qtu_assert_close(qtu_at(bn, "mean", 0), 1.8, TOL, "mean[0]");
	qtu_assert_close(qtu_at(bn, "var", 0), 28.7 / 20, TOL, "var[0]");
	json_decref(doc);
}
END_TEST

/* The comparison of docs/API.md, "Comparison", in long double. */
struct ref_cmp {
	long double mean_err, mean_err_max, var_err, var_err_max, kl, kl_max;
};

static struct ref_cmp ref_compare(size_t c, const double *me, const double *ve, const double *mp,
				  const double *vp)
{
	struct ref_cmp r = { 0 };
	size_t i;

	for (i = 0; i < c; i++) {
		long double vpe = (long double)vp[i] + 1e-5L, vee = (long double)ve[i] + 1e-5L;
		long double d = (long double)me[i] - mp[i];
		long double merr = fabsl(d) / sqrtl(vpe), verr = fabsl(logl(vee / vpe));
		long double kl = (logl(vee / vpe) + (vpe + d * d) / vee - 1) / 2;

		r.mean_err += merr / c;
		r.var_err += verr / c;
		r.kl += kl / c;
		r.mean_err_max = fmaxl(r.mean_err_max, merr);
		r.var_err_max = fmaxl(r.var_err_max, verr);
		r.kl_max = fmaxl(r.kl_max, kl);
	}
	return r;
}

static void assert_cmp(const json_t *o, const struct ref_cmp *r, const char *what)
{
	char w[128];

	snprintf(w, sizeof(w), "%s mean_err", what);
	qtu_assert_close(qtu_num(o, "mean_err"), (double)r->mean_err, TOL, w);
	snprintf(w, sizeof(w), "%s mean_err_max", what);
	qtu_assert_close(qtu_num(o, "mean_err_max"), (double)r->mean_err_max, TOL, w);
	snprintf(w, sizeof(w), "%s var_err", what);
	qtu_assert_close(qtu_num(o, "var_err"), (double)r->var_err, TOL, w);
	snprintf(w, sizeof(w), "%s var_err_max", what);
	qtu_assert_close(qtu_num(o, "var_err_max"), (double)r->var_err_max, TOL, w);
	snprintf(w, sizeof(w), "%s kl", what);
	qtu_assert_close(qtu_num(o, "kl"), (double)r->kl, TOL, w);
	snprintf(w, sizeof(w), "%s kl_max", what);
	qtu_assert_close(qtu_num(o, "kl_max"), (double)r->kl_max, TOL, w);
}

/* bn at step 2 of domain default, window 1: pooled by hand. */
static const double bn2_mean[2] = { 28.0 / 16, -29.0 / 16 };
static const double bn2_var[2] = { 22.5 / 16, 4.4375 / 16 };

START_TEST(test_compare_worker)
{
	static const double ema_mean[2] = { 0.5, -1 }, ema_var[2] = { 0.75, 0.5 };
	struct query_params p = { 0 };
	struct bn_error err;
	struct ref_cmp r = ref_compare(2, ema_mean, ema_var, bn2_mean, bn2_var);
	json_t *doc;

	/* The first worker by name with an EMA at the latest step: w1. */
	ck_assert_int_eq(query_compare(rd, cache, "r1", &p, &doc, &err), 0);
	ck_assert_str_eq(json_string_value(json_object_get(doc, "worker")), "w1");
	ck_assert_str_eq(json_string_value(json_object_get(doc, "ema")), "worker");
	ck_assert_int_eq(json_integer_value(json_object_get(doc, "step")), 2);
	/* head.bn has no EMA: only bn is compared, and overall is bn's */
	ck_assert_int_eq(json_object_size(json_object_get(doc, "layers")), 1);
	assert_cmp(qtu_layer_of(doc, "bn"), &r, "bn");
	assert_cmp(json_object_get(doc, "overall"), &r, "overall");
	json_decref(doc);
}
END_TEST

START_TEST(test_compare_sim_overall)
{
	struct query_params p = { .ema = "sim", .momentum = "0.5", .step = "1" };
	struct bn_error err;
	json_t *doc;
	/*
	 * After step 1 from (0, 1) with momentum 0.5: mean x/2, var (v + 1)/2
	 * with v = M2/(n-1) of the pooled step. bn: means 1.25 and -0.8125,
	 * M2 22.5 and 4.4375 (/15: 1.5 and 0.2958...); head.bn: mean -0.125,
	 * M2 18.25.
	 */
	const double bn_m[2] = { 1.25, -0.8125 }, bn_v[2] = { 22.5 / 16, 4.4375 / 16 };
	const double bn_sm[2] = { 0.625, -0.40625 };
	const double bn_sv[2] = { 1.25, (double)((4.4375L / 15 + 1) / 2) };
	const double h_m[1] = { -0.125 }, h_v[1] = { 18.25 / 16 };
	const double h_sm[1] = { -0.0625 }, h_sv[1] = { (double)((18.25L / 15 + 1) / 2) };
	struct ref_cmp rb = ref_compare(2, bn_sm, bn_sv, bn_m, bn_v);
	struct ref_cmp rh = ref_compare(1, h_sm, h_sv, h_m, h_v);
	struct ref_cmp all = {
		(rb.mean_err + rh.mean_err) / 2,
		fmaxl(rb.mean_err_max, rh.mean_err_max),
		(rb.var_err + rh.var_err) / 2,
		fmaxl(rb.var_err_max, rh.var_err_max),
		(rb.kl + rh.kl) / 2,
		fmaxl(rb.kl_max, rh.kl_max),
	};

	ck_assert_int_eq(query_compare(rd, cache, "r1", &p, &doc, &err), 0);
	qtu_assert_close(qtu_num(doc, "momentum"), 0.5, 0, "momentum");
	assert_cmp(qtu_layer_of(doc, "bn"), &rb, "bn");
	assert_cmp(qtu_layer_of(doc, "head.bn"), &rh, "head.bn");
	assert_cmp(json_object_get(doc, "overall"), &all, "overall");
	json_decref(doc);
}
END_TEST

START_TEST(test_shift)
{
	/* val at step 2: one batch (4, [2, 0.5], [2, 0.25]): var M2/4 = 3v/4. */
	static const double val_mean[2] = { 2, 0.5 }, val_var[2] = { 1.5, 0.1875 };
	struct query_params p = { .source = "val", .target = "default" };
	struct bn_error err;
	struct ref_cmp r = ref_compare(2, val_mean, val_var, bn2_mean, bn2_var);
	json_t *doc;

	ck_assert_int_eq(query_shift(rd, "r1", &p, &doc, &err), 0);
	ck_assert_int_eq(json_integer_value(json_object_get(doc, "step")), 2);
	ck_assert_int_eq(json_object_size(json_object_get(doc, "layers")), 1);
	assert_cmp(qtu_layer_of(doc, "bn"), &r, "bn");
	assert_cmp(json_object_get(doc, "overall"), &r, "overall");
	json_decref(doc);
}
END_TEST

START_TEST(test_series)
{
	static const char *const layers[] = { "bn" };
	struct query_params p = {
		.layers = layers, .n_layers = 1, .channel = "0", .momentum = "0.5"
	};
	/* Channel 0 per step: pooled (n 16) and w1's EMA; sim from 0/1, M2/15. */
	static const double batch_mean[2] = { 1.25, 1.75 }, batch_var[2] = { 1.40625, 1.40625 };
	static const double ema_mean[2] = { 0.25, 0.5 }, ema_var[2] = { 0.75, 0.75 };
	static const double sim_mean[2] = { 0.625, 1.1875 }, sim_var[2] = { 1.25, 1.375 };
	struct bn_error err;
	json_t *doc;
	size_t i;

	ck_assert_int_eq(query_series(rd, cache, "r1", &p, &doc, &err), 0);
	ck_assert_int_eq(json_array_size(json_object_get(doc, "step")), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(doc, "stride")), 1);
	ck_assert(json_is_null(json_object_get(doc, "worker")));
	for (i = 0; i < 2; i++) {
		ck_assert_int_eq(
			json_integer_value(json_array_get(json_object_get(doc, "step"), i)),
			(json_int_t)i + 1);
		qtu_assert_close(qtu_at(doc, "batch_mean", i), batch_mean[i], 0, "batch_mean");
		qtu_assert_close(qtu_at(doc, "batch_var", i), batch_var[i], 0, "batch_var");
		qtu_assert_close(qtu_at(doc, "precise_mean", i), batch_mean[i], 0, "precise_mean");
		qtu_assert_close(qtu_at(doc, "precise_var", i), batch_var[i], 0, "precise_var");
		qtu_assert_close(qtu_at(doc, "ema_mean", i), ema_mean[i], 0, "ema_mean");
		qtu_assert_close(qtu_at(doc, "ema_var", i), ema_var[i], 0, "ema_var");
		qtu_assert_close(qtu_at(doc, "sim_mean", i), sim_mean[i], 0, "sim_mean");
		qtu_assert_close(qtu_at(doc, "sim_var", i), sim_var[i], 0, "sim_var");
	}
	json_decref(doc);

	/* window 2 at step 2 is the two steps pooled: 1.5 and 47/32 as in stats */
	p.window = "2";
	p.from = "2";
	ck_assert_int_eq(query_series(rd, cache, "r1", &p, &doc, &err), 0);
	ck_assert_int_eq(json_array_size(json_object_get(doc, "step")), 1);
	qtu_assert_close(qtu_at(doc, "precise_mean", 0), 1.5, 0, "precise_mean");
	qtu_assert_close(qtu_at(doc, "precise_var", 0), 47.0 / 32, 0, "precise_var");
	qtu_assert_close(qtu_at(doc, "sim_mean", 0), 1.1875, 0, "sim_mean from 2");
	json_decref(doc);
}
END_TEST

START_TEST(test_runs_and_domains)
{
	struct bn_error err;
	json_t *doc, *run, *d;

	ck_assert_int_eq(query_runs(rd, &(struct query_params){ 0 }, &doc, &err), 0);
	ck_assert_int_eq(json_array_size(json_object_get(doc, "runs")), 1);
	run = json_array_get(json_object_get(doc, "runs"), 0);
	ck_assert_str_eq(json_string_value(json_object_get(run, "name")), "r1");
	ck_assert_int_eq(json_integer_value(json_object_get(run, "batches")), 5);
	ck_assert_int_eq(json_integer_value(json_object_get(run, "layers")), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(run, "domains")), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(run, "workers")), 2);
	json_decref(doc);

	ck_assert_int_eq(query_run(rd, "r1", &doc, &err), 0);
	ck_assert_int_eq(json_array_size(json_object_get(doc, "layers")), 2);
	d = json_array_get(json_object_get(doc, "workers"), 0);
	ck_assert_str_eq(json_string_value(json_object_get(d, "name")), "w1");
	ck_assert_int_eq(json_integer_value(json_object_get(d, "batches")), 3);
	json_decref(doc);
	ck_assert_int_lt(query_run(rd, "nope", &doc, &err), 0);
	ck_assert_int_eq(err.status, 404);

	ck_assert_int_eq(query_domains(rd, "r1", &doc, &err), 0);
	d = json_array_get(json_object_get(doc, "domains"), 0);
	ck_assert_str_eq(json_string_value(json_object_get(d, "name")), "default");
	ck_assert_int_eq(json_integer_value(json_object_get(d, "layers")), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(d, "steps")), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(d, "batches")), 4);
	/* elements per channel: 16 per step and layer, 2 steps, 2 layers */
	ck_assert_int_eq(json_integer_value(json_object_get(d, "elements")), 64);
	json_decref(doc);
}
END_TEST

/* The names of a runs reply, joined by spaces, and its "next" ("-" when absent). */
static void runs_reply(const struct query_params *p, char *names, size_t size, const char **next)
{
	struct bn_error err;
	json_t *doc, *run;
	size_t i, n = 0;
	static char next_buf[160];

	ck_assert_msg(query_runs(rd, p, &doc, &err) == 0, "query_runs: %s", err.message);
	names[0] = '\0';
	json_array_foreach(json_object_get(doc, "runs"), i, run)
	{
		n += (size_t)snprintf(names + n, size - n, "%s%s", i ? " " : "",
				      json_string_value(json_object_get(run, "name")));
		ck_assert_uint_lt(n, size);
	}
	snprintf(next_buf, sizeof(next_buf), "%s",
		 json_object_get(doc, "next") ? json_string_value(json_object_get(doc, "next"))
					      : "-");
	*next = next_buf;
	json_decref(doc);
}

START_TEST(test_runs_pages)
{
	static const char *const more[] = { "r1_x", "r10", "r2", "s1" };
	char names[256];
	const char *next;
	size_t i;

	for (i = 0; i < sizeof(more) / sizeof(more[0]); i++)
		ck_assert_int_eq(tu_put_run(st, more[i],
					    "{\"worker\":\"w\",\"step\":1,\"seq\":0,\"layers\":{"
					    "\"bn\":{\"count\":2,\"mean\":[1],\"var\":[1]}}}")
					 .status,
				 200);
	/* no parameter: one page of every run (fewer than the default limit), no next */
	runs_reply(&(struct query_params){ 0 }, names, sizeof(names), &next);
	ck_assert_str_eq(names, "r1 r10 r1_x r2 s1");
	ck_assert_str_eq(next, "-");
	/* pages of 2 chained by next, the last without it */
	runs_reply(&(struct query_params){ .limit = "2" }, names, sizeof(names), &next);
	ck_assert_str_eq(names, "r1 r10");
	ck_assert_str_eq(next, "r10");
	runs_reply(&(struct query_params){ .limit = "2", .after = "r10" }, names, sizeof(names),
		   &next);
	ck_assert_str_eq(names, "r1_x r2");
	ck_assert_str_eq(next, "r2");
	runs_reply(&(struct query_params){ .limit = "2", .after = "r2" }, names, sizeof(names),
		   &next);
	ck_assert_str_eq(names, "s1");
	ck_assert_str_eq(next, "-");
	/* a page that ends exactly at the last run has no next either */
	runs_reply(&(struct query_params){ .limit = "5" }, names, sizeof(names), &next);
	ck_assert_str_eq(names, "r1 r10 r1_x r2 s1");
	ck_assert_str_eq(next, "-");
	runs_reply(&(struct query_params){ .limit = "4" }, names, sizeof(names), &next);
	ck_assert_str_eq(next, "r2");
	/* after the last name: an empty page */
	runs_reply(&(struct query_params){ .after = "s1" }, names, sizeof(names), &next);
	ck_assert_str_eq(names, "");
	ck_assert_str_eq(next, "-");
	/* prefixes are literal */
	runs_reply(&(struct query_params){ .prefix = "r1" }, names, sizeof(names), &next);
	ck_assert_str_eq(names, "r1 r10 r1_x");
	runs_reply(&(struct query_params){ .prefix = "r1_" }, names, sizeof(names), &next);
	ck_assert_str_eq(names, "r1_x");
	runs_reply(&(struct query_params){ .prefix = "r%" }, names, sizeof(names), &next);
	ck_assert_str_eq(names, "");
	runs_reply(&(struct query_params){ .prefix = "r1", .limit = "1", .after = "r1" }, names,
		   sizeof(names), &next);
	ck_assert_str_eq(names, "r10");
	ck_assert_str_eq(next, "r10");
	runs_reply(&(struct query_params){ .prefix = "r1", .after = "r10" }, names, sizeof(names),
		   &next);
	ck_assert_str_eq(names, "r1_x");
	ck_assert_str_eq(next, "-");
	runs_reply(&(struct query_params){ .limit = "10000" }, names, sizeof(names), &next);
	ck_assert_str_eq(names, "r1 r10 r1_x r2 s1");
}
END_TEST

/* A bad parameter of GET /v1/runs: its status, code and path. */
static void runs_refused(const struct query_params *p, int status, const char *code,
			 const char *path)
{
	struct bn_error err;
	json_t *doc = (json_t *)&err; /* must become NULL */

	ck_assert_int_lt(query_runs(rd, p, &doc, &err), 0);
	ck_assert_ptr_null(doc);
	ck_assert_int_eq(err.status, status);
	ck_assert_str_eq(err.code, code);
	ck_assert_str_eq(err.path, path);
}

START_TEST(test_runs_bad_parameters)
{
	char longer[STORE_RUNS_BOUND_MAX + 2];

	runs_refused(&(struct query_params){ .limit = "0" }, 422, "invalid_value", "limit");
	runs_refused(&(struct query_params){ .limit = "-1" }, 422, "invalid_value", "limit");
	runs_refused(&(struct query_params){ .limit = "10001" }, 422, "invalid_value", "limit");
	runs_refused(&(struct query_params){ .limit = "99999999999999999999" }, 400,
		     "invalid_parameter", "limit");
	runs_refused(&(struct query_params){ .limit = "ten" }, 400, "invalid_parameter", "limit");
	runs_refused(&(struct query_params){ .limit = "" }, 400, "invalid_parameter", "limit");
	runs_refused(&(struct query_params){ .limit = "2.0" }, 400, "invalid_parameter", "limit");
	memset(longer, 'r', sizeof(longer) - 1);
	longer[sizeof(longer) - 1] = '\0';
	runs_refused(&(struct query_params){ .prefix = longer }, 422, "invalid_value", "prefix");
	runs_refused(&(struct query_params){ .after = longer }, 422, "invalid_value", "after");
}
END_TEST

START_TEST(test_metrics_text)
{
	struct bn_error err;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	struct metrics_sources src = { .runs = query_metrics_runs, .runs_ctx = rd };

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(metrics_render(f, &src, &err), 0);
	fclose(f);
	ck_assert_ptr_nonnull(strstr(text, "\nbnstat_runs 1\n"));
	ck_assert_ptr_nonnull(strstr(text, "\nbnstat_run_last_step{run=\"r1\"} 2\n"));
	free(text);
}
END_TEST

static Suite *query_suite(void)
{
	Suite *s = suite_create("query_answers");
	TCase *tc = tcase_create("store");

	tcase_add_checked_fixture(tc, qtu_setup, qtu_teardown);
	tcase_add_test(tc, test_stats_population_window);
	tcase_add_test(tc, test_stats_mean_of_batch_var_and_noise);
	tcase_add_test(tc, test_stats_all_domains);
	tcase_add_test(tc, test_compare_worker);
	tcase_add_test(tc, test_compare_sim_overall);
	tcase_add_test(tc, test_shift);
	tcase_add_test(tc, test_series);
	tcase_add_test(tc, test_runs_and_domains);
	tcase_add_test(tc, test_runs_pages);
	tcase_add_test(tc, test_runs_bad_parameters);
	tcase_add_test(tc, test_metrics_text);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(query_suite)
