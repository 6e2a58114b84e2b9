/*
 * check_ingest: unit tests of the ingest module (validation and decoding of
 * uploads, the content hash, base64).
 *
 * The bad-input cases live as data in tests/fixtures/invalid/<name>.json
 * (a request body) with <name>.expect ("<status> <code> <path>", path "-"
 * when empty); the bodies in tests/fixtures/valid/ must decode. The integration
 * tests POST the same files to the daemon. The fixtures directory comes from
 * $BNSTAT_FIXTURES, else "tests/fixtures" (relative to the source tree).
 */
#include "bnstat/ingest.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct ingest_limits limits = {INGEST_DEFAULT_MAX_LAYERS,
					    INGEST_DEFAULT_MAX_CHANNELS};

/* ------------------------------------------------------------------ */
/* helpers */

/* A growing string. */
struct sbuf {
	char *s;
	size_t len, cap;
};

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b,
							    const char *fmt,
							    ...)
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
	static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *p = data;
	size_t i;

	for (i = 0; i + 2 < len; i += 3) {
		unsigned long v = (unsigned long)p[i] << 16 | (unsigned long)p[i + 1] << 8 | p[i + 2];

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

/* Append the JSON for x[0..n) in encoding e. */
static void sb_values(struct sbuf *b, const double *x, size_t n, enum enc e)
{
	unsigned char *raw;
	size_t i;

	if (e == NUMBERS) {
		sb_printf(b, "[");
		for (i = 0; i < n; i++)
			sb_printf(b, "%s%.17g", i ? ", " : "", x[i]);
		sb_printf(b, "]");
		return;
	}
	raw = malloc(n * 8 + 1);
	ck_assert_ptr_nonnull(raw);
	for (i = 0; i < n; i++) {
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
	sb_printf(b, "{\"dtype\": \"%s\", \"b64\": \"", e == F32 ? "f32" : "f64");
	sb_base64(b, raw, n * (e == F32 ? 4 : 8));
	sb_printf(b, "\"}");
	free(raw);
}

static struct ingest_batch *decode_ok_lim(const char *body,
					  const struct ingest_limits *lim)
{
	struct ingest_batch *b = NULL;
	struct bn_error err;
	int r;

	bn_error_clear(&err);
	r = ingest_decode_json("r1", body, strlen(body), lim, &b, &err);
	ck_assert_msg(r == 0, "decode failed: %d %s %s (%s) for %s", err.status,
		      err.code, err.path, err.message, body);
	ck_assert_ptr_nonnull(b);
	return b;
}

static struct ingest_batch *decode_ok(const char *body)
{
	return decode_ok_lim(body, &limits);
}

static void expect_error_lim(const char *body, const struct ingest_limits *lim,
			     int status, const char *code, const char *path)
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
		      "expected %d %s '%s', got %d %s '%s' (%s)", status, code,
		      path, err.status, err.code, err.path, err.message);
	ck_assert_str_ne(err.message, "");
}

static void expect_error(const char *body, int status, const char *code,
			 const char *path)
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
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
	    fseek(f, 0, SEEK_SET) == 0) {
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

/* Sorted names of the *.json files in dir; *n their number. */
static char **list_json(const char *dir, size_t *n)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char **names = NULL;
	size_t cap = 0;

	*n = 0;
	ck_assert_msg(d != NULL, "cannot open %s (set BNSTAT_FIXTURES)", dir);
	while ((e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);

		if (len <= 5 || strcmp(e->d_name + len - 5, ".json") != 0)
			continue;
		if (*n == cap) {
			char **more;

			cap = cap ? cap * 2 : 64;
			more = realloc(names, cap * sizeof(*names));
			ck_assert_ptr_nonnull(more);
			names = more;
		}
		names[*n] = strndup(e->d_name, len - 5);
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
		{"", ""},         {"Zg==", "f"},         {"Zm8=", "fo"},
		{"Zm9v", "foo"},  {"Zm9vYg==", "foob"},  {"Zm9vYmE=", "fooba"},
		{"Zm9vYmFy", "foobar"},
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
	struct sbuf b = {0};
	long n;

	for (int i = 0; i < 256; i++)
		data[i] = (uint8_t)i;
	sb_base64(&b, data, sizeof(data));
	n = ingest_base64_decode(b.s, b.len, out);
	ck_assert_int_eq(n, 256);
	ck_assert_mem_eq(out, data, 256);
	/* every length 0..40 of pseudo-random bytes round-trips */
	for (size_t len = 0; len <= 40; len++) {
		uint8_t rnd[40] = {0}, dec[40];
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
		"Zg",        /* no padding */
		"Zg=",       /* length not a multiple of 4 */
		"Zm9vY",     /* length */
		"Z===",      /* too much padding */
		"====",      /* only padding */
		"=Zm9",      /* padding first */
		"Zm=v",      /* padding inside the last quantum */
		"Zg==Zm9v",  /* padding before the end */
		"Zh==",      /* non-zero unused bits (canonical is Zg==) */
		"Zm9=",      /* non-zero unused bits (canonical is Zm8=) */
		"Zm9v\n",    /* whitespace */
		"Zm9 vYmFy", /* whitespace */
		"Zm9-",      /* URL-safe alphabet */
		"Zm9_",      /* URL-safe alphabet */
		"Zm9*",      /* not base64 at all */
		"Zm9\xc3\xa9", /* non-ASCII */
	};
	uint8_t out[16];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(ingest_base64_decode(bad[i], strlen(bad[i]), out) ==
				      -EINVAL,
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
	struct ingest_batch *b = decode_ok(
		"{\"worker\": \"rank0\", \"step\": 1200, \"seq\": 3, \"layers\": {"
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
	struct ingest_batch *b = decode_ok(
		"{\"worker\": \"w\", \"step\": 0, \"seq\": 0, \"domain\": "
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
	static const float f[5] = {0.1f, -3.75f, 1e-30f, 65504.0f, 0.0f};
	double x[5];
	struct sbuf s = {0};
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
	static const double m[3] = {0.1, -2.5e300, 4.9e-324};
	static const double v[3] = {1.0 / 3, 0, 1e10};
	static const double em[3] = {0, 0.25, -0.5};
	static const double ev[3] = {1, 1, 0.5};
	struct sbuf s = {0};
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
	struct ingest_batch *b = decode_ok(
		"{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {"
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
	static const double z[2] = {-0.0, 1};
	struct sbuf s = {0};
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
	struct sbuf s = {0};
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

		ck_assert_int_eq(ingest_decode_json("r 1", ok, strlen(ok), &limits, &b, &err), -EINVAL);
		ck_assert_ptr_null(b);
		ck_assert_int_eq(err.status, 422);
		ck_assert_str_eq(err.path, "run");
		ck_assert_int_eq(ingest_decode_json("", ok, strlen(ok), &limits, &b, &err), -EINVAL);
		ck_assert_int_eq(ingest_decode_json(NULL, ok, strlen(ok), &limits, &b, &err), -EINVAL);
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
	ck_assert_int_eq(ingest_decode_json("r1", bin, sizeof(bin) - 1, &limits, &b, &err), -EINVAL);
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
	struct ingest_limits lim = {2, 3};
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

static char *hbatch_json(const struct hbatch *h, const enum enc enc[6],
			 bool reverse)
{
	struct sbuf s = {0};

	sb_printf(&s, "{\"worker\": \"w\", \"step\": 1, \"seq\": 0, "
		      "\"var_kind\": \"%s\", \"layers\": {", h->var_kind);
	for (int pass = 0; pass < 3; pass++) {
		int which = reverse ? 2 - pass : pass;

		if (pass)
			sb_printf(&s, ", ");
		if (which == 0) {
			sb_printf(&s, "\"bn.a\": {\"count\": %lld", (long long)h->count_a);
			static const char *const keys[4] = {"mean", "var", "ema_mean", "ema_var"};
			for (int k = 0; k < 4; k++) {
				sb_printf(&s, ", \"%s\": ", keys[k]);
				sb_values(&s, h->a[k], 5, enc[k]);
			}
			sb_printf(&s, "}");
		} else if (which == 1) {
			sb_printf(&s, "\"bn.b\": {\"count\": 0}");
		} else {
			sb_printf(&s, "\"bn.c\": {\"count\": %lld, \"mean\": ", (long long)h->count_c);
			sb_values(&s, h->c[0], 7, enc[4]);
			sb_printf(&s, ", \"var\": ");
			sb_values(&s, h->c[1], 7, enc[5]);
			sb_printf(&s, "}");
		}
	}
	sb_printf(&s, "}}");
	return s.s;
}

static void hbatch_hash(const struct hbatch *h, const enum enc enc[6],
			bool reverse, uint8_t out[INGEST_HASH_SIZE])
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
		{NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS},
		{F32, F32, F32, F32, F32, F32},
		{F64, F64, F64, F64, F64, F64},
		{NUMBERS, F32, F64, NUMBERS, F64, F32},
		{F64, NUMBERS, F32, F32, NUMBERS, F64},
	};
	struct hbatch h;
	uint8_t ref[INGEST_HASH_SIZE], got[INGEST_HASH_SIZE], zero[INGEST_HASH_SIZE] = {0};

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
	static const enum enc nums[6] = {NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS};
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
		"\"a\": {\"count\": 2, \"mean\": [1], \"var\": [3]}, \"b\": {\"count\": 2, \"mean\": [2], \"var\": [4]}",
		"\"b\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4]}",
		"\"ab\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4]}",
		"\"a\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4]}, \"z\": {\"count\": 0}",
		"\"a\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4], \"ema_mean\": [0, 0], \"ema_var\": [1, 1]}",
		"\"a\": {\"count\": 2, \"mean\": [1, 2], \"var\": [3, 4], \"ema_mean\": [0, 0], \"ema_var\": [1, 2]}",
		"\"a\": {\"count\": 2, \"mean\": [3, 4], \"var\": [1, 2]}",
		"\"a\": {\"count\": 0}",
		"\"a\": {\"count\": 0, \"mean\": [0], \"var\": [0]}",
		"\"a\": {\"count\": 2, \"mean\": [0], \"var\": [0]}",
		"\"a\": {\"count\": 2, \"mean\": [0, 0], \"var\": [0, 0]}",
	};
	enum { N = sizeof(bodies) / sizeof(bodies[0]) };
	uint8_t h[N][INGEST_HASH_SIZE];

	for (size_t i = 0; i < N; i++) {
		struct sbuf s = {0};
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
		struct ingest_batch *a = decode_ok(
			"{\"worker\": \"w\", \"step\": 1, \"seq\": 0, \"layers\": {\"a\": {\"count\": 0}}}");
		struct ingest_batch *b = decode_ok(
			"{\"worker\": \"x\", \"step\": 2, \"seq\": 5, \"domain\": \"d\", "
			"\"layers\": {\"a\": {\"count\": 0}}}");

		ck_assert_mem_eq(a->hash, b->hash, INGEST_HASH_SIZE);
		ingest_batch_free(a);
		ingest_batch_free(b);
	}
}
END_TEST

/* ------------------------------------------------------------------ */
/* fixtures */

START_TEST(test_fixtures_invalid)
{
	char dir[4096], path[4200];
	char **names;
	size_t n, failures = 0;

	snprintf(dir, sizeof(dir), "%s/invalid", fixtures_dir());
	names = list_json(dir, &n);
	ck_assert_msg(n >= 30, "only %zu fixtures in %s", n, dir);
	for (size_t i = 0; i < n; i++) {
		struct ingest_batch *b = (struct ingest_batch *)&b;
		struct bn_error err;
		char *body, *expect, code[64], epath[1024];
		size_t blen, elen;
		int status, r;

		snprintf(path, sizeof(path), "%s/%s.json", dir, names[i]);
		body = read_file(path, &blen);
		ck_assert_msg(body != NULL, "cannot read %s", path);
		snprintf(path, sizeof(path), "%s/%s.expect", dir, names[i]);
		expect = read_file(path, &elen);
		ck_assert_msg(expect != NULL, "cannot read %s", path);
		ck_assert_msg(sscanf(expect, "%d %63s %1023s", &status, code, epath) == 3,
			      "%s: want \"<status> <code> <path>\"", path);
		if (strcmp(epath, "-") == 0)
			epath[0] = '\0';

		bn_error_clear(&err);
		r = ingest_decode_json("r1", body, blen, &limits, &b, &err);
		if (r == 0 || b != NULL || err.status != status ||
		    strcmp(err.code, code) != 0 || strcmp(err.path, epath) != 0) {
			fprintf(stderr,
				"invalid/%s: expected %d %s '%s', got r=%d %d %s '%s' (%s)\n",
				names[i], status, code, epath, r, err.status,
				err.code, err.path, err.message);
			failures++;
		}
		if (r == 0)
			ingest_batch_free(b);
		free(body);
		free(expect);
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
	names = list_json(dir, &n);
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
			fprintf(stderr, "valid/%s: %d %s '%s' (%s)\n", names[i],
				err.status, err.code, err.path, err.message);
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

	tc = tcase_create("fixtures");
	tcase_add_test(tc, test_fixtures_invalid);
	tcase_add_test(tc, test_fixtures_valid);
	tcase_add_test(tc, test_fixture_mixed_values);
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
