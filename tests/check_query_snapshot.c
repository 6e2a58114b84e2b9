/*
 * check_query_snapshot: snapshots (create, retry, bad bodies, JSON and
 * safetensors export) on the run of tests/query_fixture.c, and the generic
 * safetensors writer, byte for byte.
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
	bn = qtu_layer_of(doc, "bn");
	ck_assert_int_eq(json_integer_value(json_object_get(bn, "count")), 32);
	qtu_assert_close(qtu_at(bn, "mean", 1), snap_bn_mean[1], 0, "bn mean");
	qtu_assert_close(qtu_at(bn, "var", 0), snap_bn_var[0], 0, "bn var");
	qtu_assert_close(qtu_at(qtu_layer_of(doc, "head.bn"), "var", 0), snap_head_var[0], 0,
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
	Suite *s = suite_create("query_snapshot");
	TCase *tc = tcase_create("store");
	TCase *tw = tcase_create("writer");

	tcase_add_checked_fixture(tc, qtu_setup, qtu_teardown);
	tcase_add_test(tc, test_snapshot_roundtrip);
	tcase_add_loop_test(tc, test_snapshot_bad_bodies, 0,
			    (int)(sizeof(bad_bodies) / sizeof(bad_bodies[0])));
	tcase_add_test(tc, test_snapshot_safetensors);
	suite_add_tcase(s, tc);
	tcase_add_test(tw, test_safetensors_write_bytes);
	tcase_add_test(tw, test_safetensors_write_refuses);
	suite_add_tcase(s, tw);
	return s;
}

CHECK_MAIN(query_suite)
