/*
 * check_query_params: the query module's parameter validation, on the run of
 * tests/query_fixture.c: each bad parameter gives the documented status,
 * error code and path (docs/API.md, "Errors"); query_parse_int's grammar.
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
/* --- parameter validation -------------------------------------------------------- */

enum endpoint { STATS, COMPARE, SERIES, SHIFT, DRIFT };

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
	{ "precise not a reference",
	  COMPARE,
	  "r1",
	  { .precise = "best" },
	  400,
	  "invalid_parameter",
	  "precise" },
	{ "precise snapshot without a label",
	  COMPARE,
	  "r1",
	  { .precise = "snapshot:" },
	  400,
	  "invalid_parameter",
	  "precise" },
	{ "precise worker with a bad name",
	  DRIFT,
	  "r1",
	  { .precise = "worker:a b", .worker = "w1" },
	  400,
	  "invalid_parameter",
	  "precise" },
	{ "unknown snapshot",
	  COMPARE,
	  "r1",
	  { .precise = "snapshot:s" },
	  404,
	  "not_found",
	  "precise" },
	{ "unknown reference worker",
	  DRIFT,
	  "r1",
	  { .precise = "worker:w9", .worker = "w1" },
	  404,
	  "not_found",
	  "precise" },
	{ "window with a snapshot",
	  COMPARE,
	  "r1",
	  { .precise = "snapshot:s", .window = "2" },
	  400,
	  "invalid_parameter",
	  "window" },
	{ "estimator with a worker",
	  DRIFT,
	  "r1",
	  { .precise = "worker:w1", .worker = "w2", .estimator = "population" },
	  400,
	  "invalid_parameter",
	  "estimator" },
	{ "worker reference without worker=",
	  COMPARE,
	  "r1",
	  { .precise = "worker:w1" },
	  400,
	  "missing_field",
	  "worker" },
	{ "worker reference over every domain",
	  DRIFT,
	  "r1",
	  { .precise = "worker:w1", .ema = "sim", .domain = "*" },
	  422,
	  "invalid_value",
	  "domain" },
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
	case DRIFT:
		return query_drift(rd, cache, run, p, out, err);
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

static Suite *query_suite(void)
{
	Suite *s = suite_create("query_params");
	TCase *tc = tcase_create("store");
	TCase *tw = tcase_create("parse");

	tcase_add_checked_fixture(tc, qtu_setup, qtu_teardown);
	tcase_add_loop_test(tc, test_bad_parameters, 0,
			    (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
	suite_add_tcase(s, tc);
	tcase_add_test(tw, test_parse_int);
	suite_add_tcase(s, tw);
	return s;
}

CHECK_MAIN(query_suite)
