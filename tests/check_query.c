/*
 * check_query: the query module (src/query*.c) against a temporary store.
 *
 * Every test fills a fresh store with the same small run "r1" (uploads
 * below, through ingest_decode_json() and store_submit(), as a worker would)
 * and asks the query functions directly, without HTTP:
 *
 *  - parameter validation: each bad parameter gives the documented status,
 *    error code and path (docs/API.md, "Errors");
 *  - stats, compare, shift, series and snapshots against references worked
 *    out by hand from the uploads (the values are small dyadic numbers and
 *    the counts 4 and 12, so most answers are exact doubles and are
 *    compared bit for bit; where a logarithm, a root or a division by a
 *    non-power of two comes in, the reference is computed in long double
 *    from the exact inputs and compared within 1e-12);
 *  - the safetensors export and the generic writer byte for byte.
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

#define TOL 1e-12

/*
 * Run r1. Layer bn has 2 channels, head.bn 1. Domain default: steps 1 and
 * 2, workers w1 (count 4) and w2 (count 12), so that a step pools 16
 * elements; w1 and w2 send their EMA of bn. Domain val: step 2, w1 only.
 */
static const char *const uploads[] = {
	"{\"worker\":\"w1\",\"step\":1,\"seq\":0,\"layers\":{"
	"\"bn\":{\"count\":4,\"mean\":[0.5,-1],\"var\":[1,0.5],"
	"\"ema_mean\":[0.25,-0.5],\"ema_var\":[0.75,0.5]},"
	"\"head.bn\":{\"count\":4,\"mean\":[1],\"var\":[2]}}}",
	"{\"worker\":\"w2\",\"step\":1,\"seq\":0,\"layers\":{"
	"\"bn\":{\"count\":12,\"mean\":[1.5,-0.75],\"var\":[1.5,0.25],"
	"\"ema_mean\":[0.375,-0.5],\"ema_var\":[1,0.625]},"
	"\"head.bn\":{\"count\":12,\"mean\":[-0.5],\"var\":[0.5]}}}",
	"{\"worker\":\"w1\",\"step\":2,\"seq\":0,\"layers\":{"
	"\"bn\":{\"count\":4,\"mean\":[1,-2],\"var\":[1,0.5],"
	"\"ema_mean\":[0.5,-1],\"ema_var\":[0.75,0.5]},"
	"\"head.bn\":{\"count\":4,\"mean\":[0],\"var\":[2]}}}",
	"{\"worker\":\"w2\",\"step\":2,\"seq\":0,\"layers\":{"
	"\"bn\":{\"count\":12,\"mean\":[2,-1.75],\"var\":[1.5,0.25],"
	"\"ema_mean\":[0.625,-1],\"ema_var\":[1,0.625]},"
	"\"head.bn\":{\"count\":12,\"mean\":[-0.5],\"var\":[0.5]}}}",
	"{\"worker\":\"w1\",\"step\":2,\"seq\":0,\"domain\":\"val\",\"layers\":{"
	"\"bn\":{\"count\":4,\"mean\":[2,0.5],\"var\":[2,0.25]}}}",
};

static char dir[256];
static char dbpath[300];
static struct store *st;
static struct store_reader *rd;
static struct replay_cache *cache;

static void setup(void)
{
	struct bn_error err;

	tu_tmpdir_make(dir, sizeof(dir), dbpath, sizeof(dbpath), "check_query");
	if (store_open(dbpath, NULL, &st, &err) < 0)
		ck_abort_msg("store_open: %s", err.message);
	qtu_upload_all(st, uploads, sizeof(uploads) / sizeof(uploads[0]));
	if (store_reader_get(st, &rd, &err) < 0)
		ck_abort_msg("store_reader_get: %s", err.message);
	cache = replay_cache_new((size_t)1 << 20);
	ck_assert_ptr_nonnull(cache);
}

static void teardown(void)
{
	replay_cache_free(cache);
	store_reader_put(st, rd);
	store_close(st);
	tu_tmpdir_remove(dir);
}

/* --- parameter validation -------------------------------------------------------- */

enum endpoint { STATS, COMPARE, SERIES, SHIFT };

struct bad_case {
	const char *what;
	enum endpoint ep;
	const char *run;
	struct query_params p;
	int status;
	const char *code, *path;
};

static const char *const one_bn[] = { "bn" };
static const char *const one_fc[] = { "fc" };

static const struct bad_case bad_cases[] = {
	{ "unknown run", STATS, "nope", { 0 }, 404, "not_found", "run" },
	{ "bad run name", STATS, "b!d", { 0 }, 422, "invalid_value", "run" },
	{ "step not an integer", STATS, "r1", { .step = "2x" }, 400, "invalid_parameter", "step" },
	{ "step with +", STATS, "r1", { .step = "+2" }, 400, "invalid_parameter", "step" },
	{ "step with a space", STATS, "r1", { .step = " 2" }, 400, "invalid_parameter", "step" },
	{ "step empty", STATS, "r1", { .step = "" }, 400, "invalid_parameter", "step" },
	{ "step beyond long long",
	  STATS,
	  "r1",
	  { .step = "99999999999999999999" },
	  400,
	  "invalid_parameter",
	  "step" },
	{ "step negative", STATS, "r1", { .step = "-1" }, 422, "invalid_value", "step" },
	{ "window 0", STATS, "r1", { .window = "0" }, 422, "invalid_value", "window" },
	{ "window not a number",
	  STATS,
	  "r1",
	  { .window = "w" },
	  400,
	  "invalid_parameter",
	  "window" },
	{ "unknown estimator",
	  STATS,
	  "r1",
	  { .estimator = "median" },
	  422,
	  "invalid_value",
	  "estimator" },
	{ "bad domain name", STATS, "r1", { .domain = "a b" }, 422, "invalid_value", "domain" },
	{ "unknown domain", STATS, "r1", { .domain = "test" }, 404, "not_found", "domain" },
	{ "unknown layer",
	  STATS,
	  "r1",
	  { .layers = one_fc, .n_layers = 1 },
	  404,
	  "not_found",
	  "layer" },
	{ "window without data", STATS, "r1", { .step = "100" }, 404, "not_found", "step" },
	{ "unknown ema", COMPARE, "r1", { .ema = "keras" }, 422, "invalid_value", "ema" },
	{ "momentum 0",
	  COMPARE,
	  "r1",
	  { .ema = "sim", .momentum = "0" },
	  422,
	  "invalid_value",
	  "momentum" },
	{ "momentum above 1",
	  COMPARE,
	  "r1",
	  { .ema = "sim", .momentum = "1.5" },
	  422,
	  "invalid_value",
	  "momentum" },
	{ "momentum not a number",
	  COMPARE,
	  "r1",
	  { .ema = "sim", .momentum = "x" },
	  400,
	  "invalid_parameter",
	  "momentum" },
	{ "worker EMA of all domains",
	  COMPARE,
	  "r1",
	  { .domain = "*" },
	  422,
	  "invalid_value",
	  "domain" },
	{ "bad worker name", COMPARE, "r1", { .worker = "a b" }, 422, "invalid_value", "worker" },
	{ "no worker EMA at the step",
	  COMPARE,
	  "r1",
	  { .domain = "val" },
	  404,
	  "not_found",
	  "step" },
	{ "worker without EMA", COMPARE, "r1", { .worker = "w3" }, 404, "not_found", "worker" },
	{ "series without layer",
	  SERIES,
	  "r1",
	  { .channel = "0" },
	  400,
	  "invalid_parameter",
	  "layer" },
	{ "series without channel",
	  SERIES,
	  "r1",
	  { .layers = one_bn, .n_layers = 1 },
	  400,
	  "invalid_parameter",
	  "channel" },
	{ "series channel out of range",
	  SERIES,
	  "r1",
	  { .layers = one_bn, .n_layers = 1, .channel = "2" },
	  422,
	  "invalid_value",
	  "channel" },
	{ "series from after to",
	  SERIES,
	  "r1",
	  { .layers = one_bn, .n_layers = 1, .channel = "0", .from = "3", .to = "2" },
	  422,
	  "invalid_value",
	  "from" },
	{ "series stride 0",
	  SERIES,
	  "r1",
	  { .layers = one_bn, .n_layers = 1, .channel = "0", .stride = "0" },
	  422,
	  "invalid_value",
	  "stride" },
	{ "series points not a number",
	  SERIES,
	  "r1",
	  { .layers = one_bn, .n_layers = 1, .channel = "0", .points = "many" },
	  400,
	  "invalid_parameter",
	  "points" },
	{ "series unknown layer",
	  SERIES,
	  "r1",
	  { .layers = one_fc, .n_layers = 1, .channel = "0" },
	  404,
	  "not_found",
	  "layer" },
	{ "shift without source",
	  SHIFT,
	  "r1",
	  { .target = "val" },
	  400,
	  "invalid_parameter",
	  "source" },
	{ "shift without target",
	  SHIFT,
	  "r1",
	  { .source = "val" },
	  400,
	  "invalid_parameter",
	  "target" },
	{ "shift unknown target",
	  SHIFT,
	  "r1",
	  { .source = "val", .target = "test" },
	  404,
	  "not_found",
	  "target" },
	{ "shift bad estimator",
	  SHIFT,
	  "r1",
	  { .source = "val", .target = "default", .estimator = "x" },
	  422,
	  "invalid_value",
	  "estimator" },
};

static int ask(enum endpoint ep, const char *run, const struct query_params *p, json_t **out,
	       struct bn_error *err)
{
	switch (ep) {
	case STATS:
		return query_stats(rd, run, p, out, err);
	case COMPARE:
		return query_compare(rd, cache, run, p, out, err);
	case SERIES:
		return query_series(rd, cache, run, p, out, err);
	default:
		return query_shift(rd, run, p, out, err);
	}
}

START_TEST(test_bad_parameters)
{
	const struct bad_case *c = &bad_cases[_i];
	struct bn_error err = { 0 };
	json_t *out = (json_t *)1;
	int rc = ask(c->ep, c->run, &c->p, &out, &err);

	ck_assert_msg(rc < 0, "%s: accepted", c->what);
	ck_assert_ptr_null(out);
	ck_assert_msg(err.status == c->status && strcmp(err.code, c->code) == 0 &&
			      strcmp(err.path, c->path) == 0,
		      "%s: got %d %s %s (%s), expected %d %s %s", c->what, err.status, err.code,
		      err.path, err.message, c->status, c->code, c->path);
}
END_TEST

START_TEST(test_parse_int)
{
	struct bn_error err;
	long long v = -7;

	ck_assert_int_eq(query_parse_int("n", "42", 0, &v, &err), 0);
	ck_assert_int_eq(v, 42);
	ck_assert_int_eq(query_parse_int("n", "0", 0, &v, &err), 0);
	ck_assert_int_eq(v, 0);
	/* not an integer: 400, whatever the minimum */
	ck_assert_int_lt(query_parse_int("n", NULL, 0, &v, &err), 0);
	ck_assert_int_eq(err.status, 400);
	ck_assert_str_eq(err.path, "n");
	ck_assert_int_lt(query_parse_int("n", "4.0", 0, &v, &err), 0);
	ck_assert_int_eq(err.status, 400);
	ck_assert_str_eq(err.code, "invalid_parameter");
	/* an integer below the minimum: 422 */
	ck_assert_int_lt(query_parse_int("n", "0", 1, &v, &err), 0);
	ck_assert_int_eq(err.status, 422);
	ck_assert_str_eq(err.code, "invalid_value");
	ck_assert_int_eq(v, 0); /* untouched on failure */
}
END_TEST

/* --- answers ------------------------------------------------------------------ */

static json_t *layer_of(json_t *doc, const char *name)
{
	json_t *l = json_object_get(json_object_get(doc, "layers"), name);

	ck_assert_msg(json_is_object(l), "no layer %s", name);
	return l;
}

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
	bn = layer_of(doc, "bn");
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
	bn = layer_of(doc, "bn");
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
	head = layer_of(doc, "head.bn");
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
	bn = layer_of(doc, "bn");
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
	assert_cmp(layer_of(doc, "bn"), &r, "bn");
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
	assert_cmp(layer_of(doc, "bn"), &rb, "bn");
	assert_cmp(layer_of(doc, "head.bn"), &rh, "head.bn");
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
	assert_cmp(layer_of(doc, "bn"), &r, "bn");
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

	ck_assert_int_eq(query_runs(rd, &doc, &err), 0);
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

/* --- snapshots ------------------------------------------------------------------ */

/* Prepare and store snapshot body; fails the test unless it is created (201). */
static void snapshot_create(const char *body)
{
	struct store_snapshot *snap = NULL;
	struct outcome o;
	struct bn_error err;
	json_t *existing = NULL;

	if (query_snapshot_prepare(rd, "r1", body, strlen(body), &snap, &existing, &err) < 0)
		ck_abort_msg("prepare %s: %d %s", body, err.status, err.message);
	ck_assert_ptr_null(existing);
	ck_assert_ptr_nonnull(snap);
	outcome_init(&o);
	ck_assert_int_eq(store_submit_snapshot(st, snap, on_done, &o), 0);
	outcome_wait(&o);
	ck_assert_int_eq(o.res.status, 201);
}

/* head.bn over steps 1-2: mean -8/32, M2 = 23 + 6.25 + .75 + .25 + .75 = 31. */
static const double snap_bn_mean[2] = { 1.5, -1.3125 }, snap_bn_var[2] = { 47.0 / 32, 16.875 / 32 };
static const double snap_head_mean[1] = { -0.25 }, snap_head_var[1] = { 31.0 / 32 };

START_TEST(test_snapshot_roundtrip)
{
	const char *body = "{\"label\":\"final\",\"window\":2}";
	struct store_snapshot *snap = NULL;
	struct bn_error err;
	json_t *doc, *existing = NULL, *bn, *list;

	snapshot_create(body);
	ck_assert_int_eq(query_snapshot_get(rd, "r1", "final", &doc, &err), 0);
	ck_assert_int_eq(json_integer_value(json_object_get(doc, "step")), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(doc, "window")), 2);
	ck_assert_str_eq(json_string_value(json_object_get(doc, "domain")), "default");
	ck_assert_str_eq(json_string_value(json_object_get(doc, "estimator")), "population");
	bn = layer_of(doc, "bn");
	ck_assert_int_eq(json_integer_value(json_object_get(bn, "count")), 32);
	qtu_assert_close(qtu_at(bn, "mean", 1), snap_bn_mean[1], 0, "bn mean");
	qtu_assert_close(qtu_at(bn, "var", 0), snap_bn_var[0], 0, "bn var");
	qtu_assert_close(qtu_at(layer_of(doc, "head.bn"), "var", 0), snap_head_var[0], 0,
			 "head var");
	json_decref(doc);

	/* a retry with fewer fields is the stored snapshot; another window conflicts */
	body = "{\"label\":\"final\"}";
	ck_assert_int_eq(
		query_snapshot_prepare(rd, "r1", body, strlen(body), &snap, &existing, &err), 0);
	ck_assert_ptr_null(snap);
	ck_assert_ptr_nonnull(existing);
	ck_assert_int_eq(json_integer_value(json_object_get(existing, "window")), 2);
	json_decref(existing);
	body = "{\"label\":\"final\",\"window\":1}";
	ck_assert_int_lt(
		query_snapshot_prepare(rd, "r1", body, strlen(body), &snap, &existing, &err), 0);
	ck_assert_int_eq(err.status, 409);
	ck_assert_str_eq(err.path, "label");

	ck_assert_int_eq(query_snapshots(rd, "r1", &doc, &err), 0);
	list = json_object_get(doc, "snapshots");
	ck_assert_int_eq(json_array_size(list), 1);
	ck_assert_ptr_null(json_object_get(json_array_get(list, 0), "layers"));
	json_decref(doc);

	ck_assert_int_lt(query_snapshot_get(rd, "r1", "other", &doc, &err), 0);
	ck_assert_int_eq(err.status, 404);
	ck_assert_str_eq(err.path, "label");
}
END_TEST

struct bad_body {
	const char *body;
	int status;
	const char *code, *path;
};

static const struct bad_body bad_bodies[] = {
	{ "nojson", 400, "malformed_json", "" },
	{ "[1]", 400, "wrong_type", "" },
	{ "{\"label\":1}", 400, "wrong_type", "label" },
	{ "{\"label\":\"a b\"}", 422, "invalid_value", "label" },
	{ "{\"step\":1}", 400, "missing_field", "label" },
	{ "{\"label\":\"x\",\"step\":1.5}", 422, "invalid_value", "step" },
	{ "{\"label\":\"x\",\"step\":\"1\"}", 400, "wrong_type", "step" },
	{ "{\"label\":\"x\",\"window\":0}", 422, "invalid_value", "window" },
	{ "{\"label\":\"x\",\"domain\":\"a b\"}", 422, "invalid_value", "domain" },
	{ "{\"label\":\"x\",\"estimator\":\"median\"}", 422, "invalid_value", "estimator" },
	{ "{\"label\":\"x\",\"bogus\":1}", 422, "invalid_value", "bogus" },
	{ "{\"label\":\"x\",\"step\":100}", 404, "not_found", "step" },
	{ "{\"label\":\"x\",\"domain\":\"test\"}", 404, "not_found", "domain" },
};

START_TEST(test_snapshot_bad_bodies)
{
	const struct bad_body *c = &bad_bodies[_i];
	struct store_snapshot *snap = (struct store_snapshot *)1;
	json_t *existing = (json_t *)1;
	struct bn_error err = { 0 };

	ck_assert_int_lt(
		query_snapshot_prepare(rd, "r1", c->body, strlen(c->body), &snap, &existing, &err),
		0);
	ck_assert_ptr_null(snap);
	ck_assert_ptr_null(existing);
	ck_assert_msg(err.status == c->status && strcmp(err.code, c->code) == 0 &&
			      strcmp(err.path, c->path) == 0,
		      "%s: got %d %s '%s' (%s)", c->body, err.status, err.code, err.path,
		      err.message);
}
END_TEST

static uint64_t le64(const unsigned char *p)
{
	uint64_t v = 0;
	int b;

	for (b = 7; b >= 0; b--)
		v = v << 8 | p[b];
	return v;
}

/* Check tensor `name` of a safetensors file against want[0..n). */
static void check_tensor(const char *buf, size_t len, json_t *header, const char *name, bool f64,
			 const double *want, size_t n)
{
	json_t *t = json_object_get(header, name), *off;
	size_t start, end, i, data = 8 + (size_t)le64((const unsigned char *)buf);

	ck_assert_msg(json_is_object(t), "no tensor %s", name);
	ck_assert_str_eq(json_string_value(json_object_get(t, "dtype")), f64 ? "F64" : "F32");
	ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(t, "shape"), 0)),
			 (json_int_t)n);
	off = json_object_get(t, "data_offsets");
	start = (size_t)json_integer_value(json_array_get(off, 0));
	end = (size_t)json_integer_value(json_array_get(off, 1));
	ck_assert_uint_eq(end - start, n * (f64 ? 8 : 4));
	ck_assert_uint_le(data + end, len);
	for (i = 0; i < n; i++) {
		const unsigned char *p = (const unsigned char *)buf + data + start;

		if (f64) {
			uint64_t u = le64(p + 8 * i);
			double x;

			memcpy(&x, &u, sizeof(x));
			qtu_assert_close(x, want[i], 0, name);
		} else {
			uint32_t u = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
				     (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
			float x;

			memcpy(&x, &u, sizeof(x));
			qtu_assert_close((double)x, (double)(float)want[i], 0, name);
		}
	}
}

START_TEST(test_snapshot_safetensors)
{
	struct bn_error err;
	json_error_t jerr;
	json_t *header, *meta;
	char *buf = NULL;
	size_t len = 0, hlen;
	int f64;

	snapshot_create("{\"label\":\"final\",\"window\":2}");
	for (f64 = 0; f64 < 2; f64++) {
		ck_assert_int_eq(
			query_snapshot_safetensors(rd, "r1", "final", f64, &buf, &len, &err), 0);
		hlen = (size_t)le64((const unsigned char *)buf);
		ck_assert_uint_eq(hlen % 8, 0);
		header = json_loadb(buf + 8, hlen, 0, &jerr);
		ck_assert_msg(header != NULL, "header: %s", jerr.text);
		/* 4 tensors and the metadata, nothing else */
		ck_assert_int_eq(json_object_size(header), 5);
		meta = json_object_get(header, "__metadata__");
		ck_assert_str_eq(json_string_value(json_object_get(meta, "run")), "r1");
		ck_assert_str_eq(json_string_value(json_object_get(meta, "step")), "2");
		ck_assert_str_eq(json_string_value(json_object_get(meta, "window")), "2");
		check_tensor(buf, len, header, "bn.running_mean", f64, snap_bn_mean, 2);
		check_tensor(buf, len, header, "bn.running_var", f64, snap_bn_var, 2);
		check_tensor(buf, len, header, "head.bn.running_mean", f64, snap_head_mean, 1);
		check_tensor(buf, len, header, "head.bn.running_var", f64, snap_head_var, 1);
		/* bn's two tensors, then head.bn's, back to back: 6 values */
		ck_assert_uint_eq(len, 8 + hlen + 6 * (f64 ? 8 : 4));
		json_decref(header);
		free(buf);
	}
	ck_assert_int_lt(query_snapshot_safetensors(rd, "r1", "none", false, &buf, &len, &err), 0);
	ck_assert_ptr_null(buf);
	ck_assert_int_eq(err.status, 404);
}
END_TEST

/* --- the writer ------------------------------------------------------------------ */

START_TEST(test_safetensors_write_bytes)
{
	static const uint64_t shape2[] = { 2 }, shape12[] = { 1, 2 };
	static const double f[] = { 1.5, -2 };
	static const int64_t i64[] = { 3, -1 };
	const struct safetensors_tensor t[] = {
		{ "b", SAFETENSORS_F32, shape2, 1, f, NULL },
		{ "a", SAFETENSORS_I64, shape12, 2, NULL, i64 },
		{ "s", SAFETENSORS_F64, NULL, 0, f, NULL }, /* a scalar: one value */
	};
	const struct safetensors_meta meta[] = { { "k", "v" } };
	/* keys sorted, compact; tensors' data in the order given */
	static const char hdr[] =
		"{\"__metadata__\":{\"k\":\"v\"},"
		"\"a\":{\"data_offsets\":[8,24],\"dtype\":\"I64\",\"shape\":[1,2]},"
		"\"b\":{\"data_offsets\":[0,8],\"dtype\":\"F32\",\"shape\":[2]},"
		"\"s\":{\"data_offsets\":[24,32],\"dtype\":\"F64\",\"shape\":[]}}";
	static const unsigned char data[32] = {
		0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0xc0, /* 1.5f, -2f */
		0x03, 0,    0,	  0,	0,    0,    0,	  0,	/* 3 */
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, /* -1 */
		0,    0,    0,	  0,	0,    0,    0xf8, 0x3f, /* 1.5 */
	};
	size_t hlen = strlen(hdr), padded = (hlen + 7) / 8 * 8, len, k;
	char *buf;

	ck_assert_int_eq(safetensors_write(t, 3, meta, 1, &buf, &len), 0);
	ck_assert_uint_eq(len, 8 + padded + sizeof(data));
	ck_assert_uint_eq(le64((const unsigned char *)buf), padded);
	ck_assert_int_eq(memcmp(buf + 8, hdr, hlen), 0);
	for (k = hlen; k < padded; k++)
		ck_assert_int_eq(buf[8 + k], ' ');
	ck_assert_int_eq(memcmp(buf + 8 + padded, data, sizeof(data)), 0);
	free(buf);

	/* without metadata there is no __metadata__ key; no tensors is a file too */
	ck_assert_int_eq(safetensors_write(NULL, 0, NULL, 0, &buf, &len), 0);
	ck_assert_uint_eq(len, 16);
	ck_assert_int_eq(memcmp(buf + 8, "{}      ", 8), 0);
	free(buf);
}
END_TEST

START_TEST(test_safetensors_write_refuses)
{
	static const uint64_t shape[] = { 2 };
	static const double f[] = { 1, 2 };
	const struct safetensors_tensor dup[] = {
		{ "x", SAFETENSORS_F32, shape, 1, f, NULL },
		{ "x", SAFETENSORS_F64, shape, 1, f, NULL },
	};
	const struct safetensors_tensor reserved = {
		"__metadata__", SAFETENSORS_F32, shape, 1, f, NULL
	};
	const struct safetensors_tensor no_values = { "y", SAFETENSORS_I64, shape, 1, f, NULL };
	char *buf = (char *)1;
	size_t len;

	ck_assert_int_eq(safetensors_write(dup, 2, NULL, 0, &buf, &len), -EINVAL);
	ck_assert_ptr_null(buf);
	ck_assert_int_eq(safetensors_write(&reserved, 1, NULL, 0, &buf, &len), -EINVAL);
	ck_assert_int_eq(safetensors_write(&no_values, 1, NULL, 0, &buf, &len), -EINVAL);
}
END_TEST

static Suite *query_suite(void)
{
	Suite *s = suite_create("query");
	TCase *tc = tcase_create("store");
	TCase *tw = tcase_create("writer");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, test_bad_parameters, 0,
			    (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
	tcase_add_test(tc, test_stats_population_window);
	tcase_add_test(tc, test_stats_mean_of_batch_var_and_noise);
	tcase_add_test(tc, test_stats_all_domains);
	tcase_add_test(tc, test_compare_worker);
	tcase_add_test(tc, test_compare_sim_overall);
	tcase_add_test(tc, test_shift);
	tcase_add_test(tc, test_series);
	tcase_add_test(tc, test_runs_and_domains);
	tcase_add_test(tc, test_metrics_text);
	tcase_add_test(tc, test_snapshot_roundtrip);
	tcase_add_loop_test(tc, test_snapshot_bad_bodies, 0,
			    (int)(sizeof(bad_bodies) / sizeof(bad_bodies[0])));
	tcase_add_test(tc, test_snapshot_safetensors);
	suite_add_tcase(s, tc);
	tcase_add_test(tw, test_parse_int);
	tcase_add_test(tw, test_safetensors_write_bytes);
	tcase_add_test(tw, test_safetensors_write_refuses);
	suite_add_tcase(s, tw);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(query_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
