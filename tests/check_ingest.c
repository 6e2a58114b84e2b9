/*
 * check_ingest: unit tests of the ingest module's small jobs (names,
 * base64, the content hash) and its fixtures. The other ingest programs
 * are check_ingest_json (the JSON form), check_ingest_safetensors and
 * check_ingest_safetensors_hostile (the safetensors form), and
 * check_ingest_parity and check_ingest_safetensors_parity (each form's
 * fast scanner against its jansson path).
 *
 * The bad-input cases live as data in tests/fixtures/invalid/<name>.json
 * (a request body) with <name>.expect ("<status> <code> <path>", path "-"
 * when empty); the bodies in tests/fixtures/valid/ must decode. The
 * integration tests POST the same files to the daemon.
 * tests/fixtures/safetensors/ holds binary bodies in the same layout. The
 * fixtures directory comes from $BNSTAT_FIXTURES, else "tests/fixtures"
 * (relative to the source tree).
 */
#include "ingest_testutil.h"
#include "safetensors_testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check_main.h"

/* ------------------------------------------------------------------ */
/* names */

START_TEST(test_names)
{
	char s[300];

	ck_assert(ingest_name_valid("r1"));
	ck_assert(ingest_name_valid("rank-0_a.B9"));
	ck_assert(ingest_name_valid(".a"));
	ck_assert(ingest_name_valid("a..b"));
	ck_assert(!ingest_name_valid("."));
	ck_assert(!ingest_name_valid(".."));
	ck_assert(!ingest_name_valid("..."));
	ck_assert(!ingest_layer_name_valid(".."));
	ck_assert(!ingest_name_valid(""));
	ck_assert(!ingest_name_valid(NULL));
	ck_assert(!ingest_name_valid("*"));
	ck_assert(!ingest_name_valid("a b"));
	ck_assert(!ingest_name_valid("a/b"));
	ck_assert(!ingest_name_valid("a\nb"));
	ck_assert(!ingest_name_valid("r\xc3\xa9"));
	memset(s, 'a', sizeof(s));
	s[128] = '\0';
	ck_assert(ingest_name_valid(s));
	ck_assert(ingest_layer_name_valid(s));
	s[128] = 'a';
	s[129] = '\0';
	ck_assert(!ingest_name_valid(s));
	ck_assert(ingest_layer_name_valid(s));
	s[129] = 'a';
	s[256] = '\0';
	ck_assert(ingest_layer_name_valid(s));
	s[256] = 'a';
	s[257] = '\0';
	ck_assert(!ingest_layer_name_valid(s));
	ck_assert(ingest_layer_name_valid("layer1.0.bn1"));
	ck_assert(!ingest_layer_name_valid("layer1[0]"));
	ck_assert(!ingest_layer_name_valid(""));
	ck_assert(!ingest_layer_name_valid(NULL));
}
END_TEST

/* ------------------------------------------------------------------ */
/* base64 */

START_TEST(test_base64_rfc4648)
{
	/* RFC 4648 section 10 */
	static const struct {
		const char *enc, *dec;
	} v[] = {
		{ "", "" },
		{ "Zg==", "f" },
		{ "Zm8=", "fo" },
		{ "Zm9v", "foo" },
		{ "Zm9vYg==", "foob" },
		{ "Zm9vYmE=", "fooba" },
		{ "Zm9vYmFy", "foobar" },
	};
	uint8_t out[16];

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		long n;

		memset(out, 0xAA, sizeof(out));
		n = ingest_base64_decode(v[i].enc, strlen(v[i].enc), out);
		ck_assert_int_eq(n, (long)strlen(v[i].dec));
		ck_assert_mem_eq(out, v[i].dec, (size_t)n);
		/* writes exactly n bytes */
		ck_assert_int_eq(out[n], 0xAA);
	}
}
END_TEST

START_TEST(test_base64_all_bytes)
{
	uint8_t data[256], out[256];
	struct sbuf b = { 0 };
	long n;

	for (int i = 0; i < 256; i++)
		data[i] = (uint8_t)i;
	sb_base64(&b, data, sizeof(data));
	n = ingest_base64_decode(b.s, b.len, out);
	ck_assert_int_eq(n, 256);
	ck_assert_mem_eq(out, data, 256);
	/* every length 0..40 of pseudo-random bytes round-trips */
	for (size_t len = 0; len <= 40; len++) {
		uint8_t rnd[40] = { 0 }, dec[40];
		uint32_t x = 2463534242u + (uint32_t)len;

		for (size_t i = 0; i < len; i++) {
			x ^= x << 13, x ^= x >> 17, x ^= x << 5;
			rnd[i] = (uint8_t)x;
		}
		b.len = 0;
		sb_base64(&b, rnd, len);
		n = ingest_base64_decode(b.s ? b.s : "", b.len, dec);
		ck_assert_int_eq(n, (long)len);
		ck_assert_mem_eq(dec, rnd, len);
	}
	sb_free(&b);
}
END_TEST

START_TEST(test_base64_invalid)
{
	static const char *const bad[] = {
		"Zg",	       /* no padding */
		"Zg=",	       /* length not a multiple of 4 */
		"Zm9vY",       /* length */
		"Z===",	       /* too much padding */
		"====",	       /* only padding */
		"=Zm9",	       /* padding first */
		"Zm=v",	       /* padding inside the last quantum */
		"Zg==Zm9v",    /* padding before the end */
		"Zh==",	       /* non-zero unused bits (canonical is Zg==) */
		"Zm9=",	       /* non-zero unused bits (canonical is Zm8=) */
		"Zm9v\n",      /* whitespace */
		"Zm9 vYmFy",   /* whitespace */
		"Zm9-",	       /* URL-safe alphabet */
		"Zm9_",	       /* URL-safe alphabet */
		"Zm9*",	       /* not base64 at all */
		"Zm9\xc3\xa9", /* non-ASCII */
	};
	uint8_t out[16];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(ingest_base64_decode(bad[i], strlen(bad[i]), out) == -EINVAL,
			      "accepted \"%s\"", bad[i]);
	/* an embedded NUL is a bad character, not the end */
	ck_assert_int_eq(ingest_base64_decode("Zm\0v", 4, out), -EINVAL);
	/* a bad character in the bulk, not only in the last quantum */
	ck_assert_int_eq(ingest_base64_decode("Zm9vY.Fy", 8, out), -EINVAL);
}
END_TEST

START_TEST(test_hash_encodings)
{
	static const enum enc all[][6] = {
		{ NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS },
		{ F32, F32, F32, F32, F32, F32 },
		{ F64, F64, F64, F64, F64, F64 },
		{ NUMBERS, F32, F64, NUMBERS, F64, F32 },
		{ F64, NUMBERS, F32, F32, NUMBERS, F64 },
	};
	struct hbatch h;
	uint8_t ref[INGEST_HASH_SIZE], got[INGEST_HASH_SIZE], zero[INGEST_HASH_SIZE] = { 0 };

	hbatch_init(&h);
	hbatch_hash(&h, all[0], false, ref);
	ck_assert_mem_ne(ref, zero, INGEST_HASH_SIZE);
	for (size_t e = 0; e < sizeof(all) / sizeof(all[0]); e++)
		for (int rev = 0; rev < 2; rev++) {
			hbatch_hash(&h, all[e], rev, got);
			ck_assert_msg(memcmp(ref, got, INGEST_HASH_SIZE) == 0,
				      "hash differs for encoding set %zu, reverse %d", e, rev);
		}
}
END_TEST

START_TEST(test_hash_differs)
{
	static const enum enc nums[6] = { NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS };
	struct hbatch base, h;
	uint8_t ref[INGEST_HASH_SIZE], got[INGEST_HASH_SIZE];
	int cases = 0;

	hbatch_init(&base);
	hbatch_hash(&base, nums, false, ref);
	/* each value of each array, nudged by one ulp */
	for (int k = 0; k < 4; k++)
		for (int i = 0; i < 5; i++) {
			h = base;
			h.a[k][i] = nextafter(h.a[k][i], INFINITY);
			hbatch_hash(&h, nums, false, got);
			ck_assert_msg(memcmp(ref, got, INGEST_HASH_SIZE) != 0,
				      "same hash after changing a[%d][%d]", k, i);
			cases++;
		}
	for (int k = 0; k < 2; k++)
		for (int i = 0; i < 7; i++) {
			h = base;
			h.c[k][i] = nextafter(h.c[k][i], INFINITY);
			hbatch_hash(&h, nums, false, got);
			ck_assert_msg(memcmp(ref, got, INGEST_HASH_SIZE) != 0,
				      "same hash after changing c[%d][%d]", k, i);
			cases++;
		}
	/* swapping two values of one array */
	h = base;
	h.c[0][2] = base.c[0][3];
	h.c[0][3] = base.c[0][2];
	hbatch_hash(&h, nums, false, got);
	ck_assert_mem_ne(ref, got, INGEST_HASH_SIZE);
	/* counts */
	h = base;
	h.count_a++;
	hbatch_hash(&h, nums, false, got);
	ck_assert_mem_ne(ref, got, INGEST_HASH_SIZE);
	h = base;
	h.count_c = 65;
	hbatch_hash(&h, nums, false, got);
	ck_assert_mem_ne(ref, got, INGEST_HASH_SIZE);
	/* var_kind */
	h = base;
	h.var_kind = "biased";
	hbatch_hash(&h, nums, false, got);
	ck_assert_mem_ne(ref, got, INGEST_HASH_SIZE);
	ck_assert_int_eq(cases, 34);
}
END_TEST

/* Hashes of small bodies that must all differ from each other. */
START_TEST(test_hash_structure)
{
	static const char *const bodies[] = {
		"\"a\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4]}",
		"\"a\": {\"count\": 2, \"mean\": [1], \"var\": [3]}, \"b\": {\"count\": 2, "
		"\"mean\": [2], \"var\": [4]}",
		"\"b\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4]}",
		"\"ab\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4]}",
		"\"a\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4]}, \"z\": {\"count\": 0}",
		"\"a\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4], \"ema_mean\": [0, 0], "
		"\"ema_var\": [1, 1]}",
		"\"a\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4], \"ema_mean\": [0, 0], "
		"\"ema_var\": [1, 2]}",
		"\"a\": {\"count\": 2, \"mean\": [3, 4], \"var\": [1, 2]}",
		"\"a\": {\"count\": 0}",
		"\"a\": {\"count\": 0, \"mean\": [0], \"var\": [0]}",
		"\"a\": {\"count\": 2, \"mean\": [0], \"var\": [0]}",
		"\"a\": {\"count\": 2, \"mean\": [0, 0], \"var\": [0, 0]}",
	};
	enum { N = sizeof(bodies) / sizeof(bodies[0]) };
	uint8_t h[N][INGEST_HASH_SIZE];

	for (size_t i = 0; i < N; i++) {
		struct sbuf s = { 0 };
		struct ingest_batch *b;

		sb_printf(&s, "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {%s}}",
			  bodies[i]);
		b = decode_ok(s.s);
		memcpy(h[i], b->hash, INGEST_HASH_SIZE);
		ingest_batch_free(b);
		sb_free(&s);
		for (size_t j = 0; j < i; j++)
			ck_assert_msg(memcmp(h[i], h[j], INGEST_HASH_SIZE) != 0,
				      "bodies %zu and %zu hash the same", j, i);
	}
	/* identity is not content */
	{
		struct ingest_batch *a = decode_ok("{\"worker\": \"w\", \"step\": 1, \"seq\": 0, "
						   "\"layers\": {\"a\": {\"count\": 0}}}");
		struct ingest_batch *b =
			decode_ok("{\"worker\": \"x\", \"step\": 2, \"seq\": 5, \"domain\": \"d\", "
				  "\"layers\": {\"a\": {\"count\": 0}}}");

		ck_assert_mem_eq(a->hash, b->hash, INGEST_HASH_SIZE);
		ingest_batch_free(a);
		ingest_batch_free(b);
	}
}
END_TEST

START_TEST(test_fixtures_invalid)
{
	char dir[4096], path[4200];
	char **names;
	size_t n, failures = 0;

	snprintf(dir, sizeof(dir), "%s/invalid", fixtures_dir());
	names = list_files(dir, ".json", &n);
	ck_assert_msg(n >= 30, "only %zu fixtures in %s", n, dir);
	for (size_t i = 0; i < n; i++) {
		struct ingest_batch *b = (struct ingest_batch *)&b;
		struct bn_error err;
		struct expect e;
		char *body;
		size_t blen;
		int r;

		snprintf(path, sizeof(path), "%s/%s.json", dir, names[i]);
		body = read_file(path, &blen);
		ck_assert_msg(body != NULL, "cannot read %s", path);
		read_expect(dir, names[i], &e);

		bn_error_clear(&err);
		r = ingest_decode_json("r1", body, blen, &limits, &b, &err);
		failures += misjudged("invalid", names[i], r, b, &err, &e);
		if (r == 0)
			ingest_batch_free(b);
		free(body);
	}
	free_names(names, n);
	ck_assert_msg(failures == 0, "%zu of %zu invalid fixtures misjudged", failures, n);
}
END_TEST

START_TEST(test_fixtures_valid)
{
	char dir[4096], path[4200];
	char **names;
	size_t n, failures = 0;

	snprintf(dir, sizeof(dir), "%s/valid", fixtures_dir());
	names = list_files(dir, ".json", &n);
	ck_assert_msg(n >= 4, "only %zu fixtures in %s", n, dir);
	for (size_t i = 0; i < n; i++) {
		struct ingest_batch *b = NULL;
		struct bn_error err;
		size_t blen;
		char *body;

		snprintf(path, sizeof(path), "%s/%s.json", dir, names[i]);
		body = read_file(path, &blen);
		ck_assert_msg(body != NULL, "cannot read %s", path);
		bn_error_clear(&err);
		if (ingest_decode_json("r1", body, blen, &limits, &b, &err) != 0) {
			fprintf(stderr, "valid/%s: %d %s '%s' (%s)\n", names[i], err.status,
				err.code, err.path, err.message);
			failures++;
		} else {
			ck_assert_ptr_nonnull(b);
			ck_assert_uint_ge(b->n_layers, 1);
			ingest_batch_free(b);
		}
		free(body);
	}
	free_names(names, n);
	ck_assert_msg(failures == 0, "%zu of %zu valid fixtures rejected", failures, n);
}
END_TEST

/* The mixed fixture carries the same numbers in several encodings. */
START_TEST(test_fixture_mixed_values)
{
	char path[4200];
	struct ingest_batch *b;
	size_t len;
	char *body;

	snprintf(path, sizeof(path), "%s/valid/mixed.json", fixtures_dir());
	body = read_file(path, &len);
	ck_assert_msg(body != NULL, "cannot read %s", path);
	b = decode_ok(body);
	ck_assert_uint_eq(b->n_layers, 2);
	ck_assert_str_eq(b->layers[0].name, "conv1.bn");
	ck_assert_uint_eq(b->layers[0].channels, 4);
	ck_assert(b->layers[0].var[2] == 3.5);
	ck_assert(b->layers[0].ema_mean[1] == -0.125);
	ck_assert(b->layers[0].ema_var[1] == 0.925);
	ck_assert_str_eq(b->layers[1].name, "layer1.0.bn1");
	ck_assert(b->layers[1].mean[2] == 3.0);
	ingest_batch_free(b);
	free(body);
}
END_TEST

/*
 * tests/fixtures/safetensors/{valid,invalid}/<name>.safetensors, written
 * by an independent writer (make_fixtures.py there); the invalid ones
 * with <name>.expect as in invalid/.
 */
START_TEST(test_fixtures_safetensors)
{
	char dir[4096], path[4200];
	size_t failures = 0, total = 0;

	for (int valid = 0; valid < 2; valid++) {
		char **names;
		size_t n;

		snprintf(dir, sizeof(dir), "%s/safetensors/%s", fixtures_dir(),
			 valid ? "valid" : "invalid");
		names = list_files(dir, ".safetensors", &n);
		ck_assert_msg(n >= 2, "only %zu fixtures in %s", n, dir);
		for (size_t i = 0; i < n; i++) {
			struct ingest_batch *b = NULL;
			struct bn_error err;
			struct expect e = { 0 };
			char *body;
			size_t blen;
			int r;

			snprintf(path, sizeof(path), "%s/%s.safetensors", dir, names[i]);
			body = read_file(path, &blen);
			ck_assert_msg(body != NULL, "cannot read %s", path);
			if (!valid)
				read_expect(dir, names[i], &e);
			r = st_decode((const unsigned char *)body, blen, &limits, &b, &err);
			if (valid && r != 0) {
				fprintf(stderr, "safetensors/valid/%s: refused: %d %s '%s' (%s)\n",
					names[i], err.status, err.code, err.path, err.message);
				failures++;
			} else if (!valid) {
				failures += misjudged("safetensors/invalid", names[i], r,
						      r == 0 ? b : NULL, &err, &e);
			}
			if (r == 0)
				ingest_batch_free(b);
			free(body);
			total++;
		}
		free_names(names, n);
	}
	ck_assert_msg(failures == 0, "%zu of %zu safetensors fixtures misjudged", failures, total);
}
END_TEST

/* The valid safetensors fixtures carry the values of JSON ones. */
START_TEST(test_fixtures_safetensors_same_as_json)
{
	static const char *const names[] = { "mixed", "count_zero" };

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		struct ingest_batch *a, *b;
		char path[4200];
		size_t len;
		char *json, *st;

		snprintf(path, sizeof(path), "%s/valid/%s.json", fixtures_dir(), names[i]);
		json = read_file(path, &len);
		ck_assert_msg(json != NULL, "cannot read %s", path);
		a = decode_ok(json);
		snprintf(path, sizeof(path), "%s/safetensors/valid/%s.safetensors", fixtures_dir(),
			 names[i]);
		st = read_file(path, &len);
		ck_assert_msg(st != NULL, "cannot read %s", path);
		b = st_ok((const unsigned char *)st, len, &limits);
		/* each fixture has its own worker name, so copy the identity */
		memcpy(b->worker, a->worker, sizeof(b->worker));
		batch_assert_equal(a, b);
		ingest_batch_free(a);
		ingest_batch_free(b);
		free(json);
		free(st);
	}
}
END_TEST

/* ------------------------------------------------------------------ */

static Suite *suite(void)
{
	Suite *s = suite_create("ingest");
	TCase *tc;

	tc = tcase_create("names");
	tcase_add_test(tc, test_names);
	suite_add_tcase(s, tc);

	tc = tcase_create("base64");
	tcase_add_test(tc, test_base64_rfc4648);
	tcase_add_test(tc, test_base64_all_bytes);
	tcase_add_test(tc, test_base64_invalid);
	suite_add_tcase(s, tc);

	tc = tcase_create("hash");
	tcase_add_test(tc, test_hash_encodings);
	tcase_add_test(tc, test_hash_differs);
	tcase_add_test(tc, test_hash_structure);
	suite_add_tcase(s, tc);

	tc = tcase_create("fixtures");
	tcase_add_test(tc, test_fixtures_invalid);
	tcase_add_test(tc, test_fixtures_valid);
	tcase_add_test(tc, test_fixture_mixed_values);
	tcase_add_test(tc, test_fixtures_safetensors);
	tcase_add_test(tc, test_fixtures_safetensors_same_as_json);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(suite)
