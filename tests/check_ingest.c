/*
 * check_ingest: unit tests of the ingest module (validation and decoding of
 * uploads in both forms, JSON and safetensors, the content hash, base64).
 *
 * The bad-input cases live as data in tests/fixtures/invalid/<name>.json
 * (a request body) with <name>.expect ("<status> <code> <path>", path "-"
 * when empty); the bodies in tests/fixtures/valid/ must decode. The integration
 * tests POST the same files to the daemon. tests/fixtures/safetensors/ holds
 * binary bodies in the same layout; the safetensors tests also build their
 * bodies here, with a small writer (struct stw). The fixtures directory comes from
 * $BNSTAT_FIXTURES, else "tests/fixtures" (relative to the source tree).
 */
#include "bnstat/ingest.h"
#include "ingest_private.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct ingest_limits limits = { INGEST_DEFAULT_MAX_LAYERS,
					     INGEST_DEFAULT_MAX_CHANNELS };

/* ------------------------------------------------------------------ */
/* helpers */

/* A growing string. */
struct sbuf {
	char *s;
	size_t len, cap;
};

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	ck_assert_int_ge(n, 0);
	if (b->len + (size_t)n + 1 > b->cap) {
		char *s;

		b->cap = (b->len + (size_t)n + 1) * 2;
		s = realloc(b->s, b->cap);
		ck_assert_ptr_nonnull(s);
		b->s = s;
	}
	va_start(ap, fmt);
	vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

static void sb_free(struct sbuf *b)
{
	free(b->s);
	memset(b, 0, sizeof(*b));
}

/* Standard base64 of data[0..len) appended to b. */
static void sb_base64(struct sbuf *b, const void *data, size_t len)
{
	static const char alpha[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *p = data;
	size_t i;

	for (i = 0; i + 2 < len; i += 3) {
		unsigned long v =
			(unsigned long)p[i] << 16 | (unsigned long)p[i + 1] << 8 | p[i + 2];

		sb_printf(b, "%c%c%c%c", alpha[v >> 18], alpha[(v >> 12) & 63],
			  alpha[(v >> 6) & 63], alpha[v & 63]);
	}
	if (len - i == 1) {
		unsigned long v = (unsigned long)p[i] << 16;

		sb_printf(b, "%c%c==", alpha[v >> 18], alpha[(v >> 12) & 63]);
	} else if (len - i == 2) {
		unsigned long v = (unsigned long)p[i] << 16 | (unsigned long)p[i + 1] << 8;

		sb_printf(b, "%c%c%c=", alpha[v >> 18], alpha[(v >> 12) & 63],
			  alpha[(v >> 6) & 63]);
	}
}

static void put_le32(unsigned char *p, uint32_t u)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(u >> (8 * i));
}

static void put_le64(unsigned char *p, uint64_t u)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(u >> (8 * i));
}

/* Encodings of a value array in a test body. */
enum enc { NUMBERS, F32, F64 };

/*
 * x[0..n) as little-endian f32 (e == F32) or f64 (else) in a new buffer
 * (for the caller to free()) of *size bytes.
 */
static unsigned char *pack_values(const double *x, size_t n, enum enc e, size_t *size)
{
	unsigned char *raw = malloc(n * 8 + 1);

	ck_assert_ptr_nonnull(raw);
	for (size_t i = 0; i < n; i++) {
		if (e == F32) {
			float f = (float)x[i];
			uint32_t u;

			memcpy(&u, &f, 4);
			put_le32(raw + 4 * i, u);
		} else {
			uint64_t u;

			memcpy(&u, &x[i], 8);
			put_le64(raw + 8 * i, u);
		}
	}
	*size = n * (e == F32 ? 4 : 8);
	return raw;
}

/* Append the JSON for x[0..n) in encoding e. */
static void sb_values(struct sbuf *b, const double *x, size_t n, enum enc e)
{
	unsigned char *raw;
	size_t i, size;

	if (e == NUMBERS) {
		sb_printf(b, "[");
		for (i = 0; i < n; i++)
			sb_printf(b, "%s%.17g", i ? ", " : "", x[i]);
		sb_printf(b, "]");
		return;
	}
	raw = pack_values(x, n, e, &size);
	sb_printf(b, "{\"dtype\": \"%s\", \"b64\": \"", e == F32 ? "f32" : "f64");
	sb_base64(b, raw, size);
	sb_printf(b, "\"}");
	free(raw);
}

static struct ingest_batch *decode_ok_lim(const char *body, const struct ingest_limits *lim)
{
	struct ingest_batch *b = NULL;
	struct bn_error err;
	int r;

	bn_error_clear(&err);
	r = ingest_decode_json("r1", body, strlen(body), lim, &b, &err);
	ck_assert_msg(r == 0, "decode failed: %d %s %s (%s) for %s", err.status, err.code, err.path,
		      err.message, body);
	ck_assert_ptr_nonnull(b);
	return b;
}

static struct ingest_batch *decode_ok(const char *body)
{
	return decode_ok_lim(body, &limits);
}

static void expect_error_lim(const char *body, const struct ingest_limits *lim, int status,
			     const char *code, const char *path)
{
	struct ingest_batch *b = (struct ingest_batch *)&b; /* not NULL */
	struct bn_error err;
	int r;

	bn_error_clear(&err);
	r = ingest_decode_json("r1", body, strlen(body), lim, &b, &err);
	ck_assert_msg(r < 0, "decode should fail: %s", body);
	ck_assert_ptr_null(b);
	ck_assert_msg(err.status == status && strcmp(err.code, code) == 0 &&
			      strcmp(err.path, path) == 0,
		      "expected %d %s '%s', got %d %s '%s' (%s)", status, code, path, err.status,
		      err.code, err.path, err.message);
	ck_assert_str_ne(err.message, "");
}

static void expect_error(const char *body, int status, const char *code, const char *path)
{
	expect_error_lim(body, &limits, status, code, path);
}

static const char *fixtures_dir(void)
{
	const char *d = getenv("BNSTAT_FIXTURES");

	return d && *d ? d : "tests/fixtures";
}

/* Whole file into a NUL-terminated buffer; NULL when it cannot be read. */
static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;

	if (f == NULL)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
		buf = malloc((size_t)n + 1);
		if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
			buf[n] = '\0';
			*len = (size_t)n;
		} else {
			free(buf);
			buf = NULL;
		}
	}
	fclose(f);
	return buf;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names (without suffix) of the files *<suffix> in dir; *n their number. */
static char **list_files(const char *dir, const char *suffix, size_t *n)
{
	size_t slen = strlen(suffix);
	DIR *d = opendir(dir);
	struct dirent *e;
	char **names = NULL;
	size_t cap = 0;

	*n = 0;
	ck_assert_msg(d != NULL, "cannot open %s (set BNSTAT_FIXTURES)", dir);
	while ((e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);

		if (len <= slen || strcmp(e->d_name + len - slen, suffix) != 0)
			continue;
		if (*n == cap) {
			char **more;

			cap = cap ? cap * 2 : 64;
			more = realloc(names, cap * sizeof(*names));
			ck_assert_ptr_nonnull(more);
			names = more;
		}
		names[*n] = strndup(e->d_name, len - slen);
		ck_assert_ptr_nonnull(names[*n]);
		(*n)++;
	}
	closedir(d);
	if (*n > 0)
		qsort(names, *n, sizeof(*names), name_cmp);
	return names;
}

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/* ------------------------------------------------------------------ */
/* names */

START_TEST(test_names)
{
	char s[300];

	ck_assert(ingest_name_valid("r1"));
	ck_assert(ingest_name_valid("rank-0_a.B9"));
	ck_assert(ingest_name_valid("."));
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

	/* the example of the SPEC: element 17 of a base64 array */
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
/* hash */

/*
 * A batch of 3 layers: "bn.a" (5 channels, with ema), "bn.b" (count 0,
 * no arrays), "bn.c" (7 channels). Values are floats so that every
 * encoding carries them exactly. enc[k] picks the encoding of array k
 * (mean, var, ema_mean, ema_var of bn.a; mean, var of bn.c); `reverse`
 * writes the layers in reverse order. tweak() may change the values.
 */
struct hbatch {
	const char *var_kind;
	int64_t count_a, count_c;
	double a[4][5];
	double c[2][7];
};

static void hbatch_init(struct hbatch *h)
{
	uint32_t x = 12345;

	memset(h, 0, sizeof(*h));
	h->var_kind = "unbiased";
	h->count_a = 1000;
	h->count_c = 64;
	for (int k = 0; k < 4; k++)
		for (int i = 0; i < 5; i++) {
			x = x * 1664525u + 1013904223u;
			h->a[k][i] = (float)((double)(x >> 8) / (1 << 24) * (k % 2 ? 3 : -7));
			if (k % 2)
				h->a[k][i] = fabs(h->a[k][i]);
		}
	for (int k = 0; k < 2; k++)
		for (int i = 0; i < 7; i++) {
			x = x * 1664525u + 1013904223u;
			h->c[k][i] = (float)((double)(x >> 8) / (1 << 20));
		}
}

static char *hbatch_json(const struct hbatch *h, const enum enc enc[6], bool reverse)
{
	struct sbuf s = { 0 };

	sb_printf(&s,
		  "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, "
		  "\"var_kind\": \"%s\", \"layers\": {",
		  h->var_kind);
	for (int pass = 0; pass < 3; pass++) {
		int which = reverse ? 2 - pass : pass;

		if (pass)
			sb_printf(&s, ", ");
		if (which == 0) {
			sb_printf(&s, "\"bn.a\": {\"count\": %lld", (long long)h->count_a);
			static const char *const keys[4] = { "mean", "var", "ema_mean", "ema_var" };
			for (int k = 0; k < 4; k++) {
				sb_printf(&s, ", \"%s\": ", keys[k]);
				sb_values(&s, h->a[k], 5, enc[k]);
			}
			sb_printf(&s, "}");
		} else if (which == 1) {
			sb_printf(&s, "\"bn.b\": {\"count\": 0}");
		} else {
			sb_printf(&s,
				  "\"bn.c\": {\"count\": %lld, \"mean\": ", (long long)h->count_c);
			sb_values(&s, h->c[0], 7, enc[4]);
			sb_printf(&s, ", \"var\": ");
			sb_values(&s, h->c[1], 7, enc[5]);
			sb_printf(&s, "}");
		}
	}
	sb_printf(&s, "}}");
	return s.s;
}

static void hbatch_hash(const struct hbatch *h, const enum enc enc[6], bool reverse,
			uint8_t out[INGEST_HASH_SIZE])
{
	char *json = hbatch_json(h, enc, reverse);
	struct ingest_batch *b = decode_ok(json);

	memcpy(out, b->hash, INGEST_HASH_SIZE);
	ingest_batch_free(b);
	free(json);
}

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

/* ------------------------------------------------------------------ */
/* safetensors */

/*
 * A safetensors writer for the tests: tensors are appended back to back
 * to the data buffer, their entries to the header; stw_finish() puts the
 * file together. Enough for valid bodies; the hostile ones are written
 * as header text (st_body()).
 */
struct stw {
	struct sbuf hdr; /* the tensor entries, ", "-separated */
	unsigned char *data;
	size_t len, cap;
};

static void stw_tensor(struct stw *w, const char *name, const char *dtype, const char *shape,
		       const void *bytes, size_t n)
{
	if (w->len + n > w->cap) {
		unsigned char *d;

		w->cap = (w->len + n) * 2 + 64;
		d = realloc(w->data, w->cap);
		ck_assert_ptr_nonnull(d);
		w->data = d;
	}
	if (n > 0)
		memcpy(w->data + w->len, bytes, n);
	sb_printf(&w->hdr,
		  "%s\"%s\": {\"dtype\": \"%s\", \"shape\": %s, "
		  "\"data_offsets\": [%zu, %zu]}",
		  w->hdr.len ? ", " : "", name, dtype, shape, w->len, w->len + n);
	w->len += n;
}

/* x[0..n) as an F32 or F64 tensor of shape [n]. */
static void stw_values(struct stw *w, const char *name, const double *x, size_t n, enum enc e)
{
	char shape[32];
	size_t size;
	unsigned char *raw = pack_values(x, n, e, &size);

	snprintf(shape, sizeof(shape), "[%zu]", n);
	stw_tensor(w, name, e == F32 ? "F32" : "F64", shape, raw, size);
	free(raw);
}

/* An I64 count, of shape [] or [1]. */
static void stw_count(struct stw *w, const char *name, int64_t count, bool scalar)
{
	unsigned char raw[8];

	put_le64(raw, (uint64_t)count);
	stw_tensor(w, name, "I64", scalar ? "[]" : "[1]", raw, 8);
}

/*
 * The body: header length, "{<meta>, <entries>}" (meta NULL: none), pad
 * spaces after the JSON (as safetensors' own writer aligns the data),
 * data. Frees what w holds; the body is the caller's to free().
 */
static unsigned char *stw_finish(struct stw *w, const char *meta, size_t pad, size_t *len)
{
	struct sbuf h = { 0 };
	unsigned char *body;

	sb_printf(&h, "{%s%s%s}%*s", meta ? meta : "", meta && w->hdr.len ? ", " : "",
		  w->hdr.s ? w->hdr.s : "", (int)pad, "");
	*len = 8 + h.len + w->len;
	body = malloc(*len);
	ck_assert_ptr_nonnull(body);
	put_le64(body, h.len);
	memcpy(body + 8, h.s, h.len);
	if (w->len > 0)
		memcpy(body + 8 + h.len, w->data, w->len);
	sb_free(&h);
	sb_free(&w->hdr);
	free(w->data);
	memset(w, 0, sizeof(*w));
	return body;
}

/* A body of the given header text and dlen bytes of data. */
static unsigned char *st_body(const char *header, const void *data, size_t dlen, size_t *len)
{
	size_t hl = strlen(header);
	unsigned char *body;

	*len = 8 + hl + dlen;
	body = malloc(*len);
	ck_assert_ptr_nonnull(body);
	put_le64(body, hl);
	memcpy(body + 8, header, hl);
	if (dlen > 0)
		memcpy(body + 8 + hl, data, dlen);
	return body;
}

#define ST_WSS "\"worker\": \"w\", \"step\": \"1\", \"seq\": \"0\""
#define ST_META "\"__metadata__\": {" ST_WSS "}"

static void results_assert_equal(const char *what, const char *body, size_t len, int r1,
				 const struct ingest_batch *b1, const struct bn_error *e1, int r2,
				 const struct ingest_batch *b2, const struct bn_error *e2);

/* What the fast path did with a body (of either form). */
enum fast_outcome { FAST_GAVE_UP, FAST_OK, FAST_ERROR };

/* How often st_decode() saw each outcome of the safetensors fast path. */
static size_t st_outcomes[3];
static enum fast_outcome st_last_outcome;

/*
 * Decode a copy of body[0..len) that ends exactly where its allocation
 * ends and starts at an odd address: AddressSanitizer and valgrind see
 * any read past the end, and no value of the body is aligned.
 *
 * Every safetensors body of the tests goes through here, and so through
 * both header parsers alone (ingest_private.h) as well as through
 * ingest_decode_safetensors(): the fast path must give up, touching
 * nothing, or give exactly the jansson path's result (return value,
 * error status, code, path and message, or the batch byte for byte,
 * hash included), and ingest_decode_safetensors() always the jansson
 * path's. Its result is returned; the fast path's outcome is counted in
 * st_outcomes[] and left in st_last_outcome.
 */
static int st_decode(const unsigned char *body, size_t len, const struct ingest_limits *lim,
		     struct ingest_batch **b, struct bn_error *err)
{
	unsigned char *copy = malloc(len + 1);
	struct ingest_batch *bs = NULL, *bf = NULL;
	struct bn_error es, ef;
	int r, rs, rf;

	ck_assert_ptr_nonnull(copy);
	if (len > 0)
		memcpy(copy + 1, body, len);
	bn_error_clear(err);
	bn_error_clear(&es);
	bn_error_clear(&ef);
	rs = ingest_decode_safetensors_jansson("r1", copy + 1, len, lim, &bs, &es);
	rf = ingest_decode_safetensors_jscan("r1", copy + 1, len, lim, &bf, &ef);
	r = ingest_decode_safetensors("r1", copy + 1, len, lim, b, err);
	if (rf == INGEST_NOT_HANDLED) {
		ck_assert_ptr_null(bf);
		ck_assert_int_eq(ef.status, 0);
		ck_assert_str_eq(ef.message, "");
		st_last_outcome = FAST_GAVE_UP;
	} else {
		results_assert_equal("safetensors fast vs jansson", (const char *)copy + 1, len, rf,
				     bf, &ef, rs, bs, &es);
		st_last_outcome = rf == 0 ? FAST_OK : FAST_ERROR;
	}
	st_outcomes[st_last_outcome]++;
	results_assert_equal("ingest_decode_safetensors vs jansson", (const char *)copy + 1, len, r,
			     *b, err, rs, bs, &es);
	ingest_batch_free(bs);
	ingest_batch_free(bf);
	free(copy);
	return r;
}

static struct ingest_batch *st_ok(const unsigned char *body, size_t len,
				  const struct ingest_limits *lim)
{
	struct ingest_batch *b = NULL;
	struct bn_error err;
	int r = st_decode(body, len, lim, &b, &err);

	ck_assert_msg(r == 0, "decode failed: %d %s '%s' (%s)", err.status, err.code, err.path,
		      err.message);
	ck_assert_ptr_nonnull(b);
	return b;
}

/* Refused with status, code and path, and a printable message. */
static void st_expect(const unsigned char *body, size_t len, const struct ingest_limits *lim,
		      int status, const char *code, const char *path, const char *what)
{
	struct ingest_batch *b = (struct ingest_batch *)&b; /* not NULL */
	struct bn_error err;
	int r = st_decode(body, len, lim, &b, &err);

	ck_assert_msg(r == -EINVAL, "%s: decode should fail, got %d", what, r);
	ck_assert_ptr_null(b);
	ck_assert_msg(err.status == status && strcmp(err.code, code) == 0 &&
			      strcmp(err.path, path) == 0,
		      "%s: expected %d %s '%s', got %d %s '%s' (%s)", what, status, code, path,
		      err.status, err.code, err.path, err.message);
	ck_assert_str_ne(err.message, "");
	for (size_t i = 0; err.message[i]; i++)
		ck_assert(err.message[i] >= 0x20 && err.message[i] < 0x7f);
}

/* Two batches with the same identity, content and hash. */
static void batch_assert_equal(const struct ingest_batch *a, const struct ingest_batch *b)
{
	ck_assert_str_eq(a->run, b->run);
	ck_assert_str_eq(a->worker, b->worker);
	ck_assert_str_eq(a->domain, b->domain);
	ck_assert_int_eq(a->step, b->step);
	ck_assert_int_eq(a->seq, b->seq);
	ck_assert_int_eq(a->var_kind, b->var_kind);
	ck_assert_uint_eq(a->n_layers, b->n_layers);
	for (size_t i = 0; i < a->n_layers; i++) {
		const struct ingest_layer *x = &a->layers[i], *y = &b->layers[i];
		size_t n = x->channels * sizeof(double);

		ck_assert_str_eq(x->name, y->name);
		ck_assert_int_eq(x->count, y->count);
		ck_assert_uint_eq(x->channels, y->channels);
		ck_assert((x->mean == NULL) == (y->mean == NULL));
		ck_assert((x->ema_mean == NULL) == (y->ema_mean == NULL));
		ck_assert((x->ema_var == NULL) == (y->ema_var == NULL));
		if (x->channels == 0)
			continue;
		ck_assert_mem_eq(x->mean, y->mean, n);
		ck_assert_mem_eq(x->var, y->var, n);
		if (x->ema_mean != NULL) {
			ck_assert_mem_eq(x->ema_mean, y->ema_mean, n);
			ck_assert_mem_eq(x->ema_var, y->ema_var, n);
		}
	}
	ck_assert_mem_eq(a->hash, b->hash, INGEST_HASH_SIZE);
}

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

/* The hbatch of the hash tests as safetensors. */
static unsigned char *hbatch_st(const struct hbatch *h, const enum enc enc[6], bool reverse,
				bool scalar, size_t *len)
{
	static const char *const a_names[4] = { "bn.a.mean", "bn.a.var", "bn.a.ema_mean",
						"bn.a.ema_var" };
	struct stw w = { 0 };
	struct sbuf meta = { 0 };
	unsigned char *body;

	for (int pass = 0; pass < 3; pass++) {
		int which = reverse ? 2 - pass : pass;

		if (which == 0) {
			if (!reverse)
				stw_count(&w, "bn.a.count", h->count_a, scalar);
			for (int k = 0; k < 4; k++)
				stw_values(&w, a_names[reverse ? 3 - k : k],
					   h->a[reverse ? 3 - k : k], 5, enc[reverse ? 3 - k : k]);
			if (reverse)
				stw_count(&w, "bn.a.count", h->count_a, scalar);
		} else if (which == 1) {
			stw_count(&w, "bn.b.count", 0, !scalar);
		} else {
			stw_values(&w, "bn.c.mean", h->c[0], 7, enc[4]);
			stw_count(&w, "bn.c.count", h->count_c, scalar);
			stw_values(&w, "bn.c.var", h->c[1], 7, enc[5]);
		}
	}
	sb_printf(&meta, "\"__metadata__\": {" ST_WSS ", \"var_kind\": \"%s\"}", h->var_kind);
	body = stw_finish(&w, meta.s, reverse ? 5 : 0, len);
	sb_free(&meta);
	return body;
}

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
	{ "NaN, the example of the SPEC",
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
static uint32_t fuzz_next(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

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
/* the fast JSON path against the jansson path */

/*
 * ingest_decode_json() first tries a scanner specialised to the upload
 * and runs jansson when the scanner gives up (ingest_private.h exposes
 * each path alone). On every body, the fast path must either give up,
 * touching nothing, or give exactly the jansson path's result: the same
 * return value and error (status, code, path, message), or batches equal
 * byte for byte, hash included; and ingest_decode_json() must always give
 * the jansson path's result. Bodies are copied into buffers of exactly
 * their length, with no NUL after them, so that ASan and valgrind see any
 * read past the end.
 */

/* Two results of decoding one body: return value, batch, error. */
static void results_assert_equal(const char *what, const char *body, size_t len, int r1,
				 const struct ingest_batch *b1, const struct bn_error *e1, int r2,
				 const struct ingest_batch *b2, const struct bn_error *e2)
{
	ck_assert_msg(r1 == r2, "%s: r=%d (%d %s '%s': %s) vs r=%d (%d %s '%s': %s) for %.*s", what,
		      r1, e1->status, e1->code, e1->path, e1->message, r2, e2->status, e2->code,
		      e2->path, e2->message, (int)(len < 400 ? len : 400), body);
	if (r1 == 0) {
		ck_assert_ptr_nonnull(b1);
		ck_assert_ptr_nonnull(b2);
		batch_assert_equal(b1, b2);
		for (size_t i = 0; i < b1->n_layers; i++)
			ck_assert((b1->layers[i].var == NULL) == (b2->layers[i].var == NULL));
		return;
	}
	ck_assert_ptr_null(b1);
	ck_assert_ptr_null(b2);
	ck_assert_msg(e1->status == e2->status && strcmp(e1->code, e2->code) == 0 &&
			      strcmp(e1->path, e2->path) == 0 &&
			      strcmp(e1->message, e2->message) == 0,
		      "%s: %d %s '%s' (%s) vs %d %s '%s' (%s) for %.*s", what, e1->status, e1->code,
		      e1->path, e1->message, e2->status, e2->code, e2->path, e2->message,
		      (int)(len < 400 ? len : 400), body);
}

/*
 * Decode body[0..len) by the jansson path, the fast path and
 * ingest_decode_json(), check that they agree, and say what the fast
 * path did.
 */
static enum fast_outcome same_both_ways(const char *body, size_t len,
					const struct ingest_limits *lim)
{
	struct ingest_batch *bs = NULL, *bf = NULL, *bc = NULL;
	struct bn_error es, ef, ec;
	enum fast_outcome o;
	char *copy = malloc(len ? len : 1);
	int rs, rf, rc;

	ck_assert_ptr_nonnull(copy);
	memcpy(copy, body, len);
	bn_error_clear(&es);
	bn_error_clear(&ef);
	bn_error_clear(&ec);
	rs = ingest_decode_json_jansson("r1", copy, len, lim, &bs, &es);
	rf = ingest_decode_json_jscan("r1", copy, len, lim, &bf, &ef);
	rc = ingest_decode_json("r1", copy, len, lim, &bc, &ec);
	if (rs != 0)
		ck_assert_int_eq(rs, -EINVAL);

	if (rf == INGEST_NOT_HANDLED) {
		ck_assert_ptr_null(bf);
		ck_assert_int_eq(ef.status, 0);
		ck_assert_str_eq(ef.message, "");
		o = FAST_GAVE_UP;
	} else {
		results_assert_equal("fast vs jansson", copy, len, rf, bf, &ef, rs, bs, &es);
		o = rf == 0 ? FAST_OK : FAST_ERROR;
	}
	results_assert_equal("ingest_decode_json vs jansson", copy, len, rc, bc, &ec, rs, bs, &es);
	ingest_batch_free(bs);
	ingest_batch_free(bf);
	ingest_batch_free(bc);
	free(copy);
	return o;
}

static enum fast_outcome same_both_ways_str(const char *body)
{
	return same_both_ways(body, strlen(body), &limits);
}

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

/*
 * A generator of random valid uploads: random names, counts, key order,
 * whitespace, number spellings and encodings. With dup set, one key of
 * one object (any level) is written twice.
 */
struct gen {
	uint32_t x;
	struct sbuf s;
	int dup;     /* < 0: no duplicate; else the member to write twice */
	int members; /* members written so far */
};

static uint32_t gen_next(struct gen *g)
{
	return fuzz_next(&g->x);
}

/* Whitespace, mostly none. */
static void gen_ws(struct gen *g)
{
	static const char ws[] = " \t\n\r";
	int n = gen_next(g) % 3 == 0 ? (int)(gen_next(g) % 4) : 0;

	while (n-- > 0)
		sb_printf(&g->s, "%c", ws[gen_next(g) % 4]);
}

/* A random double of any magnitude from 1e-20 to 1e20. */
static double gen_double(struct gen *g, bool nonneg)
{
	double m = (double)gen_next(g) / 4294967296.0;
	double x = m * pow(10.0, (double)(gen_next(g) % 41) - 20.0);

	return nonneg || gen_next(g) % 2 ? x : -x;
}

/* One array element: a random value in a random spelling. */
static void gen_number(struct gen *g, bool nonneg)
{
	static const char *const special[] = {
		"0",
		"-0",
		"0.0",
		"-0.0",
		"1e5",
		"1.5E-3",
		"1E+2",
		"0e0",
		"-0e-0",
		"10E-1",
		"2e-308",
		"4.9e-324",
		"1e-400",
		"1.7976931348623157e308",
		"123456789012345678",
		"9007199254740993",
		"9223372036854775807",
		"0.1000000000000000055511151231257827021181583404541015625",
		"-9223372036854775808",
		"-1.5e300",
		"-7",
		"-2.5E-310",
	};
	const size_t n_special = sizeof(special) / sizeof(special[0]);
	double x = gen_double(g, nonneg);

	switch (gen_next(g) % 8) {
	case 0:
		sb_printf(&g->s, "%.9g", x);
		break;
	case 1:
		sb_printf(&g->s, "%.3e", x);
		break;
	case 2:
		sb_printf(&g->s, "%.6E", x);
		break;
	case 3:
		sb_printf(&g->s, "%lld", (long long)(gen_next(g) % 2000) - (nonneg ? 0 : 1000));
		break;
	case 4: {
		/* 3 of the specials at the end are negative */
		size_t k = gen_next(g) % (nonneg ? n_special - 3 : n_special);

		if (nonneg && special[k][0] == '-' && special[k][1] != '0')
			k = 0;
		sb_printf(&g->s, "%s", special[k]);
		break;
	}
	default:
		sb_printf(&g->s, "%.17g", x);
	}
}

/* "key": with whitespace around, counting members for g->dup. */
static bool gen_key(struct gen *g, const char *key)
{
	gen_ws(g);
	sb_printf(&g->s, "\"%s\"", key);
	gen_ws(g);
	sb_printf(&g->s, ":");
	gen_ws(g);
	return g->members++ == g->dup;
}

/* An order of n things, in o. */
static void gen_shuffle(struct gen *g, int *o, int n)
{
	for (int i = 0; i < n; i++)
		o[i] = i;
	for (int i = n - 1; i > 0; i--) {
		int j = (int)(gen_next(g) % (uint32_t)(i + 1)), t = o[i];

		o[i] = o[j];
		o[j] = t;
	}
}

/* One value array of n channels, as numbers or f32/f64 base64. */
static void gen_array(struct gen *g, size_t n, bool nonneg)
{
	uint32_t e = gen_next(g) % 3;

	if (e == 0) {
		sb_printf(&g->s, "[");
		for (size_t i = 0; i < n; i++) {
			if (i)
				sb_printf(&g->s, ",");
			gen_ws(g);
			gen_number(g, nonneg);
			gen_ws(g);
		}
		sb_printf(&g->s, "]");
		return;
	}
	double x[8];
	unsigned char *raw;
	size_t size;
	int o[2];

	for (size_t i = 0; i < n; i++)
		x[i] = gen_double(g, nonneg);
	raw = pack_values(x, n, e == 1 ? F32 : F64, &size);
	sb_printf(&g->s, "{");
	gen_shuffle(g, o, 2);
	for (int k = 0; k < 2; k++) {
		for (int rep = 0; rep < 2; rep++) {
			bool again = gen_key(g, o[k] ? "b64" : "dtype");

			if (o[k]) {
				sb_printf(&g->s, "\"");
				sb_base64(&g->s, raw, size);
				sb_printf(&g->s, "\"");
			} else {
				sb_printf(&g->s, "\"%s\"", e == 1 ? "f32" : "f64");
			}
			gen_ws(g);
			if (k < 1 || again)
				sb_printf(&g->s, ",");
			if (!again)
				break;
		}
	}
	sb_printf(&g->s, "}");
	free(raw);
}

/* A random name [A-Za-z0-9._-]{1,len} + suffix. */
static void gen_name(struct gen *g, size_t len, const char *suffix)
{
	static const char alpha[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
	size_t n = 1 + gen_next(g) % len;

	sb_printf(&g->s, "\"");
	for (size_t i = 0; i < n; i++)
		sb_printf(&g->s, "%c", alpha[gen_next(g) % (sizeof(alpha) - 1)]);
	sb_printf(&g->s, "%s\"", suffix);
}

/* One layer's object. */
static void gen_layer(struct gen *g, bool biased)
{
	static const char *const keys[5] = { "count", "mean", "var", "ema_mean", "ema_var" };
	uint32_t kind = gen_next(g) % 8;
	bool arrays = kind != 0, ema = gen_next(g) % 3 == 0;
	int64_t count = kind <= 1	      ? 0
			: biased && kind == 2 ? 1
					      : 2 + (int64_t)(gen_next(g) % 1000000);
	size_t channels = 1 + gen_next(g) % 8, n = !arrays ? 1 : ema ? 5 : 3;
	int o[5];

	if (arrays && gen_next(g) % 50 == 0)
		count = (int64_t)1 << 53;
	gen_shuffle(g, o, (int)n);
	sb_printf(&g->s, "{");
	for (size_t k = 0; k < n; k++) {
		for (int rep = 0; rep < 2; rep++) {
			bool again = gen_key(g, keys[o[k]]);

			if (o[k] == 0)
				sb_printf(&g->s, "%lld", (long long)count);
			else
				gen_array(g, channels, o[k] == 2 || o[k] == 4);
			gen_ws(g);
			if (k + 1 < n || again)
				sb_printf(&g->s, ",");
			if (!again)
				break;
		}
	}
	sb_printf(&g->s, "}");
}

/*
 * Member l of "layers": a name (with the suffix .l, so names are unique)
 * and a layer; the same name twice when it is the duplicated member.
 */
static void gen_layer_member(struct gen *g, size_t l, bool biased, bool comma)
{
	char suffix[24], *name;
	size_t at;

	snprintf(suffix, sizeof(suffix), ".%zu", l);
	gen_ws(g);
	at = g->s.len;
	gen_name(g, 12, suffix);
	name = strndup(g->s.s + at, g->s.len - at);
	ck_assert_ptr_nonnull(name);
	for (int rep = 0; rep < 2; rep++) {
		bool again = g->members++ == g->dup;

		if (rep)
			sb_printf(&g->s, "%s", name);
		gen_ws(g);
		sb_printf(&g->s, ":");
		gen_ws(g);
		gen_layer(g, biased);
		gen_ws(g);
		if (comma || again)
			sb_printf(&g->s, ",");
		if (!again)
			break;
		gen_ws(g);
	}
	free(name);
}

/* A whole body into g->s (reset first). */
static void gen_body(struct gen *g, int dup)
{
	static const char *const keys[6] = {
		"worker", "step", "seq", "domain", "var_kind", "layers"
	};
	bool biased = gen_next(g) % 2 == 0, has_kind = biased || gen_next(g) % 2;
	int o[6], n = 0, present[6];

	g->s.len = 0;
	g->dup = dup;
	g->members = 0;
	gen_ws(g);
	for (int k = 0; k < 6; k++)
		if ((k != 3 || gen_next(g) % 2) && (k != 4 || has_kind))
			present[n++] = k;
	gen_shuffle(g, o, n);
	sb_printf(&g->s, "{");
	for (int i = 0; i < n; i++) {
		int k = present[o[i]];

		for (int rep = 0; rep < 2; rep++) {
			bool again = gen_key(g, keys[k]);

			if (k == 0 || k == 3)
				gen_name(g, 20, "");
			else if (k == 1 || k == 2)
				sb_printf(&g->s, "%lld",
					  gen_next(g) % 10 == 0 ? (long long)INT64_MAX
								: (long long)gen_next(g));
			else if (k == 4)
				sb_printf(&g->s, "\"%s\"", biased ? "biased" : "unbiased");
			else {
				size_t layers = 1 + gen_next(g) % 6;

				sb_printf(&g->s, "{");
				for (size_t l = 0; l < layers; l++)
					gen_layer_member(g, l, biased, l + 1 < layers);
				sb_printf(&g->s, "}");
			}
			gen_ws(g);
			if (i + 1 < n || again)
				sb_printf(&g->s, ",");
			if (!again)
				break;
		}
	}
	sb_printf(&g->s, "}");
	gen_ws(g);
}

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
	unsigned char *body;
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
	*len = 8 + h.len + at;
	body = malloc(*len);
	ck_assert_ptr_nonnull(body);
	put_le64(body, h.len);
	memcpy(body + 8, h.s, h.len);
	for (i = 0; i < n; i++) {
		memcpy(body + 8 + h.len + t[i].begin, t[i].raw, t[i].size);
		free(t[i].raw);
	}
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
/* fixtures */

/* What a refused fixture must give: <name>.expect, "<status> <code> <path>". */
struct expect {
	int status;
	char code[64];
	char path[1024]; /* "" for "-" */
};

static void read_expect(const char *dir, const char *name, struct expect *e)
{
	char path[4200], *text;
	size_t len;

	snprintf(path, sizeof(path), "%s/%s.expect", dir, name);
	text = read_file(path, &len);
	ck_assert_msg(text != NULL, "cannot read %s", path);
	ck_assert_msg(sscanf(text, "%d %63s %1023s", &e->status, e->code, e->path) == 3,
		      "%s: want \"<status> <code> <path>\"", path);
	if (strcmp(e->path, "-") == 0)
		e->path[0] = '\0';
	free(text);
}

/* 1 (and a line on stderr) when a decode of a refused fixture went otherwise. */
static int misjudged(const char *where, const char *name, int r, const struct ingest_batch *b,
		     const struct bn_error *err, const struct expect *e)
{
	if (r != 0 && b == NULL && err->status == e->status && strcmp(err->code, e->code) == 0 &&
	    strcmp(err->path, e->path) == 0)
		return 0;
	fprintf(stderr, "%s/%s: expected %d %s '%s', got r=%d %d %s '%s' (%s)\n", where, name,
		e->status, e->code, e->path, r, err->status, err->code, err->path, err->message);
	return 1;
}

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

static Suite *ingest_suite(void)
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

	tc = tcase_create("decode");
	tcase_add_test(tc, test_decode_numbers);
	tcase_add_test(tc, test_decode_options);
	tcase_add_test(tc, test_decode_f32);
	tcase_add_test(tc, test_decode_f64_ema);
	tcase_add_test(tc, test_decode_count_zero);
	tcase_add_test(tc, test_negative_zero);
	tcase_add_test(tc, test_error_paths);
	tcase_add_test(tc, test_malformed_messages);
	tcase_add_test(tc, test_limits);
	suite_add_tcase(s, tc);

	tc = tcase_create("hash");
	tcase_add_test(tc, test_hash_encodings);
	tcase_add_test(tc, test_hash_differs);
	tcase_add_test(tc, test_hash_structure);
	suite_add_tcase(s, tc);

	tc = tcase_create("safetensors");
	tcase_add_test(tc, test_st_decode);
	tcase_add_test(tc, test_st_options);
	tcase_add_test(tc, test_st_unaligned);
	tcase_add_test(tc, test_st_count_zero_ema);
	tcase_add_test(tc, test_st_same_as_json);
	tcase_add_test(tc, test_st_negative_zero);
	tcase_add_test(tc, test_st_layer_rules);
	tcase_add_test(tc, test_st_hostile);
	tcase_add_test(tc, test_st_header_bytes);
	tcase_add_test(tc, test_st_arguments);
	tcase_add_test(tc, test_st_fuzz);
	suite_add_tcase(s, tc);

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
	tcase_add_test(tc, test_st_fast_random);
	tcase_add_test(tc, test_st_fast_duplicates);
	tcase_add_test(tc, test_st_fast_mutations);
	tcase_add_test(tc, test_st_fast_typical);
	tcase_add_test(tc, test_st_fast_limits);
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

int main(void)
{
	SRunner *sr = srunner_create(ingest_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
