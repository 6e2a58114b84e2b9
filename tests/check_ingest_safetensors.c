/*
 * Unit tests of ingest: decoding the safetensors form: values, options, unaligned data, EMA,
 * equality with the JSON form, the layer rules.
 */
#include "ingest_testutil.h"
#include "safetensors_testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check_main.h"

START_TEST(test_st_decode)
{
	static const double m[3] = { 0.12, -1, 3 }, v[3] = { 1.01, 0, 2e-3 };
	struct stw w = { 0 };
	struct sbuf j = { 0 };
	struct ingest_batch *a, *b;
	unsigned char *body;
	size_t len;

	/* f32 with a scalar count, f64 with a [1] count, tensors unsorted */
	stw_values(&w, "layer2.bn.mean", m, 3, F32);
	stw_count(&w, "layer2.bn.count", 200704, true);
	stw_values(&w, "layer2.bn.var", v, 3, F32);
	stw_values(&w, "layer1.0.bn1.var", v + 2, 1, F64);
	stw_values(&w, "layer1.0.bn1.mean", m + 2, 1, F64);
	stw_count(&w, "layer1.0.bn1.count", 16, false);
	body = stw_finish(&w,
			  "\"__metadata__\": {\"seq\": \"3\", \"step\": "
			  "\"1200\", \"worker\": \"rank0\"}",
			  0, &len);
	b = st_ok(body, len, &limits);

	/* the same batch as the JSON form of the same values */
	sb_printf(&j, "{\"worker\": \"rank0\", \"step\": 1200, \"seq\": 3, "
		      "\"layers\": {\"layer2.bn\": {\"count\": 200704, \"mean\": ");
	sb_values(&j, m, 3, F32);
	sb_printf(&j, ", \"var\": ");
	sb_values(&j, v, 3, F32);
	sb_printf(&j, "}, \"layer1.0.bn1\": {\"count\": 16, \"mean\": [3], "
		      "\"var\": [2e-3]}}}");
	a = decode_ok(j.s);
	batch_assert_equal(a, b);

	/* and what that is */
	ck_assert_str_eq(b->worker, "rank0");
	ck_assert_str_eq(b->domain, "default");
	ck_assert_int_eq(b->step, 1200);
	ck_assert_int_eq(b->seq, 3);
	ck_assert_int_eq(b->var_kind, STATS_VAR_UNBIASED);
	ck_assert_str_eq(b->layers[0].name, "layer1.0.bn1");
	ck_assert_int_eq(b->layers[1].count, 200704);
	ck_assert_uint_eq(b->layers[1].channels, 3);
	for (int i = 0; i < 3; i++)
		/* f32 widened exactly */
		ck_assert(b->layers[1].mean[i] == (double)(float)m[i]);
	ck_assert(b->layers[0].var[0] == 2e-3);
	ingest_batch_free(a);
	ingest_batch_free(b);
	sb_free(&j);
	free(body);
}
END_TEST

START_TEST(test_st_options)
{
	static const double one[1] = { 2 }, zero[1] = { 0 };
	struct stw w = { 0 };
	struct ingest_batch *b;
	unsigned char *body;
	size_t len;

	/* biased var_kind allows count 1; the largest step and seq */
	stw_count(&w, "bn.count", 1, true);
	stw_values(&w, "bn.mean", one, 1, F64);
	stw_values(&w, "bn.var", zero, 1, F64);
	body = stw_finish(&w,
			  "\"__metadata__\": {\"worker\": \"w\", \"step\": "
			  "\"9223372036854775807\", \"seq\": \"0\", \"domain\": "
			  "\"fpn.p3\", \"var_kind\": \"biased\"}",
			  0, &len);
	b = st_ok(body, len, &limits);
	ck_assert_str_eq(b->domain, "fpn.p3");
	ck_assert_int_eq(b->var_kind, STATS_VAR_BIASED);
	ck_assert_int_eq(b->step, INT64_MAX);
	ck_assert_int_eq(b->seq, 0);
	ck_assert_int_eq(b->layers[0].count, 1);
	ingest_batch_free(b);
	free(body);

	/* the largest count, and "unbiased" spelt out */
	stw_count(&w, "bn.count", (int64_t)1 << 53, false);
	stw_values(&w, "bn.mean", one, 1, F32);
	stw_values(&w, "bn.var", zero, 1, F32);
	body = stw_finish(&w,
			  "\"__metadata__\": {" ST_WSS ", \"var_kind\": "
			  "\"unbiased\"}",
			  0, &len);
	b = st_ok(body, len, &limits);
	ck_assert_int_eq(b->var_kind, STATS_VAR_UNBIASED);
	ck_assert_int_eq(b->layers[0].count, (int64_t)1 << 53);
	ingest_batch_free(b);
	free(body);
}
END_TEST

/*
 * Values at offsets of 4 mod 8 in the data buffer, and the data buffer
 * itself at each of the 8 alignments (the header padding moves it; the
 * body is at an odd address anyway, see st_decode()).
 */
START_TEST(test_st_unaligned)
{
	double m[5], v[5];
	struct stw w = { 0 };
	struct ingest_batch *b;
	unsigned char *body;
	size_t len;

	for (int i = 0; i < 5; i++) {
		m[i] = (float)(0.1 * i - 0.3);
		v[i] = (float)(0.7 * i + 0.01);
	}
	for (size_t pad = 0; pad < 8; pad++) {
		stw_count(&w, "a.count", 3, true);	     /* [0, 8) */
		stw_values(&w, "c.mean", m, 1, F32);	     /* [8, 12) */
		stw_values(&w, "b.mean", m, 5, F64);	     /* [12, 52) */
		stw_values(&w, "b.var", v, 5, F64);	     /* [52, 92) */
		stw_count(&w, "c.count", 9, true);	     /* [92, 100) */
		stw_values(&w, "a.mean", m, 3, F32);	     /* [100, 112) */
		stw_values(&w, "a.var", v, 3, F32);	     /* [112, 124) */
		stw_count(&w, "b.count", 9, false);	     /* [124, 132) */
		stw_values(&w, "c.var", v, 1, F32);	     /* [132, 136) */
		stw_values(&w, "c.ema_mean", m + 1, 1, F64); /* [136, 144) */
		stw_values(&w, "c.ema_var", v + 1, 1, F32);  /* [144, 148) */
		body = stw_finish(&w, ST_META, pad, &len);
		b = st_ok(body, len, &limits);
		ck_assert_uint_eq(b->n_layers, 3);
		for (int i = 0; i < 3; i++) {
			ck_assert(b->layers[0].mean[i] == m[i]);
			ck_assert(b->layers[0].var[i] == v[i]);
		}
		for (int i = 0; i < 5; i++) {
			ck_assert(b->layers[1].mean[i] == m[i]);
			ck_assert(b->layers[1].var[i] == v[i]);
		}
		ck_assert(b->layers[2].mean[0] == m[0]);
		ck_assert(b->layers[2].ema_mean[0] == m[1]);
		ck_assert(b->layers[2].ema_var[0] == v[1]);
		ingest_batch_free(b);
		free(body);
	}
}
END_TEST

START_TEST(test_st_count_zero_ema)
{
	static const double x[2] = { 1, 2 }, y[2] = { 3, 4 };
	struct stw w = { 0 };
	struct ingest_batch *a, *b;
	unsigned char *body;
	size_t len;

	stw_count(&w, "a.count", 0, true);
	stw_count(&w, "b.count", 0, false);
	stw_values(&w, "b.mean", x, 2, F32);
	stw_values(&w, "b.var", y, 2, F64);
	stw_count(&w, "c.count", 5, true);
	stw_values(&w, "c.mean", x, 2, F64);
	stw_values(&w, "c.var", y, 2, F64);
	stw_values(&w, "c.ema_mean", y, 2, F32);
	stw_values(&w, "c.ema_var", x, 2, F64);
	body = stw_finish(&w, ST_META, 0, &len);
	b = st_ok(body, len, &limits);
	a = decode_ok("{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {"
		      "\"a\": {\"count\": 0}, "
		      "\"b\": {\"count\": 0, \"mean\": [1, 2], \"var\": [3, 4]}, "
		      "\"c\": {\"count\": 5, \"mean\": [1, 2], \"var\": [3, 4], "
		      "\"ema_mean\": [3, 4], \"ema_var\": [1, 2]}}}");
	batch_assert_equal(a, b);
	ck_assert_uint_eq(b->layers[0].channels, 0);
	ck_assert_ptr_null(b->layers[0].mean);
	ck_assert_ptr_null(b->layers[1].ema_mean);
	ck_assert(b->layers[2].ema_mean[1] == 4.0);
	ingest_batch_free(a);
	ingest_batch_free(b);
	free(body);

	/* a layer of nothing but a count 0 is a whole upload */
	stw_count(&w, "a.count", 0, true);
	body = stw_finish(&w, ST_META, 3, &len);
	b = st_ok(body, len, &limits);
	ck_assert_uint_eq(b->n_layers, 1);
	ingest_batch_free(b);
	free(body);
}
END_TEST

START_TEST(test_st_same_as_json)
{
	static const enum enc nums[6] = { NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS };
	static const enum enc all[][6] = {
		{ F32, F32, F32, F32, F32, F32 },
		{ F64, F64, F64, F64, F64, F64 },
		{ F32, F64, F64, F32, F64, F32 },
	};
	struct hbatch h;
	struct ingest_batch *ref, *b;
	unsigned char *body;
	char *json;
	size_t len;

	hbatch_init(&h);
	for (int biased = 0; biased < 2; biased++) {
		h.var_kind = biased ? "biased" : "unbiased";
		json = hbatch_json(&h, nums, false);
		ref = decode_ok(json);
		for (size_t e = 0; e < sizeof(all) / sizeof(all[0]); e++)
			for (int rev = 0; rev < 2; rev++)
				for (int scalar = 0; scalar < 2; scalar++) {
					body = hbatch_st(&h, all[e], rev, scalar, &len);
					b = st_ok(body, len, &limits);
					batch_assert_equal(ref, b);
					ingest_batch_free(b);
					free(body);
				}
		ingest_batch_free(ref);
		free(json);
	}

	/* and a change of one value is a change of hash */
	hbatch_init(&h);
	json = hbatch_json(&h, nums, false);
	ref = decode_ok(json);
	h.c[1][6] = nextafter(h.c[1][6], INFINITY);
	body = hbatch_st(&h, all[1], false, true, &len);
	b = st_ok(body, len, &limits);
	ck_assert_mem_ne(ref->hash, b->hash, INGEST_HASH_SIZE);
	ingest_batch_free(b);
	ingest_batch_free(ref);
	free(body);
	free(json);
}
END_TEST

/* -0.0 is stored (and hashed) as +0.0, as in JSON. */
START_TEST(test_st_negative_zero)
{
	static const double z[2] = { -0.0, 1 }, pz[2] = { 0, 0 }, nz[2] = { -0.0, -0.0 };
	struct stw w = { 0 };
	struct ingest_batch *a, *b;
	unsigned char *body;
	size_t len;

	stw_count(&w, "bn.count", 2, true);
	stw_values(&w, "bn.mean", z, 2, F32);
	stw_values(&w, "bn.var", nz, 2, F64);
	body = stw_finish(&w, ST_META, 0, &len);
	a = st_ok(body, len, &limits);
	free(body);
	ck_assert(!signbit(a->layers[0].mean[0]));
	ck_assert(!signbit(a->layers[0].var[0]));
	stw_count(&w, "bn.count", 2, true);
	stw_values(&w, "bn.mean", z, 2, F64);
	stw_values(&w, "bn.var", pz, 2, F32);
	body = stw_finish(&w, ST_META, 0, &len);
	b = st_ok(body, len, &limits);
	free(body);
	ck_assert_mem_eq(a->hash, b->hash, INGEST_HASH_SIZE);
	ingest_batch_free(a);
	ingest_batch_free(b);
}
END_TEST

/*
 * The rules of the upload, reported at tensor names: each case a list of
 * tensors, written back to back. kind: 'c' an I64 count of shape [], 'C'
 * of shape [1] (value v); else v values of dtype e: 'g' 1.0s, 'b' 1, -0.5,
 * 1, ..., 'n' NaN at 17, 'i' -inf at 17.
 */
struct st_rule_tensor {
	const char *name;
	char kind;
	int64_t v;
	enum enc e;
};

static const struct ingest_limits small_limits = { 2, 3 };

static const struct st_rule {
	const char *what;
	const struct ingest_limits *lim; /* NULL: the defaults */
	int status;
	const char *code, *path;
	struct st_rule_tensor t[12];
} st_rules[] = {
	{ "NaN, the example of docs/API.md, \"Errors\"",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "layer1.0.bn1.var[17]",
	  { { "layer1.0.bn1.count", 'c', 2, F32 },
	    { "layer1.0.bn1.mean", 'g', 20, F64 },
	    { "layer1.0.bn1.var", 'n', 20, F32 } } },
	{ "-inf",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.mean[17]",
	  { { "a.count", 'c', 2, F32 }, { "a.mean", 'i', 20, F64 }, { "a.var", 'g', 20, F64 } } },
	{ "var < 0",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.var[1]",
	  { { "a.count", 'c', 2, F32 }, { "a.mean", 'b', 3, F32 }, { "a.var", 'b', 3, F32 } } },
	{ "ema_var < 0",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.ema_var[1]",
	  { { "a.count", 'C', 2, F32 },
	    { "a.mean", 'g', 3, F32 },
	    { "a.var", 'g', 3, F32 },
	    { "a.ema_mean", 'b', 3, F32 },
	    { "a.ema_var", 'b', 3, F64 } } },
	{ "count -1",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.count",
	  { { "a.count", 'c', -1, F32 }, { "a.mean", 'g', 1, F32 }, { "a.var", 'g', 1, F32 } } },
	{ "count INT64_MIN",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.count",
	  { { "a.count", 'C', INT64_MIN, F32 },
	    { "a.mean", 'g', 1, F32 },
	    { "a.var", 'g', 1, F32 } } },
	{ "count 2^53 + 1",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.count",
	  { { "a.count", 'c', ((int64_t)1 << 53) + 1, F32 },
	    { "a.mean", 'g', 1, F32 },
	    { "a.var", 'g', 1, F32 } } },
	{ "count INT64_MAX",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.count",
	  { { "a.count", 'C', INT64_MAX, F32 },
	    { "a.mean", 'g', 1, F32 },
	    { "a.var", 'g', 1, F32 } } },
	{ "count 1, unbiased",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.count",
	  { { "a.count", 'c', 1, F32 }, { "a.mean", 'g', 1, F32 }, { "a.var", 'g', 1, F32 } } },
	{ "ema_var alone",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.ema_var",
	  { { "a.count", 'c', 2, F32 },
	    { "a.mean", 'g', 3, F32 },
	    { "a.var", 'g', 3, F32 },
	    { "a.ema_var", 'g', 3, F32 } } },
	{ "var longer than mean",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.var",
	  { { "a.count", 'c', 2, F32 }, { "a.mean", 'g', 3, F32 }, { "a.var", 'g', 4, F64 } } },
	{ "ema shorter",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.ema_mean",
	  { { "a.count", 'c', 2, F32 },
	    { "a.mean", 'g', 3, F32 },
	    { "a.var", 'g', 3, F32 },
	    { "a.ema_mean", 'g', 2, F32 },
	    { "a.ema_var", 'g', 2, F32 } } },
	{ "no count",
	  NULL,
	  400,
	  BN_E_MISSING,
	  "a.count",
	  { { "a.mean", 'g', 3, F32 }, { "a.var", 'g', 3, F32 } } },
	{ "no var",
	  NULL,
	  400,
	  BN_E_MISSING,
	  "a.var",
	  { { "a.count", 'c', 2, F32 }, { "a.mean", 'g', 3, F32 } } },
	{ "count 0 with only an EMA",
	  NULL,
	  400,
	  BN_E_MISSING,
	  "a.mean",
	  { { "a.count", 'c', 0, F32 },
	    { "a.ema_mean", 'g', 3, F32 },
	    { "a.ema_var", 'g', 3, F32 } } },
	{ "no channel",
	  NULL,
	  422,
	  BN_E_INVALID,
	  "a.mean",
	  { { "a.count", 'c', 2, F32 }, { "a.mean", 'g', 0, F32 }, { "a.var", 'g', 0, F64 } } },
	{ "4 channels, default limits",
	  NULL,
	  0,
	  NULL,
	  NULL,
	  { { "a.count", 'c', 2, F32 }, { "a.mean", 'g', 4, F32 }, { "a.var", 'g', 4, F32 } } },
	{ "4 channels, limit 3",
	  &small_limits,
	  422,
	  BN_E_LIMIT,
	  "a.mean",
	  { { "a.count", 'c', 2, F32 }, { "a.mean", 'g', 4, F32 }, { "a.var", 'g', 4, F32 } } },
	{ "3 layers, default limits",
	  NULL,
	  0,
	  NULL,
	  NULL,
	  { { "a.count", 'c', 0, F32 }, { "b.count", 'c', 0, F32 }, { "c.count", 'C', 0, F32 } } },
	{ "3 layers, limit 2",
	  &small_limits,
	  422,
	  BN_E_LIMIT,
	  "__header__",
	  { { "a.count", 'c', 0, F32 }, { "b.count", 'c', 0, F32 }, { "c.count", 'C', 0, F32 } } },
	/* 11 tensors cannot be 2 layers: refused before they are looked at */
	{ "11 tensors, limit 2 layers",
	  &small_limits,
	  422,
	  BN_E_LIMIT,
	  "__header__",
	  { { "l0.x", 'c', 0, F32 },
	    { "l1.x", 'c', 0, F32 },
	    { "l2.x", 'c', 0, F32 },
	    { "l3.x", 'c', 0, F32 },
	    { "l4.x", 'c', 0, F32 },
	    { "l5.x", 'c', 0, F32 },
	    { "l6.x", 'c', 0, F32 },
	    { "l7.x", 'c', 0, F32 },
	    { "l8.x", 'c', 0, F32 },
	    { "l9.x", 'c', 0, F32 },
	    { "l10.x", 'c', 0, F32 } } },
};

START_TEST(test_st_layer_rules)
{
	for (size_t i = 0; i < sizeof(st_rules) / sizeof(st_rules[0]); i++) {
		const struct st_rule *c = &st_rules[i];
		const struct ingest_limits *lim = c->lim ? c->lim : &limits;
		struct stw w = { 0 };
		unsigned char *body;
		size_t len;

		for (const struct st_rule_tensor *t = c->t; t->name != NULL; t++) {
			double x[32];

			if (t->kind == 'c' || t->kind == 'C') {
				stw_count(&w, t->name, t->v, t->kind == 'c');
				continue;
			}
			ck_assert_int_le(t->v, 32);
			for (int k = 0; k < 32; k++)
				x[k] = t->kind == 'b' && k % 2 ? -0.5 : 1.0;
			x[17] = t->kind == 'n' ? NAN : t->kind == 'i' ? -INFINITY : x[17];
			stw_values(&w, t->name, x, (size_t)t->v, t->e);
		}
		body = stw_finish(&w, ST_META, 0, &len);
		if (c->status == 0)
			ingest_batch_free(st_ok(body, len, lim));
		else
			st_expect(body, len, lim, c->status, c->code, c->path, c->what);
		free(body);
	}
}
END_TEST

/*
 * A NaN or infinity in a tensor: the path is the tensor's, and the
 * message and err.nonfinite name the step, layer, channel and worker as
 * in the JSON form (docs/API.md, "Non-finite values").
 */
START_TEST(test_st_nonfinite_detail)
{
	struct ingest_batch *b = NULL;
	struct stw w = { 0 };
	struct bn_error err;
	unsigned char *body;
	double m[20], v[20];
	size_t len;

	for (int i = 0; i < 20; i++)
		m[i] = v[i] = 1.0 + i;
	v[17] = NAN;
	stw_count(&w, "layer3.0.bn2.count", 8, true);
	stw_values(&w, "layer3.0.bn2.mean", m, 20, F32);
	stw_values(&w, "layer3.0.bn2.var", v, 20, F32);
	stw_values(&w, "layer3.0.bn2.ema_mean", m, 20, F64);
	stw_values(&w, "layer3.0.bn2.ema_var", m, 20, F64);
	body = stw_finish(&w,
			  "\"__metadata__\": {\"worker\": \"rank3\", \"step\": \"1200\", "
			  "\"seq\": \"0\"}",
			  0, &len);
	ck_assert_int_eq(st_decode(body, len, &limits, &b, &err), -EINVAL);
	ck_assert_ptr_null(b);
	ck_assert_int_eq(err.status, 422);
	ck_assert_str_eq(err.code, BN_E_INVALID);
	ck_assert_str_eq(err.path, "layer3.0.bn2.var[17]");
	ck_assert_str_eq(err.message,
			 "non-finite var at step 1200, layer layer3.0.bn2, channel 17 (worker "
			 "rank3): NaN in the batch statistics (mixed-precision overflow?)");
	ck_assert(err.nonfinite.set);
	ck_assert_int_eq(err.nonfinite.step, 1200);
	ck_assert_int_eq(err.nonfinite.channel, 17);
	ck_assert_str_eq(err.nonfinite.worker, "rank3");
	ck_assert_str_eq(err.nonfinite.layer, "layer3.0.bn2");
	ck_assert_str_eq(err.nonfinite.field, "var");
	free(body);
}
END_TEST

/* ------------------------------------------------------------------ */

static Suite *suite(void)
{
	Suite *s = suite_create("ingest_safetensors");
	TCase *tc;

	tc = tcase_create("safetensors");
	tcase_add_test(tc, test_st_decode);
	tcase_add_test(tc, test_st_options);
	tcase_add_test(tc, test_st_unaligned);
	tcase_add_test(tc, test_st_count_zero_ema);
	tcase_add_test(tc, test_st_same_as_json);
	tcase_add_test(tc, test_st_negative_zero);
	tcase_add_test(tc, test_st_layer_rules);
	tcase_add_test(tc, test_st_nonfinite_detail);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(suite)
