/*
 * Unit tests of ingest: hostile safetensors bodies: bad headers, lengths, layouts and arguments,
 * and fuzzed bodies.
 */
#include "ingest_testutil.h"
#include "safetensors_testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check_main.h"

/*
 * Hostile headers: the text between the braces of the header, and the
 * size of the data buffer, which holds an I64 2 and then f32 1.0s. The
 * tensors of the base case: a.count [0, 8), a.mean [8, 16), a.var
 * [16, 24). status 0: the body must decode.
 */
#define ST_C "\"a.count\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [0, 8]}"

#define ST_M "\"a.mean\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}"

#define ST_V "\"a.var\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [16, 24]}"

#define ST_CMV ST_C ", " ST_M ", " ST_V

#define ST_OK ST_META ", " ST_CMV

#define ST_MD(x) "\"__metadata__\": {" x "}, " ST_CMV

#define ST_STEP(s) ST_MD("\"worker\": \"w\", \"seq\": \"0\", \"step\": " s)

#define ST_MEAN(x) ST_META ", " ST_C ", " ST_V ", \"a.mean\": " x

#define ST_COUNT(x) ST_META ", " ST_M ", " ST_V ", \"a.count\": " x

static const struct st_case {
	const char *header;
	size_t data;
	int status;
	const char *code, *path;
} st_cases[] = {
	{ ST_OK, 24, 0, NULL, NULL },
	{ ST_CMV ", " ST_META, 24, 0, NULL, NULL },
	/* metadata */
	{ ST_CMV, 24, 400, BN_E_MISSING, "__metadata__" },
	{ "\"__metadata__\": [\"w\"], " ST_CMV, 24, 400, BN_E_TYPE, "__metadata__" },
	{ "\"__metadata__\": null, " ST_CMV, 24, 400, BN_E_TYPE, "__metadata__" },
	{ ST_MD("\"step\": \"1\", \"seq\": \"0\""), 24, 400, BN_E_MISSING, "__metadata__.worker" },
	{ ST_MD("\"worker\": \"w\", \"seq\": \"0\""), 24, 400, BN_E_MISSING, "__metadata__.step" },
	{ ST_MD("\"worker\": \"w\", \"step\": \"0\""), 24, 400, BN_E_MISSING, "__metadata__.seq" },
	{ ST_MD("\"worker\": 7, \"step\": \"1\", \"seq\": \"0\""), 24, 400, BN_E_TYPE,
	  "__metadata__.worker" },
	{ ST_MD("\"worker\": \"a b\", \"step\": \"1\", \"seq\": \"0\""), 24, 422, BN_E_INVALID,
	  "__metadata__.worker" },
	{ ST_MD("\"worker\": \"\", \"step\": \"1\", \"seq\": \"0\""), 24, 422, BN_E_INVALID,
	  "__metadata__.worker" },
	{ ST_STEP("1"), 24, 400, BN_E_TYPE, "__metadata__.step" },
	{ ST_STEP("1.0"), 24, 400, BN_E_TYPE, "__metadata__.step" },
	{ ST_STEP("null"), 24, 400, BN_E_TYPE, "__metadata__.step" },
	{ ST_STEP("\"-1\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"+1\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\" 1\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"1 \""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"1.0\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"1.\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"1e3\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"0x10\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"01\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"\\u0661\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"9223372036854775808\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"18446744073709551617\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"99999999999999999999999999\""), 24, 422, BN_E_INVALID, "__metadata__.step" },
	{ ST_STEP("\"0\""), 24, 0, NULL, NULL },
	{ ST_STEP("\"9223372036854775807\""), 24, 0, NULL, NULL },
	{ ST_MD("\"worker\": \"w\", \"step\": \"1\", \"seq\": \"-0\""), 24, 422, BN_E_INVALID,
	  "__metadata__.seq" },
	{ ST_MD(ST_WSS ", \"domain\": \"*\""), 24, 422, BN_E_INVALID, "__metadata__.domain" },
	{ ST_MD(ST_WSS ", \"domain\": [\"d\"]"), 24, 400, BN_E_TYPE, "__metadata__.domain" },
	{ ST_MD(ST_WSS ", \"var_kind\": \"Biased\""), 24, 422, BN_E_INVALID,
	  "__metadata__.var_kind" },
	{ ST_MD(ST_WSS ", \"var_kind\": true"), 24, 400, BN_E_TYPE, "__metadata__.var_kind" },
	{ ST_MD(ST_WSS ", \"colour\": \"blue\""), 24, 422, BN_E_INVALID, "__metadata__.colour" },
	{ ST_MD(ST_WSS ", \"layers\": \"x\""), 24, 422, BN_E_INVALID, "__metadata__.layers" },
	/* tensor names */
	{ ST_META ", " ST_M ", " ST_V
		  ", \"count\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [0, 8]}",
	  24, 422, BN_E_INVALID, "count" },
	{ ST_META ", " ST_C ", " ST_V
		  ", \"a.bias\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}",
	  24, 422, BN_E_INVALID, "a.bias" },
	{ ST_META ", " ST_C ", " ST_V
		  ", \"a.Mean\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}",
	  24, 422, BN_E_INVALID, "a.Mean" },
	{ ST_META ", " ST_C ", " ST_V
		  ", \"a.mean.\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}",
	  24, 422, BN_E_INVALID, "a.mean." },
	{ ST_META ", " ST_M ", " ST_V
		  ", \".count\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [0, 8]}",
	  24, 422, BN_E_INVALID, ".count" },
	{ ST_META ", " ST_M ", " ST_V
		  ", \"a b.count\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [0, 8]}",
	  24, 422, BN_E_INVALID, "a b.count" },
	{ ST_META
	  ", " ST_M ", " ST_V
	  ", \"a\\u00e9.count\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [0, 8]}",
	  24, 422, BN_E_INVALID, "a??.count" },
	{ ST_META ", " ST_M ", " ST_V
		  ", \"a\\n.count\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [0, 8]}",
	  24, 422, BN_E_INVALID, "a?.count" },
	/* tensor entries */
	{ ST_MEAN("[8, 16]"), 24, 400, BN_E_TYPE, "a.mean" },
	{ ST_MEAN("\"F32\""), 24, 400, BN_E_TYPE, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16], \"x\": 1}"), 24,
	  422, BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"shape\": [2], \"data_offsets\": [8, 16]}"), 24, 400, BN_E_MISSING, "a.mean" },
	{ ST_MEAN("{\"dtype\": 32, \"shape\": [2], \"data_offsets\": [8, 16]}"), 24, 400, BN_E_TYPE,
	  "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F16\", \"shape\": [4], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"f32\", \"shape\": [2], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\\u0000\", \"shape\": [2], \"data_offsets\": [8, 16]}"), 24,
	  400, BN_E_MALFORMED, "__header__" },
	{ ST_COUNT("{\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [0, 8]}"), 24, 422,
	  BN_E_INVALID, "a.count" },
	{ ST_COUNT("{\"dtype\": \"U64\", \"shape\": [], \"data_offsets\": [0, 8]}"), 24, 422,
	  BN_E_INVALID, "a.count" },
	{ ST_COUNT("{\"dtype\": \"F64\", \"shape\": [], \"data_offsets\": [0, 8]}"), 24, 422,
	  BN_E_INVALID, "a.count" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"data_offsets\": [8, 16]}"), 24, 400, BN_E_MISSING,
	  "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": 2, \"data_offsets\": [8, 16]}"), 24, 400,
	  BN_E_TYPE, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": {}, \"data_offsets\": [8, 16]}"), 24, 400,
	  BN_E_TYPE, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [8, 16]}"), 24, 400,
	  BN_E_TYPE, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [null], \"data_offsets\": [8, 16]}"), 24, 400,
	  BN_E_TYPE, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2.0], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [1, 2], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2, 1], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [9223372036854775807], \"data_offsets\": [8, "
		  "16]}"),
	  24, 422, BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [4611686018427387906], \"data_offsets\": [8, "
		  "16]}"),
	  24, 422, BN_E_INVALID, "a.mean" },
	{ ST_COUNT("{\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]}"), 24, 0, NULL,
	  NULL },
	{ ST_COUNT("{\"dtype\": \"I64\", \"shape\": [2], \"data_offsets\": [0, 8]}"), 24, 422,
	  BN_E_INVALID, "a.count" },
	{ ST_COUNT("{\"dtype\": \"I64\", \"shape\": [0], \"data_offsets\": [0, 8]}"), 24, 422,
	  BN_E_INVALID, "a.count" },
	{ ST_COUNT("{\"dtype\": \"I64\", \"shape\": [1, 1], \"data_offsets\": [0, 8]}"), 24, 422,
	  BN_E_INVALID, "a.count" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2]}"), 24, 400, BN_E_MISSING, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": \"8,16\"}"), 24, 400,
	  BN_E_TYPE, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": {\"8\": 16}}"), 24, 400,
	  BN_E_TYPE, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": []}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [\"8\", 16]}"), 24, 400,
	  BN_E_TYPE, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, true]}"), 24, 400,
	  BN_E_TYPE, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8.0, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 1.6e1]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [-8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [16, 8]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, "
		  "99999999999999999999]}"),
	  24, 400, BN_E_MALFORMED, "__header__" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, "
		  "9223372036854775807]}"),
	  24, 422, BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [9223372036854775807, "
		  "9223372036854775807]}"),
	  24, 422, BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [24, 32]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.mean" },
	{ ST_MEAN("{\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [8, 16]}"), 24, 422,
	  BN_E_INVALID, "a.var" },
	{ ST_COUNT("{\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [0, 4]}"), 24, 422,
	  BN_E_INVALID, "a.count" },
	/* layout */
	{ ST_OK, 28, 422, BN_E_INVALID, "__header__" },
	{ ST_OK, 25, 422, BN_E_INVALID, "__header__" },
	{ ST_OK, 23, 422, BN_E_INVALID, "a.var" },
	{ ST_META ", " ST_C ", " ST_M
		  ", \"a.var\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}",
	  16, 422, BN_E_INVALID, "a.var" },
	{ ST_META ", " ST_C ", " ST_M
		  ", \"a.var\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [12, 20]}",
	  20, 422, BN_E_INVALID, "a.var" },
	{ ST_META ", " ST_C ", " ST_M
		  ", \"a.var\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [20, 28]}",
	  28, 422, BN_E_INVALID, "__header__" },
	{ ST_META ", " ST_M ", " ST_V
		  ", \"a.count\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [4, 12]}",
	  24, 422, BN_E_INVALID, "__header__" },
	{ ST_META ", \"a.count\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [4, 12]}",
	  12, 422, BN_E_INVALID, "__header__" },
	{ ST_OK ", \"b.mean\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 4]}", 24,
	  422, BN_E_INVALID, "b.mean" },
	/* empty tensors at a boundary tile fine; b then lacks its count */
	{ ST_OK ", \"b.mean\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 8]}", 24,
	  400, BN_E_MISSING, "b.count" },
	{ ST_OK ", \"b.mean\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [24, 24]}",
	  24, 400, BN_E_MISSING, "b.count" },
	/* the whole header */
	{ "", 24, 400, BN_E_MISSING, "__metadata__" },
	{ ST_META, 0, 422, BN_E_INVALID, "__header__" },
	{ ST_META, 8, 422, BN_E_INVALID, "__header__" },
	{ ST_OK ", " ST_C, 24, 400, BN_E_MALFORMED, "__header__" },
	{ ST_OK ", " ST_META, 24, 400, BN_E_MALFORMED, "__header__" },
	{ ST_MD(ST_WSS ", \"seq\": \"0\""), 24, 400, BN_E_MALFORMED, "__header__" },
	{ ST_MEAN("{\"dtype\": \"F32\", \"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, "
		  "16]}"),
	  24, 400, BN_E_MALFORMED, "__header__" },
	{ ST_OK ",", 24, 400, BN_E_MALFORMED, "__header__" },
	{ ST_OK "} {", 24, 400, BN_E_MALFORMED, "__header__" },
	{ ST_OK
	  ", \"a.ema_mean\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [24, 32]}",
	  32, 422, BN_E_INVALID, "a.ema_mean" },
	{ ST_OK ", \"a.ema_mean\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [24, 32]}"
		", \"a.ema_var\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [32, 48]}",
	  48, 0, NULL, NULL },
};

/* The data of st_cases: an I64 2, then f32 1.0s. */
static unsigned char *st_case_data(size_t n)
{
	unsigned char *d = calloc(1, n + 1);

	ck_assert_ptr_nonnull(d);
	if (n >= 8)
		put_le64(d, 2);
	for (size_t i = 8; i + 4 <= n; i += 4)
		put_le32(d + i, 0x3f800000u);
	return d;
}

START_TEST(test_st_hostile)
{
	size_t failures = 0;

	for (size_t i = 0; i < sizeof(st_cases) / sizeof(st_cases[0]); i++) {
		const struct st_case *c = &st_cases[i];
		struct ingest_batch *b = (struct ingest_batch *)&b;
		struct sbuf h = { 0 };
		unsigned char *data = st_case_data(c->data), *body;
		struct bn_error err;
		size_t len;
		int r;

		sb_printf(&h, "{%s}", c->header);
		body = st_body(h.s, data, c->data, &len);
		r = st_decode(body, len, &limits, &b, &err);
		if (c->status == 0 ? r != 0
				   : (r != -EINVAL || b != NULL || err.status != c->status ||
				      strcmp(err.code, c->code) != 0 ||
				      strcmp(err.path, c->path) != 0 || err.message[0] == '\0')) {
			fprintf(stderr,
				"st_cases[%zu] %s\n  expected %d %s '%s', got r=%d %d %s '%s' "
				"(%s)\n",
				i, h.s, c->status, c->code ? c->code : "-", c->path ? c->path : "",
				r, err.status, err.code, err.path, err.message);
			failures++;
		}
		if (r == 0)
			ingest_batch_free(b);
		free(body);
		free(data);
		sb_free(&h);
	}
	ck_assert_msg(failures == 0, "%zu hostile headers misjudged", failures);
}
END_TEST

/* The length prefix and the header as bytes. */
START_TEST(test_st_header_bytes)
{
	static const char ok[] = "{" ST_OK "}";
	unsigned char *data = st_case_data(24), *body;
	unsigned char raw[64];
	struct sbuf h = { 0 };
	size_t len;

	/* shorter than the length itself */
	memset(raw, 0, sizeof(raw));
	for (size_t n = 0; n < 8; n++)
		st_expect(raw, n, &limits, 422, BN_E_INVALID, "__header__", "short");
	/* length 0: no JSON at all */
	st_expect(raw, 8, &limits, 400, BN_E_MALFORMED, "__header__", "empty header");
	/* lengths past the end, just and far */
	body = st_body(ok, data, 24, &len);
	put_le64(body, strlen(ok) + 25);
	st_expect(body, len, &limits, 422, BN_E_INVALID, "__header__", "past the end");
	put_le64(body, strlen(ok) + 24);
	st_expect(body, len, &limits, 400, BN_E_MALFORMED, "__header__", "header takes the data");
	put_le64(body, 100000001);
	st_expect(body, len, &limits, 422, BN_E_INVALID, "__header__", "> 100 MB");
	put_le64(body, UINT64_MAX);
	st_expect(body, len, &limits, 422, BN_E_INVALID, "__header__", "2^64-1");
	put_le64(body, (uint64_t)1 << 63);
	st_expect(body, len, &limits, 422, BN_E_INVALID, "__header__", "2^63");
	put_le64(body, strlen(ok));
	ingest_batch_free(st_ok(body, len, &limits));
	free(body);

	/* not an object */
	static const char *const not_obj[] = { "[]", "null", "1", "\"{}\"", "true" };
	for (size_t i = 0; i < sizeof(not_obj) / sizeof(not_obj[0]); i++) {
		body = st_body(not_obj[i], NULL, 0, &len);
		st_expect(body, len, &limits, 400, BN_E_MALFORMED, "__header__", not_obj[i]);
		free(body);
	}
	/* a NUL, invalid UTF-8, binary: not JSON */
	body = st_body("{\"__metadata__\": {}}", NULL, 0, &len);
	body[8 + 3] = '\0';
	st_expect(body, len, &limits, 400, BN_E_MALFORMED, "__header__", "NUL");
	body[8 + 3] = 0xff;
	st_expect(body, len, &limits, 400, BN_E_MALFORMED, "__header__", "0xff");
	free(body);
	/* nesting deeper than jansson's limit */
	for (int i = 0; i < 5000; i++)
		sb_printf(&h, "[");
	body = st_body(h.s, NULL, 0, &len);
	st_expect(body, len, &limits, 400, BN_E_MALFORMED, "__header__", "deep");
	free(body);
	sb_free(&h);
	/* trailing spaces (safetensors pads the header to align the data)
	 * are fine, anything else after the object is not */
	sb_printf(&h, "%s       ", ok);
	body = st_body(h.s, data, 24, &len);
	ingest_batch_free(st_ok(body, len, &limits));
	body[8 + h.len - 1] = 'x';
	st_expect(body, len, &limits, 400, BN_E_MALFORMED, "__header__", "trailing x");
	body[8 + h.len - 1] = '\0';
	st_expect(body, len, &limits, 400, BN_E_MALFORMED, "__header__", "trailing NUL");
	free(body);
	sb_free(&h);

	/* a long hostile tensor name is cut in the path */
	sb_printf(&h, "{" ST_OK ", \"");
	for (int i = 0; i < 2000; i++)
		sb_printf(&h, "x");
	sb_printf(&h, ".mean\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [24, 24]}}");
	body = st_body(h.s, data, 24, &len);
	{
		struct ingest_batch *b = NULL;
		struct bn_error err;

		ck_assert_int_eq(st_decode(body, len, &limits, &b, &err), -EINVAL);
		ck_assert_int_eq(err.status, 422);
		ck_assert_uint_lt(strlen(err.path), 300);
		ck_assert_msg(strstr(err.path, "...") != NULL, "%s", err.path);
	}
	free(body);
	sb_free(&h);
	/* a layer name of 256 characters is fine, of 257 not */
	for (int n = 256; n <= 257; n++) {
		char name[300];
		struct stw w = { 0 };

		memset(name, 'l', (size_t)n);
		snprintf(name + n, sizeof(name) - (size_t)n, ".count");
		stw_count(&w, name, 0, true);
		body = stw_finish(&w, ST_META, 0, &len);
		if (n == 256) {
			ingest_batch_free(st_ok(body, len, &limits));
		} else {
			struct ingest_batch *b = NULL;
			struct bn_error err;

			ck_assert_int_eq(st_decode(body, len, &limits, &b, &err), -EINVAL);
			ck_assert_int_eq(err.status, 422);
			ck_assert_str_eq(err.code, BN_E_INVALID);
		}
		free(body);
	}
	free(data);
}
END_TEST

START_TEST(test_st_arguments)
{
	struct stw w = { 0 };
	struct ingest_batch *b = NULL;
	struct bn_error err;
	unsigned char *body;
	size_t len;

	stw_count(&w, "a.count", 0, true);
	body = stw_finish(&w, ST_META, 0, &len);
	ck_assert_int_eq(ingest_decode_safetensors("r 1", body, len, &limits, &b, &err), -EINVAL);
	ck_assert_ptr_null(b);
	ck_assert_int_eq(err.status, 422);
	ck_assert_str_eq(err.path, "run");
	ck_assert_int_eq(ingest_decode_safetensors(NULL, body, len, &limits, &b, &err), -EINVAL);
	ck_assert_str_eq(err.path, "run");
	/* NULL limits: the defaults; NULL err is allowed */
	ck_assert_int_eq(ingest_decode_safetensors("r1", body, len, NULL, &b, NULL), 0);
	ingest_batch_free(b);
	ck_assert_int_eq(ingest_decode_safetensors("r1", body, 7, NULL, &b, NULL), -EINVAL);
	ck_assert_ptr_null(b);
	ck_assert_int_eq(ingest_decode_safetensors("r1", NULL, 0, NULL, &b, &err), -EINVAL);
	ck_assert_ptr_null(b);
	ck_assert_str_eq(err.path, "__header__");
	free(body);
}
END_TEST

/*
 * Truncations, byte flips and digit changes of a valid body never crash
 * or read outside the body (st_decode() makes ASan and valgrind see it)
 * and give either a batch or a 4xx with a printable message. Digit
 * changes get past the JSON parser to the offsets, shapes and metadata.
 */
static void fuzz_one(const unsigned char *body, size_t len, size_t *ok)
{
	struct ingest_batch *b = NULL;
	struct bn_error err;
	int r = st_decode(body, len, &limits, &b, &err);

	if (r == 0) {
		ck_assert_ptr_nonnull(b);
		ck_assert_uint_ge(b->n_layers, 1);
		ingest_batch_free(b);
		(*ok)++;
		return;
	}
	ck_assert_int_eq(r, -EINVAL);
	ck_assert_ptr_null(b);
	ck_assert_msg(err.status >= 400 && err.status < 500, "status %d", err.status);
	ck_assert_str_ne(err.code, "");
	ck_assert_str_ne(err.message, "");
	for (size_t i = 0; err.message[i]; i++)
		ck_assert(err.message[i] >= 0x20 && err.message[i] < 0x7f);
	for (size_t i = 0; err.path[i]; i++)
		ck_assert(err.path[i] >= 0x20 && err.path[i] < 0x7f);
}

START_TEST(test_st_fuzz)
{
	static const enum enc mixed[6] = { F32, F64, F32, F64, F64, F32 };
	struct hbatch h;
	unsigned char *base, *body;
	size_t len, hlen, digits[1024], n_digits = 0, ok = 0;
	uint32_t x = 0x9e3779b9u;

	hbatch_init(&h);
	base = hbatch_st(&h, mixed, true, false, &len);
	body = malloc(len);
	ck_assert_ptr_nonnull(body);
	hlen = (size_t)base[0] | (size_t)base[1] << 8;
	for (size_t i = 8; i < 8 + hlen && n_digits < 1024; i++)
		if (base[i] >= '0' && base[i] <= '9')
			digits[n_digits++] = i;
	ck_assert_uint_gt(n_digits, 50);

	/* every truncation */
	for (size_t n = 0; n < len; n++)
		fuzz_one(base, n, &ok);
	ck_assert_uint_eq(ok, 0);
	/* 1 to 4 random bytes changed, anywhere */
	for (int it = 0; it < 2000; it++) {
		int k = 1 + (int)(fuzz_next(&x) % 4);

		memcpy(body, base, len);
		while (k-- > 0)
			body[fuzz_next(&x) % len] ^= (unsigned char)(1 + fuzz_next(&x) % 255);
		fuzz_one(body, len, &ok);
	}
	/* 1 to 3 digits of the header changed, then maybe truncated */
	for (int it = 0; it < 2000; it++) {
		int k = 1 + (int)(fuzz_next(&x) % 3);
		size_t n = len;

		memcpy(body, base, len);
		while (k-- > 0)
			body[digits[fuzz_next(&x) % n_digits]] =
				(unsigned char)('0' + fuzz_next(&x) % 10);
		if (fuzz_next(&x) % 4 == 0)
			n = fuzz_next(&x) % (len + 1);
		fuzz_one(body, n, &ok);
	}
	/* some changes (in the data, or a digit for the same digit) decode */
	ck_assert_uint_gt(ok, 100);
	free(body);
	free(base);
}
END_TEST

/* ------------------------------------------------------------------ */

static Suite *suite(void)
{
	Suite *s = suite_create("ingest_safetensors_hostile");
	TCase *tc;

	tc = tcase_create("safetensors");
	tcase_add_test(tc, test_st_hostile);
	tcase_add_test(tc, test_st_header_bytes);
	tcase_add_test(tc, test_st_arguments);
	tcase_add_test(tc, test_st_fuzz);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(suite)
