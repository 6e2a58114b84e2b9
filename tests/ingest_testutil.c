/*
 * The ingest test programs' shared helpers; see ingest_testutil.h.
 */
#include "ingest_testutil.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct ingest_limits limits = { INGEST_DEFAULT_MAX_LAYERS, INGEST_DEFAULT_MAX_CHANNELS };

__attribute__((format(printf, 2, 3))) void sb_printf(struct sbuf *b, const char *fmt, ...)
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

void sb_free(struct sbuf *b)
{
	free(b->s);
	memset(b, 0, sizeof(*b));
}

void sb_base64(struct sbuf *b, const void *data, size_t len)
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

void put_le32(unsigned char *p, uint32_t u)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(u >> (8 * i));
}

void put_le64(unsigned char *p, uint64_t u)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(u >> (8 * i));
}

unsigned char *pack_values(const double *x, size_t n, enum enc e, size_t *size)
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

void sb_values(struct sbuf *b, const double *x, size_t n, enum enc e)
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

struct ingest_batch *decode_ok_lim(const char *body, const struct ingest_limits *lim)
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

struct ingest_batch *decode_ok(const char *body)
{
	return decode_ok_lim(body, &limits);
}

void expect_error_lim(const char *body, const struct ingest_limits *lim, int status,
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

void expect_error(const char *body, int status, const char *code, const char *path)
{
	expect_error_lim(body, &limits, status, code, path);
}

const char *fixtures_dir(void)
{
	const char *d = getenv("BNSTAT_FIXTURES");

	return d && *d ? d : "tests/fixtures";
}

char *read_file(const char *path, size_t *len)
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

int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

char **list_files(const char *dir, const char *suffix, size_t *n)
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

void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

void hbatch_init(struct hbatch *h)
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

char *hbatch_json(const struct hbatch *h, const enum enc enc[6], bool reverse)
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

void hbatch_hash(const struct hbatch *h, const enum enc enc[6], bool reverse,
		 uint8_t out[INGEST_HASH_SIZE])
{
	char *json = hbatch_json(h, enc, reverse);
	struct ingest_batch *b = decode_ok(json);

	memcpy(out, b->hash, INGEST_HASH_SIZE);
	ingest_batch_free(b);
	free(json);
}

void batch_assert_equal(const struct ingest_batch *a, const struct ingest_batch *b)
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

uint32_t fuzz_next(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

void results_assert_equal(const char *what, const char *body, size_t len, int r1,
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
	/* a non-finite value is described alike too */
	ck_assert_msg(e1->nonfinite.set == e2->nonfinite.set, "%s: nonfinite %d vs %d", what,
		      e1->nonfinite.set, e2->nonfinite.set);
	if (e1->nonfinite.set)
		ck_assert_msg(e1->nonfinite.step == e2->nonfinite.step &&
				      e1->nonfinite.channel == e2->nonfinite.channel &&
				      strcmp(e1->nonfinite.worker, e2->nonfinite.worker) == 0 &&
				      strcmp(e1->nonfinite.layer, e2->nonfinite.layer) == 0 &&
				      strcmp(e1->nonfinite.field, e2->nonfinite.field) == 0,
			      "%s: the nonfinite details differ", what);
}

enum fast_outcome same_both_ways(const char *body, size_t len, const struct ingest_limits *lim)
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

enum fast_outcome same_both_ways_str(const char *body)
{
	return same_both_ways(body, strlen(body), &limits);
}

uint32_t gen_next(struct gen *g)
{
	return fuzz_next(&g->x);
}

void gen_ws(struct gen *g)
{
	static const char ws[] = " \t\n\r";
	int n = gen_next(g) % 3 == 0 ? (int)(gen_next(g) % 4) : 0;

	while (n-- > 0)
		sb_printf(&g->s, "%c", ws[gen_next(g) % 4]);
}

double gen_double(struct gen *g, bool nonneg)
{
	double m = (double)gen_next(g) / 4294967296.0;
	double x = m * pow(10.0, (double)(gen_next(g) % 41) - 20.0);

	return nonneg || gen_next(g) % 2 ? x : -x;
}

void gen_number(struct gen *g, bool nonneg)
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

bool gen_key(struct gen *g, const char *key)
{
	gen_ws(g);
	sb_printf(&g->s, "\"%s\"", key);
	gen_ws(g);
	sb_printf(&g->s, ":");
	gen_ws(g);
	return g->members++ == g->dup;
}

void gen_shuffle(struct gen *g, int *o, int n)
{
	for (int i = 0; i < n; i++)
		o[i] = i;
	for (int i = n - 1; i > 0; i--) {
		int j = (int)(gen_next(g) % (uint32_t)(i + 1)), t = o[i];

		o[i] = o[j];
		o[j] = t;
	}
}

void gen_array(struct gen *g, size_t n, bool nonneg)
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

void gen_name(struct gen *g, size_t len, const char *suffix)
{
	static const char alpha[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
	size_t n = 1 + gen_next(g) % len;
	bool all_dots = true;

	sb_printf(&g->s, "\"");
	for (size_t i = 0; i < n; i++) {
		char c = alpha[gen_next(g) % (sizeof(alpha) - 1)];

		if (i == n - 1 && all_dots && c == '.')
			c = '_'; /* a name made only of dots is not a valid name */
		all_dots = all_dots && c == '.';
		sb_printf(&g->s, "%c", c);
	}
	sb_printf(&g->s, "%s\"", suffix);
}

void gen_layer(struct gen *g, bool biased)
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

void gen_layer_member(struct gen *g, size_t l, bool biased, bool comma)
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

void gen_body(struct gen *g, int dup)
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

void read_expect(const char *dir, const char *name, struct expect *e)
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

int misjudged(const char *where, const char *name, int r, const struct ingest_batch *b,
	      const struct bn_error *err, const struct expect *e)
{
	if (r != 0 && b == NULL && err->status == e->status && strcmp(err->code, e->code) == 0 &&
	    strcmp(err->path, e->path) == 0)
		return 0;
	fprintf(stderr, "%s/%s: expected %d %s '%s', got r=%d %d %s '%s' (%s)\n", where, name,
		e->status, e->code, e->path, r, err->status, err->code, err->path, err->message);
	return 1;
}
