/*
 * Unit tests of ingest: the safetensors header's fast scanner against its jansson path: random,
 * duplicate-key and mutated headers, ordinary uploads, limits.
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
/* the fast safetensors header path against the jansson path */

/*
 * st_decode() compares the two on every safetensors body of the tests
 * (fixtures, hostile headers, fuzzing above). Here: random valid bodies,
 * the same with one key written twice, mutants, and typical bodies.
 */

/* Whitespace into out, mostly none. */
static void stg_ws(struct gen *g, struct sbuf *out)
{
	static const char ws[] = " \t\n\r";
	int n = gen_next(g) % 3 == 0 ? (int)(gen_next(g) % 4) : 0;

	while (n-- > 0)
		sb_printf(out, "%c", ws[gen_next(g) % 4]);
}

/* A member "key": val into out; written twice when it is g->dup. */
static void stg_member(struct gen *g, struct sbuf *out, bool *first, const char *key,
		       const char *val)
{
	int times = g->members++ == g->dup ? 2 : 1;

	while (times-- > 0) {
		if (!*first)
			sb_printf(out, ",");
		*first = false;
		stg_ws(g, out);
		sb_printf(out, "\"%s\"", key);
		stg_ws(g, out);
		sb_printf(out, ":");
		stg_ws(g, out);
		sb_printf(out, "%s", val);
		stg_ws(g, out);
	}
}

/* A random permutation of perm[0..n). */
static void stg_shuffle(struct gen *g, size_t *perm, size_t n)
{
	for (size_t i = 0; i < n; i++)
		perm[i] = i;
	for (size_t i = n; i > 1; i--) {
		size_t j = gen_next(g) % i, t = perm[i - 1];

		perm[i - 1] = perm[j];
		perm[j] = t;
	}
}

#define STG_MAX 40 /* tensors: 8 layers of at most 5 */

struct stg_tensor {
	char name[48];
	char shape[8];
	const char *dtype;
	unsigned char *raw;
	size_t size, begin;
};

/*
 * A random valid safetensors body into *len (the caller frees it): 1 to
 * 8 layers, F32 or F64 arrays of 1 to 6 channels, scalar or [1] counts,
 * with or without EMA; data in one random order, header entries in
 * another with __metadata__ anywhere among them, random key order and
 * whitespace everywhere, optional metadata in random order, padding.
 * With g->dup >= 0, that member (any level) is written twice.
 */
static unsigned char *stg_body(struct gen *g, size_t *len)
{
	static const char *const fields[4] = { "mean", "var", "ema_mean", "ema_var" };
	struct stg_tensor t[STG_MAX];
	size_t perm[STG_MAX], n = 0, at = 0, i, k, m;
	size_t layers = 1 + gen_next(g) % 8;
	struct sbuf h = { 0 }, v = { 0 };
	unsigned char *body, *data;
	bool first = true;
	char val[64];

	g->members = 0;
	for (size_t l = 0; l < layers; l++) {
		size_t c = 1 + gen_next(g) % 6;
		bool ema = gen_next(g) % 2;
		char layer[32];

		snprintf(layer, sizeof(layer), "%s%zu.bn%u", gen_next(g) % 2 ? "layer" : "blk_", l,
			 gen_next(g) % 4);
		/* count */
		snprintf(t[n].name, sizeof(t[n].name), "%s.count", layer);
		snprintf(t[n].shape, sizeof(t[n].shape), "%s", gen_next(g) % 2 ? "[]" : "[1]");
		t[n].dtype = "I64";
		t[n].size = 8;
		t[n].raw = malloc(8);
		ck_assert_ptr_nonnull(t[n].raw);
		put_le64(t[n].raw, 2 + gen_next(g) % 1000000);
		n++;
		for (k = 0; k < (ema ? 4u : 2u); k++) {
			enum enc e = gen_next(g) % 2 ? F32 : F64;
			double x[6];

			for (i = 0; i < c; i++)
				x[i] = gen_double(g, k % 2 == 1);
			snprintf(t[n].name, sizeof(t[n].name), "%s.%s", layer, fields[k]);
			snprintf(t[n].shape, sizeof(t[n].shape), "[%zu]", c);
			t[n].dtype = e == F32 ? "F32" : "F64";
			t[n].raw = pack_values(x, c, e, &t[n].size);
			n++;
		}
	}
	/* the data buffer's order */
	stg_shuffle(g, perm, n);
	for (i = 0; i < n; i++) {
		t[perm[i]].begin = at;
		at += t[perm[i]].size;
	}
	/* the header's order */
	stg_shuffle(g, perm, n);
	m = gen_next(g) % (n + 1);
	sb_printf(&h, "{");
	stg_ws(g, &h);
	for (i = 0; i <= n; i++) {
		if (i == m) {
			static const char *const keys[6] = { "worker", "step",	   "seq",
							     "domain", "var_kind", "format" };
			static const char *const vals[6] = { "\"rank0\"", "\"1200\"",	"\"0\"",
							     "\"dom.1\"", "\"biased\"", "\"pt\"" };
			size_t mp[6];
			bool mf = true;

			stg_shuffle(g, mp, 6);
			sb_printf(&v, "{");
			for (k = 0; k < 6; k++)
				if (mp[k] < 3 || gen_next(g) % 2)
					stg_member(g, &v, &mf, keys[mp[k]], vals[mp[k]]);
			sb_printf(&v, "}");
			stg_member(g, &h, &first, "__metadata__", v.s);
			sb_free(&v);
		}
		if (i < n) {
			const struct stg_tensor *x = &t[perm[i]];
			size_t kp[3];
			bool tf = true;

			stg_shuffle(g, kp, 3);
			sb_printf(&v, "{");
			for (k = 0; k < 3; k++) {
				if (kp[k] == 0) {
					snprintf(val, sizeof(val), "\"%s\"", x->dtype);
					stg_member(g, &v, &tf, "dtype", val);
				} else if (kp[k] == 1) {
					stg_member(g, &v, &tf, "shape", x->shape);
				} else {
					snprintf(val, sizeof(val), "[%s%zu%s,%s%zu%s]",
						 gen_next(g) % 4 ? "" : " ", x->begin,
						 gen_next(g) % 4 ? "" : "\n",
						 gen_next(g) % 2 ? "" : " ", x->begin + x->size,
						 gen_next(g) % 4 ? "" : "\t");
					stg_member(g, &v, &tf, "data_offsets", val);
				}
			}
			sb_printf(&v, "}");
			stg_member(g, &h, &first, x->name, v.s);
			sb_free(&v);
		}
	}
	sb_printf(&h, "}%*s", (int)(gen_next(g) % 8), "");
	data = malloc(at + 1);
	ck_assert_ptr_nonnull(data);
	for (i = 0; i < n; i++) {
		memcpy(data + t[i].begin, t[i].raw, t[i].size);
		free(t[i].raw);
	}
	body = st_body_n(h.s, h.len, data, at, len);
	free(data);
	sb_free(&h);
	return body;
}

/* Random valid bodies: the fast path takes them all, with jansson's result. */
START_TEST(test_st_fast_random)
{
	struct gen g = { 0x7f4a7c15u, { 0 }, -1, 0 };

	for (int it = 0; it < 3000; it++) {
		size_t len;
		unsigned char *body = stg_body(&g, &len);
		struct ingest_batch *b = NULL;
		struct bn_error err;

		ck_assert_int_eq(st_decode(body, len, &limits, &b, &err), 0);
		ck_assert_msg(st_last_outcome == FAST_OK, "not decoded by the fast path: %.*s",
			      (int)(len < 600 ? len : 600), body + 8);
		ingest_batch_free(b);
		free(body);
	}
}
END_TEST

/*
 * The same with one member of one object (the top level, __metadata__, a
 * tensor) written twice: jansson refuses it, the fast path gives up.
 */
START_TEST(test_st_fast_duplicates)
{
	struct gen g = { 0x3c6ef372u, { 0 }, -1, 0 };

	for (int it = 0; it < 1500; it++) {
		uint32_t seed = g.x;
		int members;
		size_t len;
		unsigned char *body;
		struct ingest_batch *b = NULL;
		struct bn_error err;

		g.dup = -1;
		body = stg_body(&g, &len);
		free(body);
		members = g.members;
		g.x = seed;
		g.dup = (int)(seed % (uint32_t)members);
		/* the body is the same up to the duplicate */
		body = stg_body(&g, &len);
		ck_assert_int_eq(st_decode(body, len, &limits, &b, &err), -EINVAL);
		ck_assert_int_eq(st_last_outcome, FAST_GAVE_UP);
		ck_assert_int_eq(err.status, 400);
		ck_assert_str_eq(err.code, BN_E_MALFORMED);
		free(body);
	}
}
END_TEST

/*
 * Random valid bodies, mutated: header bytes flipped, replaced, deleted
 * or snippets inserted (the length prefix kept right), bodies cut short,
 * data bytes flipped. Whatever comes out, the paths agree (st_decode());
 * enough mutants reach each outcome of the fast path for that to mean
 * something.
 */
START_TEST(test_st_fast_mutations)
{
	static const char *const snippets[] = {
		"\\",
		"\\u0041",
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
		"-",
		"-0",
		"0",
		"00",
		"1",
		"9",
		"99999999999999999999",
		"9223372036854775807",
		".5",
		"e5",
		"null",
		"true",
		"\"x\":1,",
		"\"format\":\"pt\",",
		"\"domain\":\"d\",",
		"\"step\":\"1\",",
		"\"dtype\":\"F32\",",
		"\"shape\":[1],",
		"\"shape\":[],",
		"\"__metadata__\":{},",
		":",
		"1,",
		",1",
		"\"F64\"",
		"\"I64\"",
		"\"F16\"",
		"[]",
		"[1]",
		"\"a.mean\":{},",
		"A",
		".",
	};
	static const char replace[] = "0123456789-+.eE\"*,[]{}: ";
	struct gen g = { 0x0badcafeu, { 0 }, -1, 0 };
	size_t before[3];
	unsigned char *m = NULL;

	memcpy(before, st_outcomes, sizeof(before));
	for (int it = 0; it < 1500; it++) {
		size_t len, hlen;
		unsigned char *body = stg_body(&g, &len);

		hlen = (size_t)body[0] | (size_t)body[1] << 8 | (size_t)body[2] << 16;
		for (int k = 0; k < 8; k++) {
			const char *snip =
				snippets[gen_next(&g) % (sizeof(snippets) / sizeof(snippets[0]))];
			size_t slen = strlen(snip), at = 8 + gen_next(&g) % hlen, n = len;
			struct ingest_batch *b = NULL;
			struct bn_error err;

			free(m);
			m = malloc(len + slen);
			ck_assert_ptr_nonnull(m);
			memcpy(m, body, len);
			switch (gen_next(&g) % 7) {
			case 0: /* flip a header byte */
				m[at] = (unsigned char)(m[at] ^ (1 + gen_next(&g) % 255));
				break;
			case 1: /* replace a header byte */
				m[at] = (unsigned char)
					replace[gen_next(&g) % (sizeof(replace) - 1)];
				break;
			case 2: /* delete a header byte */
				memmove(m + at, m + at + 1, len - at - 1);
				put_le64(m, hlen - 1);
				n = len - 1;
				break;
			case 3: /* cut short, anywhere */
				n = gen_next(&g) % len;
				break;
			case 4: /* flip a data byte, if any */
				if (len > 8 + hlen) {
					at = 8 + hlen + gen_next(&g) % (len - 8 - hlen);
					m[at] = (unsigned char)(m[at] ^ (1 + gen_next(&g) % 255));
				}
				break;
			default: /* insert a snippet into the header */
				memmove(m + at + slen, m + at, len - at);
				memcpy(m + at, snip, slen);
				put_le64(m, hlen + slen);
				n = len + slen;
				break;
			}
			if (st_decode(m, n, &limits, &b, &err) == 0)
				ingest_batch_free(b);
		}
		free(body);
	}
	free(m);
	ck_assert_uint_gt(st_outcomes[FAST_GAVE_UP] - before[FAST_GAVE_UP], 1000);
	ck_assert_uint_gt(st_outcomes[FAST_OK] - before[FAST_OK], 1000);
	ck_assert_uint_gt(st_outcomes[FAST_ERROR] - before[FAST_ERROR], 1000);
}
END_TEST

/*
 * The optimisation must not die quietly: typical bodies (a ResNet-50's
 * 53 layers as bnstat's clients write them, the hash tests' batch in
 * every encoding, the valid fixtures) go through the fast path.
 */
START_TEST(test_st_fast_typical)
{
	static const enum enc all[][6] = {
		{ F32, F32, F32, F32, F32, F32 },
		{ F64, F64, F64, F64, F64, F64 },
		{ F64, F32, F32, F64, F64, F32 },
	};
	static const char *const names[] = { "mixed", "count_zero" };
	struct hbatch h;
	struct ingest_batch *b;
	struct bn_error err;
	unsigned char *body;
	size_t len;

	hbatch_init(&h);
	for (size_t e = 0; e < sizeof(all) / sizeof(all[0]); e++)
		for (int rev = 0; rev < 2; rev++)
			for (int scalar = 0; scalar < 2; scalar++) {
				body = hbatch_st(&h, all[e], rev, scalar, &len);
				ck_assert_int_eq(st_decode(body, len, &limits, &b, &err), 0);
				ck_assert_int_eq(st_last_outcome, FAST_OK);
				ingest_batch_free(b);
				free(body);
			}
	for (int e = F32; e <= F64; e++) {
		struct stw w = { 0 };
		double x[256];
		char name[64];

		for (int l = 0; l < 53; l++) {
			for (int i = 0; i < 256; i++)
				x[i] = (float)(0.001 * (l * 256 + i) + 0.5);
			snprintf(name, sizeof(name), "layer%d.bn.count", l);
			stw_count(&w, name, 200704, true);
			snprintf(name, sizeof(name), "layer%d.bn.mean", l);
			stw_values(&w, name, x, 256, (enum enc)e);
			snprintf(name, sizeof(name), "layer%d.bn.var", l);
			stw_values(&w, name, x, 256, (enum enc)e);
		}
		body = stw_finish(&w,
				  "\"__metadata__\": {\"worker\": \"rank0\", "
				  "\"step\": \"0\", \"seq\": \"0\", \"domain\": "
				  "\"default\", \"var_kind\": \"unbiased\", "
				  "\"format\": \"pt\"}",
				  6, &len);
		ck_assert_int_eq(st_decode(body, len, &limits, &b, &err), 0);
		ck_assert_int_eq(st_last_outcome, FAST_OK);
		ck_assert_uint_eq(b->n_layers, 53);
		ingest_batch_free(b);
		free(body);
	}
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char path[4200], *st;

		snprintf(path, sizeof(path), "%s/safetensors/valid/%s.safetensors", fixtures_dir(),
			 names[i]);
		st = read_file(path, &len);
		ck_assert_msg(st != NULL, "cannot read %s", path);
		ck_assert_int_eq(st_decode((const unsigned char *)st, len, &limits, &b, &err), 0);
		ck_assert_int_eq(st_last_outcome, FAST_OK);
		ingest_batch_free(b);
		free(st);
	}
}
END_TEST

/*
 * The limit on tensors: past what max_layers allows the fast path gives
 * up and jansson reports it; at the limit, the fast path decodes.
 */
START_TEST(test_st_fast_limits)
{
	static const struct ingest_limits two = { 2, 16 }, zero = { 0, 16 };
	struct stw w = { 0 };
	struct ingest_batch *b = NULL;
	struct bn_error err;
	unsigned char *body;
	size_t len;
	char name[32];

	/* 10 tensors (2 layers of 5) are within {2, ...}, 11 are not */
	for (int l = 0; l < 2; l++) {
		static const double x[2] = { 1, 2 };

		snprintf(name, sizeof(name), "l%d.count", l);
		stw_count(&w, name, 5, true);
		snprintf(name, sizeof(name), "l%d.mean", l);
		stw_values(&w, name, x, 2, F32);
		snprintf(name, sizeof(name), "l%d.var", l);
		stw_values(&w, name, x, 2, F32);
		snprintf(name, sizeof(name), "l%d.ema_mean", l);
		stw_values(&w, name, x, 2, F64);
		snprintf(name, sizeof(name), "l%d.ema_var", l);
		stw_values(&w, name, x, 2, F64);
	}
	body = stw_finish(&w, ST_META, 0, &len);
	ck_assert_int_eq(st_decode(body, len, &two, &b, &err), 0);
	ck_assert_int_eq(st_last_outcome, FAST_OK);
	ingest_batch_free(b);
	ck_assert_int_eq(st_decode(body, len, &zero, &b, &err), -EINVAL);
	ck_assert_int_eq(st_last_outcome, FAST_GAVE_UP);
	free(body);
	{
		static const double x[2] = { 1, 2 };

		for (int l = 0; l < 3; l++) {
			snprintf(name, sizeof(name), "l%d.count", l);
			stw_count(&w, name, 5, true);
			snprintf(name, sizeof(name), "l%d.mean", l);
			stw_values(&w, name, x, 2, F32);
			snprintf(name, sizeof(name), "l%d.var", l);
			stw_values(&w, name, x, 2, F32);
			if (l < 2) {
				snprintf(name, sizeof(name), "l%d.ema_mean", l);
				stw_values(&w, name, x, 2, F64);
				snprintf(name, sizeof(name), "l%d.ema_var", l);
				stw_values(&w, name, x, 2, F64);
			}
		}
	}
	body = stw_finish(&w, ST_META, 0, &len);
	ck_assert_int_eq(st_decode(body, len, &two, &b, &err), -EINVAL);
	ck_assert_int_eq(st_last_outcome, FAST_GAVE_UP);
	ck_assert_str_eq(err.code, BN_E_LIMIT);
	free(body);
}
END_TEST

/* ------------------------------------------------------------------ */

static Suite *suite(void)
{
	Suite *s = suite_create("ingest_safetensors_parity");
	TCase *tc;

	tc = tcase_create("fast_path");
	/* the fuzzing tests take seconds under valgrind */
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, test_st_fast_random);
	tcase_add_test(tc, test_st_fast_duplicates);
	tcase_add_test(tc, test_st_fast_mutations);
	tcase_add_test(tc, test_st_fast_typical);
	tcase_add_test(tc, test_st_fast_limits);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(suite)
