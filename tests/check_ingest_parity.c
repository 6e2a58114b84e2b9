/*
 * Unit tests of ingest: the JSON form's fast scanner against its jansson path: fixtures, cases,
 * truncation, limits, random and mutated bodies, and that it does handle ordinary uploads.
 */
#include "ingest_testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check_main.h"

/* Every fixture (and the safetensors ones, as JSON bodies: garbage). */
START_TEST(test_fast_fixtures)
{
	static const char *const dirs[][2] = {
		{ "valid", ".json" },
		{ "invalid", ".json" },
		{ "safetensors/valid", ".safetensors" },
		{ "safetensors/invalid", ".safetensors" },
	};
	size_t count[3] = { 0, 0, 0 };

	for (size_t d = 0; d < sizeof(dirs) / sizeof(dirs[0]); d++) {
		char dir[4096], path[4200];
		char **names;
		size_t n;

		snprintf(dir, sizeof(dir), "%s/%s", fixtures_dir(), dirs[d][0]);
		names = list_files(dir, dirs[d][1], &n);
		for (size_t i = 0; i < n; i++) {
			enum fast_outcome o;
			size_t len;
			char *body;

			snprintf(path, sizeof(path), "%s/%s%s", dir, names[i], dirs[d][1]);
			body = read_file(path, &len);
			ck_assert_msg(body != NULL, "cannot read %s", path);
			o = same_both_ways(body, len, &limits);
			/* the fast path handles every valid fixture */
			if (d == 0)
				ck_assert_msg(o == FAST_OK, "fast path gave up on %s", path);
			count[o]++;
			free(body);
		}
		free_names(names, n);
	}
	/* both kinds of invalid fixture: left to jansson, and checked by the
	 * shared rules after the fast scan */
	ck_assert_uint_gt(count[FAST_GAVE_UP], 20);
	ck_assert_uint_gt(count[FAST_ERROR], 20);
}
END_TEST

/*
 * Bodies at the edges of what the fast path takes, each with what it
 * must do; the results must match the jansson path's in any case.
 */
static const struct fast_case {
	const char *body;
	enum fast_outcome o;
} fast_cases[] = {
#define L1 "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4]}}"
#define ID "\"worker\": \"w\", \"step\": 1, \"seq\": 0, "
	{ "{" ID L1 "}", FAST_OK },
	{ " \t\r\n{" ID L1 "} \t\r\n", FAST_OK },
	{ "{" L1 ", \"seq\": 0, \"step\": 1, \"var_kind\": \"biased\", \"domain\": \"d\", "
	  "\"worker\": \"w\"}",
	  FAST_OK },
	/* integers */
	{ "{\"worker\": \"w\", \"step\": 9223372036854775807, \"seq\": 0, " L1 "}", FAST_OK },
	{ "{\"worker\": \"w\", \"step\": 9223372036854775808, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\", \"step\": -9223372036854775808, \"seq\": 0, " L1 "}", FAST_ERROR },
	{ "{\"worker\": \"w\", \"step\": -9223372036854775809, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\", \"step\": 99999999999999999999999, \"seq\": 0, " L1 "}",
	  FAST_GAVE_UP },
	{ "{\"worker\": \"w\", \"step\": -0, \"seq\": -1, " L1 "}", FAST_ERROR },
	{ "{\"worker\": \"w\", \"step\": 1.0, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\", \"step\": 1e2, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\", \"step\": 01, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\", \"step\": \"1\", \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {\"a\": {\"count\": 2.5, "
	  "\"mean\": [1], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {\"a\": {\"count\": -1, "
	  "\"mean\": [1], \"var\": [1]}}}",
	  FAST_ERROR },
	{ "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {\"a\": {\"count\": "
	  "9007199254740993, \"mean\": [1], \"var\": [1]}}}",
	  FAST_ERROR },
	/* numbers in arrays */
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [-0, 0.0, -0.0, 1e5, 1.5E-3, 1E+2, "
	  "0e0, -0e-0, 10E-1], \"var\": [0, 0, 0, 0, 0, 0, 0, 0, 0]}}}",
	  FAST_OK },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1e-400, 4.9e-324, "
	  "2.2250738585072014e-308, 1.7976931348623157e308], \"var\": [1, 1, 1, 1]}}}",
	  FAST_OK },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [9007199254740993, "
	  "-9223372036854775808, 9223372036854775807], \"var\": [1, 1, 1]}}}",
	  FAST_OK },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": "
	  "[0.1000000000000000055511151231257827021181583404541015625], \"var\": [1]}}}",
	  FAST_OK },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": "
	  "[0.10000000000000000555111512312578270211815834045410156250000000000001], "
	  "\"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1e400], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [-1e400], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID
	  "\"layers\": {\"a\": {\"count\": 2, \"mean\": [9223372036854775808], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1], \"var\": [-1e-300]}}}",
	  FAST_ERROR },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [], \"var\": []}}}", FAST_ERROR },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1, 2], \"var\": [1]}}}",
	  FAST_ERROR },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [01], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1.], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [.5], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [+1], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1e], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1e+], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [-], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [NaN], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [-Infinity], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [0x10], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [true], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [null], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [[1]], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [\"1\"], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1,], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1 2], \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": 1, \"var\": [1]}}}", FAST_GAVE_UP },
	/* base64 */
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"b64\": \"AACAPw==\", \"dtype\": "
	  "\"f32\"}, \"var\": {\"dtype\": \"f64\", \"b64\": \"AAAAAAAA8D8=\"}}}}",
	  FAST_OK },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"dtype\": \"f16\", \"b64\": "
	  "\"AACAPw==\"}, \"var\": [1]}}}",
	  FAST_ERROR },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"dtype\": \"f32\", \"b64\": "
	  "\"AACAP\"}, \"var\": [1]}}}",
	  FAST_ERROR },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"dtype\": \"f64\", \"b64\": "
	  "\"AACAPw==\"}, \"var\": [1]}}}",
	  FAST_ERROR },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"dtype\": \"f32\", \"b64\": "
	  "\"AAC*Pw==\"}, \"var\": [1]}}}",
	  FAST_ERROR },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"dtype\": \"f32\", \"b64\": "
	  "\"AACAPw\\u003d=\"}, \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"dtype\": \"f32\", \"b64\": "
	  "\"AACA\\/w==\"}, \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID
	  "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"dtype\": \"f32\"}, \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"dtype\": \"f32\", \"b64\": "
	  "\"AACAPw==\", \"x\": 1}, \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"dtype\": \"f32\", \"b64\": "
	  "\"AACAPw==\", \"dtype\": \"f32\"}, \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {\"dtype\": 32, \"b64\": "
	  "\"AACAPw==\"}, \"var\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": {}, \"var\": [1]}}}", FAST_GAVE_UP },
	/* strings and names */
	{ "{\"worker\": \"a b\", \"step\": 1, \"seq\": 0, " L1 "}", FAST_ERROR },
	{ "{\"worker\": \"\", \"step\": 1, \"seq\": 0, " L1 "}", FAST_ERROR },
	{ "{\"worker\": \"w\\u0041\", \"step\": 1, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\\\"\", \"step\": 1, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\xc3\xa9\", \"step\": 1, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\x7f\", \"step\": 1, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\t\", \"step\": 1, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"domain\": \"*\", " L1 "}", FAST_ERROR },
	{ "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"var_kind\": \"Biased\", " L1 "}",
	  FAST_ERROR },
	{ "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"var_kind\": null, " L1 "}",
	  FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a/b\": {\"count\": 0}, \"\": {\"count\": 0}}}", FAST_ERROR },
	{ "{" ID "\"layers\": {\"a\\u002eb\": {\"count\": 0}}}", FAST_GAVE_UP },
	/* keys */
	{ "{" ID "\"step\": 1, " L1 "}", FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 0}, \"a\": {\"count\": 0}}}", FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 0, \"count\": 0}}}", FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1], \"var\": [1], \"mean\": [1]}}}",
	  FAST_GAVE_UP },
	{ "{" ID "\"extra\": 1, " L1 "}", FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 0, \"bias\": [1]}}}", FAST_GAVE_UP },
	{ "{\"step\": 1, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {\"mean\": [1], \"var\": [1]}}}", FAST_GAVE_UP },
	{ "{" ID "\"layers\": {}}", FAST_ERROR },
	{ "{" ID "\"layers\": []}", FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": []}}", FAST_GAVE_UP },
	{ "{" ID "\"layers\": {\"a\": {}}}", FAST_GAVE_UP },
	/* layer rules, checked after the scan */
	{ "{" ID "\"layers\": {\"a\": {\"count\": 1, \"mean\": [1], \"var\": [1]}}}", FAST_ERROR },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 0}}}", FAST_OK },
	{ "{" ID "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1]}}}", FAST_ERROR },
	{ "{" ID
	  "\"layers\": {\"a\": {\"count\": 2, \"mean\": [1], \"var\": [1], \"ema_mean\": [1]}}}",
	  FAST_ERROR },
	{ "{" ID "\"layers\": {\"z\": {\"count\": 2, \"mean\": [1], \"var\": [-1]}, \"b\": "
	  "{\"count\": 2, \"mean\": [1], \"var\": [-2]}}}",
	  FAST_ERROR },
	/* syntax */
	{ "", FAST_GAVE_UP },
	{ "{}", FAST_GAVE_UP },
	{ "[]", FAST_GAVE_UP },
	{ "\"x\"", FAST_GAVE_UP },
	{ "{" ID L1 "}x", FAST_GAVE_UP },
	{ "{" ID L1 "}{}", FAST_GAVE_UP },
	{ "{" ID L1, FAST_GAVE_UP },
	{ "{" ID L1 ",}", FAST_GAVE_UP },
	{ "{" ID L1 "]", FAST_GAVE_UP },
	{ "{\"worker\" \"w\", \"step\": 1, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{\"worker\": \"w\" \"step\": 1, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "{'worker': \"w\", \"step\": 1, \"seq\": 0, " L1 "}", FAST_GAVE_UP },
	{ "\xef\xbb\xbf{" ID L1 "}", FAST_GAVE_UP },
	{ "{" ID L1 "}\f", FAST_GAVE_UP },
	{ "{\v" ID L1 "}", FAST_GAVE_UP },
#undef ID
#undef L1
};

START_TEST(test_fast_cases)
{
	for (size_t i = 0; i < sizeof(fast_cases) / sizeof(fast_cases[0]); i++) {
		enum fast_outcome o = same_both_ways_str(fast_cases[i].body);

		ck_assert_msg(o == fast_cases[i].o, "case %zu: outcome %d, expected %d: %s", i, o,
			      fast_cases[i].o, fast_cases[i].body);
	}
}
END_TEST

/* A NUL byte, and bodies cut short anywhere (not NUL-terminated). */
START_TEST(test_fast_nul_and_truncation)
{
	static const char body[] = "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, "
				   "\"layers\": {\"a\": {\"count\": 2, \"mean\": "
				   "[1.5e3, -2], \"var\": {\"dtype\": \"f32\", "
				   "\"b64\": \"AACAPwAAAEA=\"}}}}";
	static const char nul[] = "{\"worker\": \"w\0\", \"step\": 1, \"seq\": 0, "
				  "\"layers\": {\"a\": {\"count\": 0}}}";
	size_t len = sizeof(body) - 1;

	ck_assert_int_eq(same_both_ways(nul, sizeof(nul) - 1, &limits), FAST_GAVE_UP);
	ck_assert_int_eq(same_both_ways(body, len, &limits), FAST_OK);
	for (size_t n = 0; n < len; n++)
		ck_assert_int_eq(same_both_ways(body, n, &limits), FAST_GAVE_UP);
}
END_TEST

/* The limits: past max_layers the fast path gives up, jansson reports. */
START_TEST(test_fast_limits)
{
	static const struct ingest_limits two = { 2, 3 };
	static const char *const three =
		"{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": "
		"{\"a\": {\"count\": 0}, \"b\": {\"count\": 0}, \"c\": {\"count\": 0}}}";
	static const char *const wide =
		"{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": "
		"{\"a\": {\"count\": 2, \"mean\": [1, 2, 3, 4], \"var\": [1, 2, 3, 4]}}}";

	ck_assert_int_eq(same_both_ways(three, strlen(three), &two), FAST_GAVE_UP);
	ck_assert_int_eq(same_both_ways(three, strlen(three), &limits), FAST_OK);
	ck_assert_int_eq(same_both_ways(wide, strlen(wide), &two), FAST_ERROR);
}
END_TEST

/* Random valid uploads: the fast path takes them all, with jansson's result. */
START_TEST(test_fast_random)
{
	struct gen g = { 0x2545f491u, { 0 }, -1, 0 };

	for (int it = 0; it < 3000; it++) {
		gen_body(&g, -1);
		ck_assert_msg(same_both_ways(g.s.s, g.s.len, &limits) == FAST_OK,
			      "not decoded by the fast path: %s", g.s.s);
	}
	sb_free(&g.s);
}
END_TEST

/* The same with one key of one object (any level) written twice. */
START_TEST(test_fast_duplicates)
{
	struct gen g = { 0x9e3779b9u, { 0 }, -1, 0 };

	for (int it = 0; it < 1500; it++) {
		uint32_t seed = g.x;
		int members;

		gen_body(&g, -1);
		members = g.members;
		g.x = seed;
		/* the body is the same up to the duplicate, then differs */
		gen_body(&g, (int)(seed % (uint32_t)members));
		ck_assert_int_gt(g.members, g.dup + 1);
		ck_assert_int_eq(same_both_ways(g.s.s, g.s.len, &limits), FAST_GAVE_UP);
	}
	sb_free(&g.s);
}
END_TEST

/*
 * Random valid uploads, mutated: bytes flipped, deleted or replaced,
 * snippets inserted anywhere or just inside a string, bodies cut short.
 * Whatever comes out, the paths agree; enough mutants reach each outcome
 * of the fast path for the comparison to mean something.
 */
START_TEST(test_fast_mutations)
{
	static const char *const snippets[] = {
		"\\",
		"\\/",
		"\\u0041",
		"\\n",
		"\"",
		",",
		"}",
		"]",
		"{",
		"[",
		" ",
		"\t",
		"\x01",
		"\xc3\xa9",
		"\xff",
		"1e400",
		"NaN",
		"-",
		"true",
		"null",
		"0",
		"00",
		".5",
		"e5",
		"\"step\":1,",
		"\"count\":1,",
		"\"x\":1,",
		"*",
		"-1",
		"=",
		"A",
		"1",
		"\"mean\":[1],",
		":",
	};
	static const char replace[] = "0123456789-+.eE\"*,";
	struct gen g = { 0x12345678u, { 0 }, -1, 0 };
	size_t count[3] = { 0, 0, 0 };
	char *m = NULL;

	for (int it = 0; it < 1500; it++) {
		gen_body(&g, -1);
		for (int k = 0; k < 8; k++) {
			size_t len = g.s.len, at = gen_next(&g) % len, n = len;
			const char *snip =
				snippets[gen_next(&g) % (sizeof(snippets) / sizeof(snippets[0]))];
			size_t slen = strlen(snip);
			char *q;

			free(m);
			m = malloc(len + slen + 1);
			ck_assert_ptr_nonnull(m);
			memcpy(m, g.s.s, len);
			switch (gen_next(&g) % 6) {
			case 0: /* flip a byte */
				m[at] = (char)(m[at] ^ (char)(1 + gen_next(&g) % 255));
				break;
			case 1: /* cut short */
				n = at;
				break;
			case 2: /* delete a byte */
				memmove(m + at, m + at + 1, len - at - 1);
				n = len - 1;
				break;
			case 3: /* replace a byte */
				m[at] = replace[gen_next(&g) % (sizeof(replace) - 1)];
				break;
			case 4: /* insert just inside a string, when there is one */
				q = memchr(m + at, '"', len - at);
				if (q != NULL)
					at = (size_t)(q - m) + 1;
				/* fall through */
			default: /* insert anywhere */
				memmove(m + at + slen, m + at, len - at);
				memcpy(m + at, snip, slen);
				n = len + slen;
				break;
			}
			count[same_both_ways(m, n, &limits)]++;
		}
	}
	free(m);
	sb_free(&g.s);
	ck_assert_uint_gt(count[FAST_GAVE_UP], 1000);
	ck_assert_uint_gt(count[FAST_OK], 1000);
	ck_assert_uint_gt(count[FAST_ERROR], 500);
}
END_TEST

/*
 * The optimisation must not die quietly: typical uploads, both forms at
 * the size of a ResNet-50 (53 layers), go through the fast path.
 */
START_TEST(test_fast_handles_typical)
{
	static const enum enc all[][6] = {
		{ NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS },
		{ F32, F32, F32, F32, F32, F32 },
		{ F64, NUMBERS, F32, F32, NUMBERS, F64 },
	};
	struct hbatch h;

	hbatch_init(&h);
	for (size_t e = 0; e < sizeof(all) / sizeof(all[0]); e++) {
		char *json = hbatch_json(&h, all[e], e == 2);

		ck_assert_int_eq(same_both_ways_str(json), FAST_OK);
		free(json);
	}
	for (int e = NUMBERS; e <= F64; e++) {
		struct sbuf s = { 0 };
		double x[256];

		sb_printf(&s, "{\"worker\": \"rank0\", \"step\": 1200, \"seq\": 0, "
			      "\"domain\": \"default\", \"var_kind\": \"unbiased\", "
			      "\"layers\": {");
		for (int l = 0; l < 53; l++) {
			for (int i = 0; i < 256; i++)
				x[i] = (float)(0.001 * (l * 256 + i) + 0.5);
			sb_printf(&s, "%s\n  \"layer%d.bn\": {\"count\": 200704, \"mean\": ",
				  l ? "," : "", l);
			sb_values(&s, x, 256, (enum enc)e);
			sb_printf(&s, ", \"var\": ");
			sb_values(&s, x, 256, (enum enc)e);
			sb_printf(&s, "}");
		}
		sb_printf(&s, "\n}}\n");
		ck_assert_int_eq(same_both_ways(s.s, s.len, &limits), FAST_OK);
		sb_free(&s);
	}
}
END_TEST

/* ------------------------------------------------------------------ */

static Suite *suite(void)
{
	Suite *s = suite_create("ingest_parity");
	TCase *tc;

	tc = tcase_create("fast_path");
	/* the fuzzing tests take seconds under valgrind */
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, test_fast_fixtures);
	tcase_add_test(tc, test_fast_cases);
	tcase_add_test(tc, test_fast_nul_and_truncation);
	tcase_add_test(tc, test_fast_limits);
	tcase_add_test(tc, test_fast_random);
	tcase_add_test(tc, test_fast_duplicates);
	tcase_add_test(tc, test_fast_mutations);
	tcase_add_test(tc, test_fast_handles_typical);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(suite)
