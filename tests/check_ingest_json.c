/*
 * Unit tests of ingest: decoding the JSON form: encodings, options, count-0 layers, -0.0, error
 * paths and messages (and what a refusal of a non-finite value names), limits.
 */
#include "ingest_testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check_main.h"

/* ------------------------------------------------------------------ */
/* decoding */

START_TEST(test_decode_numbers)
{
	struct ingest_batch *b =
		decode_ok("{\"worker\": \"rank0\", \"step\": 1200, \"seq\": 3, \"layers\": {"
			  " \"layer2.bn\": {\"count\": 200704, \"mean\": [0.12, -1, 3], "
			  "\"var\": [1.01, 0, 2e-3]},"
			  " \"layer1.0.bn1\": {\"count\": 16, \"mean\": [5], \"var\": [7]}}}");

	ck_assert_str_eq(b->run, "r1");
	ck_assert_str_eq(b->worker, "rank0");
	ck_assert_str_eq(b->domain, "default");
	ck_assert_int_eq(b->step, 1200);
	ck_assert_int_eq(b->seq, 3);
	ck_assert_int_eq(b->var_kind, STATS_VAR_UNBIASED);
	ck_assert_uint_eq(b->n_layers, 2);
	/* sorted by name */
	ck_assert_str_eq(b->layers[0].name, "layer1.0.bn1");
	ck_assert_str_eq(b->layers[1].name, "layer2.bn");
	ck_assert_int_eq(b->layers[0].count, 16);
	ck_assert_uint_eq(b->layers[0].channels, 1);
	ck_assert(b->layers[0].mean[0] == 5.0 && b->layers[0].var[0] == 7.0);
	ck_assert_int_eq(b->layers[1].count, 200704);
	ck_assert_uint_eq(b->layers[1].channels, 3);
	ck_assert(b->layers[1].mean[0] == 0.12);
	ck_assert(b->layers[1].mean[1] == -1.0);
	ck_assert(b->layers[1].mean[2] == 3.0);
	ck_assert(b->layers[1].var[0] == 1.01);
	ck_assert(b->layers[1].var[1] == 0.0);
	ck_assert(b->layers[1].var[2] == 2e-3);
	ck_assert_ptr_null(b->layers[1].ema_mean);
	ck_assert_ptr_null(b->layers[1].ema_var);
	ingest_batch_free(b);
}
END_TEST

START_TEST(test_decode_options)
{
	struct ingest_batch *b =
		decode_ok("{\"worker\": \"w\", \"step\": 0, \"seq\": 0, \"domain\": "
			  "\"fpn.p3\", \"var_kind\": \"biased\", \"layers\": {"
			  "\"bn\": {\"count\": 1, \"mean\": [2], \"var\": [0]}}}");

	ck_assert_str_eq(b->domain, "fpn.p3");
	ck_assert_int_eq(b->var_kind, STATS_VAR_BIASED);
	ck_assert_int_eq(b->step, 0);
	ck_assert_int_eq(b->layers[0].count, 1);
	ingest_batch_free(b);

	b = decode_ok("{\"worker\": \"w\", \"step\": 9007199254740993, \"seq\": "
		      "9223372036854775807, \"var_kind\": \"unbiased\", "
		      "\"layers\": {\"bn\": {\"count\": 9007199254740992, "
		      "\"mean\": [2], \"var\": [0]}}}");
	ck_assert_int_eq(b->var_kind, STATS_VAR_UNBIASED);
	ck_assert_int_eq(b->step, 9007199254740993LL);
	ck_assert_int_eq(b->seq, INT64_MAX);
	ck_assert_int_eq(b->layers[0].count, (int64_t)1 << 53);
	ingest_batch_free(b);
}
END_TEST

START_TEST(test_decode_f32)
{
	static const float f[5] = { 0.1f, -3.75f, 1e-30f, 65504.0f, 0.0f };
	double x[5];
	struct sbuf s = { 0 };
	struct ingest_batch *b;

	for (int i = 0; i < 5; i++)
		x[i] = f[i];
	/* mean as f32, var = |mean| as f32 */
	sb_printf(&s, "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": "
		      "{\"bn\": {\"count\": 2, \"mean\": ");
	sb_values(&s, x, 5, F32);
	for (int i = 0; i < 5; i++)
		x[i] = fabs(x[i]);
	sb_printf(&s, ", \"var\": ");
	sb_values(&s, x, 5, F32);
	sb_printf(&s, "}}}");
	b = decode_ok(s.s);
	ck_assert_uint_eq(b->layers[0].channels, 5);
	for (int i = 0; i < 5; i++) {
		/* widened exactly, not rounded through decimal */
		ck_assert(b->layers[0].mean[i] == (double)f[i]);
		ck_assert(b->layers[0].var[i] == fabs((double)f[i]));
	}
	ck_assert(b->layers[0].mean[0] != 0.1);
	ingest_batch_free(b);
	sb_free(&s);
}
END_TEST

START_TEST(test_decode_f64_ema)
{
	static const double m[3] = { 0.1, -2.5e300, 4.9e-324 };
	static const double v[3] = { 1.0 / 3, 0, 1e10 };
	static const double em[3] = { 0, 0.25, -0.5 };
	static const double ev[3] = { 1, 1, 0.5 };
	struct sbuf s = { 0 };
	struct ingest_batch *b;
	const struct ingest_layer *l;

	sb_printf(&s, "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": "
		      "{\"bn\": {\"count\": 7, \"mean\": ");
	sb_values(&s, m, 3, F64);
	sb_printf(&s, ", \"var\": ");
	sb_values(&s, v, 3, F64);
	sb_printf(&s, ", \"ema_mean\": ");
	sb_values(&s, em, 3, F64);
	sb_printf(&s, ", \"ema_var\": ");
	sb_values(&s, ev, 3, NUMBERS);
	sb_printf(&s, "}}}");
	b = decode_ok(s.s);
	l = &b->layers[0];
	ck_assert_uint_eq(l->channels, 3);
	ck_assert_ptr_nonnull(l->ema_mean);
	ck_assert_ptr_nonnull(l->ema_var);
	for (int i = 0; i < 3; i++) {
		ck_assert(l->mean[i] == m[i]);
		ck_assert(l->var[i] == v[i]);
		ck_assert(l->ema_mean[i] == em[i]);
		ck_assert(l->ema_var[i] == ev[i]);
	}
	ingest_batch_free(b);
	sb_free(&s);
}
END_TEST

START_TEST(test_decode_count_zero)
{
	struct ingest_batch *b =
		decode_ok("{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {"
			  "\"a\": {\"count\": 0}, "
			  "\"b\": {\"count\": 0, \"mean\": [1, 2], \"var\": [3, 4]}, "
			  "\"c\": {\"count\": 5, \"mean\": [1], \"var\": [1]}}}");

	ck_assert_uint_eq(b->n_layers, 3);
	ck_assert_str_eq(b->layers[0].name, "a");
	ck_assert_int_eq(b->layers[0].count, 0);
	ck_assert_uint_eq(b->layers[0].channels, 0);
	ck_assert_ptr_null(b->layers[0].mean);
	ck_assert_ptr_null(b->layers[0].var);
	ck_assert_ptr_null(b->layers[0].ema_mean);
	ck_assert_ptr_null(b->layers[0].ema_var);
	ck_assert_int_eq(b->layers[1].count, 0);
	ck_assert_uint_eq(b->layers[1].channels, 2);
	ck_assert(b->layers[1].var[1] == 4.0);
	ck_assert_uint_eq(b->layers[2].channels, 1);
	ingest_batch_free(b);

	/* count 0 arrays are still checked */
	expect_error("{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {"
		     "\"a\": {\"count\": 0, \"mean\": [1, 2], \"var\": [3, -4]}}}",
		     422, BN_E_INVALID, "layers.a.var[1]");
	/* count 0 with only an EMA: mean and var are needed with it */
	expect_error("{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {"
		     "\"a\": {\"count\": 0, \"ema_mean\": [1], \"ema_var\": [1]}}}",
		     400, BN_E_MISSING, "layers.a.mean");
}
END_TEST

START_TEST(test_negative_zero)
{
	static const double z[2] = { -0.0, 1 };
	struct sbuf s = { 0 };
	struct ingest_batch *a, *b;

	sb_printf(&s, "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": "
		      "{\"bn\": {\"count\": 2, \"mean\": ");
	sb_values(&s, z, 2, F64);
	sb_printf(&s, ", \"var\": [-0.0, 0]}}}");
	a = decode_ok(s.s);
	ck_assert(!signbit(a->layers[0].mean[0]));
	ck_assert(!signbit(a->layers[0].var[0]));
	b = decode_ok("{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": "
		      "{\"bn\": {\"count\": 2, \"mean\": [0, 1], \"var\": [0, 0]}}}");
	ck_assert_mem_eq(a->hash, b->hash, INGEST_HASH_SIZE);
	ingest_batch_free(a);
	ingest_batch_free(b);
	sb_free(&s);
}
END_TEST

START_TEST(test_error_paths)
{
	struct sbuf s = { 0 };
	double v[20];

	/* a path into a base64 array, as in docs/API.md, "Errors": element 17 */
	for (int i = 0; i < 20; i++)
		v[i] = 1;
	v[17] = NAN;
	sb_printf(&s, "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": "
		      "{\"layer1.0.bn1\": {\"count\": 2, \"mean\": ");
	sb_values(&s, v, 20, F64);
	sb_printf(&s, ", \"var\": ");
	sb_values(&s, v, 20, F32);
	sb_printf(&s, "}}}");
	/* mean is checked before var, and mean[17] is NaN in both */
	expect_error(s.s, 422, BN_E_INVALID, "layers.layer1.0.bn1.mean[17]");
	sb_free(&s);

	/* the run name from the URL */
	{
		struct ingest_batch *b = NULL;
		struct bn_error err;
		const char *ok = "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, "
				 "\"layers\": {\"a\": {\"count\": 0}}}";

		ck_assert_int_eq(ingest_decode_json("r 1", ok, strlen(ok), &limits, &b, &err),
				 -EINVAL);
		ck_assert_ptr_null(b);
		ck_assert_int_eq(err.status, 422);
		ck_assert_str_eq(err.path, "run");
		ck_assert_int_eq(ingest_decode_json("", ok, strlen(ok), &limits, &b, &err),
				 -EINVAL);
		ck_assert_int_eq(ingest_decode_json(NULL, ok, strlen(ok), &limits, &b, &err),
				 -EINVAL);
		/* NULL limits: defaults */
		ck_assert_int_eq(ingest_decode_json("r1", ok, strlen(ok), NULL, &b, &err), 0);
		ingest_batch_free(b);
		/* NULL err is allowed */
		ck_assert_int_eq(ingest_decode_json("r1", "{", 1, NULL, &b, NULL), -EINVAL);
		ck_assert_ptr_null(b);
	}
}
END_TEST

/*
 * A NaN or infinity is refused with a message that names the step, layer,
 * channel and worker, and with the same in err.nonfinite (docs/API.md,
 * "Non-finite values"); both JSON readers agree on all of it.
 */
START_TEST(test_nonfinite_detail)
{
	static const struct {
		int layer;	 /* 0: "layer3.0.bn2", 1: "layer4.bn" */
		int field;	 /* index in arr[] */
		int channel;	 /* where the bad value is */
		double value;	 /* what it is */
		enum enc enc;	 /* of every array */
		const char *msg; /* expected message */
	} cases[] = {
		{ 0, 1, 17, NAN, F32,
		  "non-finite var at step 1200, layer layer3.0.bn2, channel 17 (worker rank3): "
		  "NaN in the batch statistics (mixed-precision overflow?)" },
		{ 0, 0, 0, INFINITY, F64,
		  "non-finite mean at step 1200, layer layer3.0.bn2, channel 0 (worker rank3): "
		  "infinity in the batch statistics (mixed-precision overflow?)" },
		{ 1, 2, 5, -INFINITY, F32,
		  "non-finite ema_mean at step 1200, layer layer4.bn, channel 5 (worker rank3): "
		  "-infinity in the running (EMA) statistics (mixed-precision overflow?)" },
		{ 1, 3, 19, NAN, F64,
		  "non-finite ema_var at step 1200, layer layer4.bn, channel 19 (worker rank3): "
		  "NaN in the running (EMA) statistics (mixed-precision overflow?)" },
	};
	static const char *const layer[] = { "layer3.0.bn2", "layer4.bn" };
	static const char *const arr[] = { "mean", "var", "ema_mean", "ema_var" };

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct ingest_batch *b = (struct ingest_batch *)&b; /* not NULL */
		struct sbuf s = { 0 };
		struct bn_error err;
		char path[128];
		double v[20];

		sb_printf(&s, "{\"worker\": \"rank3\", \"step\": 1200, \"seq\": 0, \"layers\": {");
		for (int l = 0; l < 2; l++) {
			sb_printf(&s, "%s\"%s\": {\"count\": 8", l ? ", " : "", layer[l]);
			for (int a = 0; a < 4; a++) {
				for (int i = 0; i < 20; i++)
					v[i] = 0.5 + i;
				if (l == cases[c].layer && a == cases[c].field)
					v[cases[c].channel] = cases[c].value;
				sb_printf(&s, ", \"%s\": ", arr[a]);
				sb_values(&s, v, 20, cases[c].enc);
			}
			sb_printf(&s, "}");
		}
		sb_printf(&s, "}}");

		bn_error_clear(&err);
		ck_assert_int_eq(ingest_decode_json("r1", s.s, s.len, &limits, &b, &err), -EINVAL);
		ck_assert_ptr_null(b);
		snprintf(path, sizeof(path), "layers.%s.%s[%d]", layer[cases[c].layer],
			 arr[cases[c].field], cases[c].channel);
		ck_assert_int_eq(err.status, 422);
		ck_assert_str_eq(err.code, BN_E_INVALID);
		ck_assert_str_eq(err.path, path);
		ck_assert_str_eq(err.message, cases[c].msg);
		ck_assert(err.nonfinite.set);
		ck_assert_int_eq(err.nonfinite.step, 1200);
		ck_assert_int_eq(err.nonfinite.channel, cases[c].channel);
		ck_assert_str_eq(err.nonfinite.worker, "rank3");
		ck_assert_str_eq(err.nonfinite.layer, layer[cases[c].layer]);
		ck_assert_str_eq(err.nonfinite.field, arr[cases[c].field]);
		/* the fast scanner and jansson give the same detail */
		ck_assert_int_eq(same_both_ways(s.s, s.len, &limits), FAST_ERROR);
		sb_free(&s);
	}

	/* any other refusal leaves it clear, even after a non-finite one */
	{
		struct ingest_batch *b = NULL;
		struct bn_error err;
		const char *neg = "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": "
				  "{\"bn\": {\"count\": 2, \"mean\": [0], \"var\": [-1]}}}";

		err.nonfinite.set = true;
		ck_assert_int_eq(ingest_decode_json("r1", neg, strlen(neg), &limits, &b, &err),
				 -EINVAL);
		ck_assert_str_eq(err.path, "layers.bn.var[0]");
		ck_assert(!err.nonfinite.set);
	}
}
END_TEST

START_TEST(test_malformed_messages)
{
	struct ingest_batch *b = NULL;
	struct bn_error err;
	const char bin[] = "{\"worker\": \"w\xff\xfe\", \"step\": 1}";
	size_t i;

	/* jansson's position is in the message */
	ck_assert_int_eq(ingest_decode_json("r1", "{\n\"a\": ,}", 9, &limits, &b, &err), -EINVAL);
	ck_assert_int_eq(err.status, 400);
	ck_assert_str_eq(err.code, BN_E_MALFORMED);
	ck_assert_str_eq(err.path, "");
	ck_assert_msg(strstr(err.message, "line 2") != NULL, "%s", err.message);
	/* empty body */
	ck_assert_int_eq(ingest_decode_json("r1", "", 0, &limits, &b, &err), -EINVAL);
	ck_assert_str_eq(err.code, BN_E_MALFORMED);
	/* invalid UTF-8: the message stays printable ASCII */
	ck_assert_int_eq(ingest_decode_json("r1", bin, sizeof(bin) - 1, &limits, &b, &err),
			 -EINVAL);
	ck_assert_str_eq(err.code, BN_E_MALFORMED);
	for (i = 0; err.message[i]; i++)
		ck_assert(err.message[i] >= 0x20 && err.message[i] < 0x7f);
	/* a NUL inside the body */
	ck_assert_int_eq(ingest_decode_json("r1", "{\"a\":1}\0", 8, &limits, &b, &err), -EINVAL);
	ck_assert_str_eq(err.code, BN_E_MALFORMED);
	/* an integer jansson cannot hold */
	expect_error("{\"worker\": \"w\", \"step\": 99999999999999999999, \"seq\": 0, "
		     "\"layers\": {\"a\": {\"count\": 0}}}",
		     400, BN_E_MALFORMED, "");
	/* an unknown key echoed in the path is made printable and bounded */
	expect_error("{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"st\\u00e9p\\n\": 1, "
		     "\"layers\": {\"a\": {\"count\": 0}}}",
		     422, BN_E_INVALID, "st??p?");
	ck_assert_ptr_null(b);
}
END_TEST

/*
 * Empty arrays leave the fast path with no values at all: its value buffer
 * is never allocated, and the layer is still refused as the jansson path
 * refuses it (the clang build of this test runs under UBSan).
 */
START_TEST(test_empty_arrays)
{
	expect_error("{\"worker\":\"w\",\"step\":1,\"seq\":0,\"layers\":"
		     "{\"a\":{\"count\":8,\"mean\":[],\"var\":[]}}}",
		     422, BN_E_INVALID, "layers.a.mean");
}
END_TEST

START_TEST(test_limits)
{
	struct ingest_limits lim = { 2, 3 };
	const char *three = "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {"
			    "\"a\": {\"count\": 0}, \"b\": {\"count\": 0}, "
			    "\"c\": {\"count\": 0}}}";
	const char *two = "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {"
			  "\"a\": {\"count\": 2, \"mean\": [1, 2, 3], \"var\": [1, 2, 3]}, "
			  "\"b\": {\"count\": 0}}}";
	const char *wide = "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {"
			   "\"a\": {\"count\": 2, \"mean\": [1, 2, 3, 4], \"var\": [1, 2, 3, 4]}}}";
	const char *wide_b64 = "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {"
			       "\"a\": {\"count\": 2, \"mean\": {\"dtype\": \"f32\", "
			       "\"b64\": \"AAAAAAAAAAAAAAAAAAAAAA==\"}, \"var\": [1, 2, 3, 4]}}}";

	expect_error_lim(three, &lim, 422, BN_E_LIMIT, "layers");
	ingest_batch_free(decode_ok_lim(two, &lim));
	expect_error_lim(wide, &lim, 422, BN_E_LIMIT, "layers.a.mean");
	expect_error_lim(wide_b64, &lim, 422, BN_E_LIMIT, "layers.a.mean");
	ingest_batch_free(decode_ok(three));
	ingest_batch_free(decode_ok(wide));
	ingest_batch_free(decode_ok(wide_b64));
}
END_TEST

/* ------------------------------------------------------------------ */

static Suite *suite(void)
{
	Suite *s = suite_create("ingest_json");
	TCase *tc;

	tc = tcase_create("decode");
	tcase_add_test(tc, test_decode_numbers);
	tcase_add_test(tc, test_decode_options);
	tcase_add_test(tc, test_decode_f32);
	tcase_add_test(tc, test_decode_f64_ema);
	tcase_add_test(tc, test_decode_count_zero);
	tcase_add_test(tc, test_negative_zero);
	tcase_add_test(tc, test_error_paths);
	tcase_add_test(tc, test_nonfinite_detail);
	tcase_add_test(tc, test_malformed_messages);
	tcase_add_test(tc, test_empty_arrays);
	tcase_add_test(tc, test_limits);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(suite)
