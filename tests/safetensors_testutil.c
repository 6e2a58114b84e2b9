/*
 * The safetensors writer and decoder of the ingest tests; see
 * safetensors_testutil.h.
 */
#include "safetensors_testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void stw_tensor(struct stw *w, const char *name, const char *dtype, const char *shape,
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

void stw_values(struct stw *w, const char *name, const double *x, size_t n, enum enc e)
{
	char shape[32];
	size_t size;
	unsigned char *raw = pack_values(x, n, e, &size);

	snprintf(shape, sizeof(shape), "[%zu]", n);
	stw_tensor(w, name, e == F32 ? "F32" : "F64", shape, raw, size);
	free(raw);
}

void stw_count(struct stw *w, const char *name, int64_t count, bool scalar)
{
	unsigned char raw[8];

	put_le64(raw, (uint64_t)count);
	stw_tensor(w, name, "I64", scalar ? "[]" : "[1]", raw, 8);
}

unsigned char *stw_finish(struct stw *w, const char *meta, size_t pad, size_t *len)
{
	struct sbuf h = { 0 };
	unsigned char *body;

	sb_printf(&h, "{%s%s%s}%*s", meta ? meta : "", meta && w->hdr.len ? ", " : "",
		  w->hdr.s ? w->hdr.s : "", (int)pad, "");
	body = st_body_n(h.s, h.len, w->data, w->len, len);
	sb_free(&h);
	sb_free(&w->hdr);
	free(w->data);
	memset(w, 0, sizeof(*w));
	return body;
}

unsigned char *st_body_n(const char *header, size_t hlen, const void *data, size_t dlen,
			 size_t *len)
{
	unsigned char *body;

	*len = 8 + hlen + dlen;
	body = malloc(*len);
	ck_assert_ptr_nonnull(body);
	put_le64(body, hlen);
	memcpy(body + 8, header, hlen);
	if (dlen > 0)
		memcpy(body + 8 + hlen, data, dlen);
	return body;
}

unsigned char *st_body(const char *header, const void *data, size_t dlen, size_t *len)
{
	return st_body_n(header, strlen(header), data, dlen, len);
}

size_t st_outcomes[3];

enum fast_outcome st_last_outcome;

int st_decode(const unsigned char *body, size_t len, const struct ingest_limits *lim,
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

struct ingest_batch *st_ok(const unsigned char *body, size_t len, const struct ingest_limits *lim)
{
	struct ingest_batch *b = NULL;
	struct bn_error err;
	int r = st_decode(body, len, lim, &b, &err);

	ck_assert_msg(r == 0, "decode failed: %d %s '%s' (%s)", err.status, err.code, err.path,
		      err.message);
	ck_assert_ptr_nonnull(b);
	return b;
}

void st_expect(const unsigned char *body, size_t len, const struct ingest_limits *lim, int status,
	       const char *code, const char *path, const char *what)
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

unsigned char *hbatch_st(const struct hbatch *h, const enum enc enc[6], bool reverse, bool scalar,
			 size_t *len)
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
