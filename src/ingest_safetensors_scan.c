/*
 * ingest: the fast path of the safetensors form, for its header.
 *
 * As for the JSON form, jansson is most of the cost of a safetensors
 * upload: its header is a few hundred small objects. The fast path scans
 * a copy of the header with the scanner primitives the JSON form uses
 * too (jscan.h: jscan_ws(), jscan_string(), jscan_int(), ...), for
 * exactly the usual shape:
 *
 *   {"__metadata__": {"worker": "...", "step": "...", ...},
 *    "<tensor>": {"dtype": "...", "shape": [], "data_offsets": [b, e]},
 *    ...}
 *
 * in any order of keys, with metadata keys among ingest_ident_meta.keys
 * and all string-valued, worker, step and seq present, and per tensor exactly
 * dtype (a string), shape (0 or 1 integers >= 0) and data_offsets (2
 * integers >= 0). It gives up (INGEST_NOT_HANDLED) on anything else:
 * syntax errors, escapes, control or non-ASCII bytes in strings, a
 * duplicate key or tensor name, unknown keys, other types, other ranks,
 * negative numbers or numbers outside int64, no __metadata__ or no
 * tensors, more tensors than the limit allows, trailing bytes. Then
 * ingest_decode_safetensors() runs the jansson path from scratch.
 *
 * What it builds is what the jansson path builds: the identity through
 * the same ingest_ident_name(), ingest_ident_decimal() and
 * ingest_ident_var_kind() in the order of ingest_ident_decode(), and
 * safet_tensors (without info, see struct safet_tensor) for
 * ingest_safet_decode_tensors(), which does the rest for both. Strings are
 * NUL-terminated in the copy (where their closing quotes were), so that
 * the tensor names are C strings, as jansson's keys are.
 */

#include "bnstat/ingest.h"
#include "ingest_private.h"
#include "jscan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The keys of the metadata, in the order of ingest_ident_meta.keys. */
enum safet_meta_key { SM_WORKER, SM_STEP, SM_SEQ, SM_DOMAIN, SM_VAR_KIND, SM_FORMAT, SM_N };

/* jscan_string(), the string then NUL-terminated in place (buf is s's). */
static bool safet_scan_string(struct jscan *s, char *buf, const char **str, size_t *len)
{
	if (!jscan_string(s, str, len))
		return false;
	buf[*str + *len - buf] = '\0';
	return true;
}

/* The metadata object into str[], len[] (the keys seen in *seen). */
static bool safet_scan_meta(struct jscan *s, char *buf, const char *str[SM_N], size_t len[SM_N],
			    unsigned *seen)
{
	bool more = true;
	const char *key;
	size_t key_len;
	unsigned k;

	*seen = 0;
	if (!jscan_char(s, '{'))
		return false;
	while (more) {
		if (!jscan_key(s, &key, &key_len))
			return false;
		for (k = 0; k < SM_N; k++)
			if (jscan_key_is(key, key_len, ingest_ident_meta.keys[k]))
				break;
		if (k == SM_N || (*seen & 1u << k))
			return false;
		*seen |= 1u << k;
		if (!safet_scan_string(s, buf, &str[k], &len[k]) || !jscan_next(s, '}', &more))
			return false;
	}
	return true;
}

/* After whitespace, an integer >= 0. */
static bool safet_scan_uint(struct jscan *s, int64_t *out)
{
	return jscan_int(s, out) && *out >= 0;
}

/* One tensor's object (its '{' not yet read) into *t. */
static bool safet_scan_tensor(struct jscan *s, char *buf, struct safet_tensor *t)
{
	unsigned seen = 0, bit;
	bool more = true;
	const char *key;
	size_t len;

	if (!jscan_char(s, '{'))
		return false;
	while (more) {
		if (!jscan_key(s, &key, &len))
			return false;
		if (jscan_key_is(key, len, "dtype")) {
			bit = 1;
			if (!safet_scan_string(s, buf, &t->dtype, &t->dtype_len))
				return false;
		} else if (jscan_key_is(key, len, "shape")) {
			bit = 2;
			if (!jscan_char(s, '['))
				return false;
			jscan_ws(s);
			t->dim = 1;
			if (s->p < s->end && *s->p == ']') {
				s->p++;
				t->rank = 0;
			} else if (safet_scan_uint(s, &t->dim) && jscan_char(s, ']')) {
				t->rank = 1;
			} else {
				return false;
			}
		} else if (jscan_key_is(key, len, "data_offsets")) {
			bit = 4;
			if (!jscan_char(s, '[') || !safet_scan_uint(s, &t->off[0]) ||
			    !jscan_char(s, ',') || !safet_scan_uint(s, &t->off[1]) ||
			    !jscan_char(s, ']'))
				return false;
		} else {
			return false;
		}
		if (!jscan_member_end(s, &seen, bit, &more))
			return false;
	}
	return seen == 7;
}

/*
 * The header buf[0..hlen) (a copy, written to) into the metadata strings
 * and *ts, *n (tensors, realloc()ed; *ts NULL to start with), then nothing
 * but whitespace. More than max_tensors tensors: give up.
 */
static bool safet_scan_header(struct jscan *s, char *buf, const char *str[SM_N], size_t len[SM_N],
			      unsigned *seen, struct safet_tensor **ts, size_t *n,
			      size_t max_tensors)
{
	bool more = true, meta = false;
	size_t cap = 0;

	if (!jscan_char(s, '{'))
		return false;
	while (more) {
		const char *key;
		size_t key_len;

		if (!safet_scan_string(s, buf, &key, &key_len) || !jscan_char(s, ':'))
			return false;
		if (jscan_key_is(key, key_len, SAFET_META)) {
			if (meta || !safet_scan_meta(s, buf, str, len, seen))
				return false;
			meta = true;
		} else {
			struct safet_tensor *t;

			if (*n == max_tensors)
				return false;
			if (*n == cap) {
				size_t c = cap ? 2 * cap : 64;

				if (c > SIZE_MAX / sizeof(*t) ||
				    (t = realloc(*ts, c * sizeof(*t))) == NULL)
					return false;
				*ts = t;
				cap = c;
			}
			t = &(*ts)[(*n)++];
			memset(t, 0, sizeof(*t));
			t->key = key;
			t->key_len = key_len;
			if (!safet_scan_tensor(s, buf, t))
				return false;
		}
		if (!jscan_next(s, '}', &more))
			return false;
	}
	jscan_ws(s);
	return meta && s->p == s->end;
}

/*
 * ingest_ident_decode() for metadata the scanner read (known keys, string
 * values, worker, step and seq present): the same checks of values, in
 * the same order, with the same paths.
 */
static int safet_scan_identity(const char *const str[SM_N], const size_t len[SM_N], unsigned seen,
			       struct ingest_batch *hdr, struct bn_error *err)
{
	char path[INGEST_SHOW_MAX + 32];
	int r;

	r = ingest_ident_name(
		"worker", ingest_ident_path(path, sizeof(path), &ingest_ident_meta, "worker", 6),
		str[SM_WORKER], len[SM_WORKER], hdr->worker, err);
	if (r == 0)
		r = ingest_ident_decimal(
			"step",
			ingest_ident_path(path, sizeof(path), &ingest_ident_meta, "step", 4),
			str[SM_STEP], len[SM_STEP], &hdr->step, err);
	if (r == 0)
		r = ingest_ident_decimal(
			"seq", ingest_ident_path(path, sizeof(path), &ingest_ident_meta, "seq", 3),
			str[SM_SEQ], len[SM_SEQ], &hdr->seq, err);
	if (r < 0)
		return r;
	if (seen & 1u << SM_DOMAIN)
		r = ingest_ident_name(
			"domain",
			ingest_ident_path(path, sizeof(path), &ingest_ident_meta, "domain", 6),
			str[SM_DOMAIN], len[SM_DOMAIN], hdr->domain, err);
	else
		snprintf(hdr->domain, sizeof(hdr->domain), "%s", "default");
	if (r < 0)
		return r;
	hdr->var_kind = STATS_VAR_UNBIASED;
	if (seen & 1u << SM_VAR_KIND)
		r = ingest_ident_var_kind(
			ingest_ident_path(path, sizeof(path), &ingest_ident_meta, "var_kind", 8),
			str[SM_VAR_KIND], len[SM_VAR_KIND], &hdr->var_kind, err);
	return r;
}

/*
 * The fast path, the header length checked already: as
 * safet_decode_jansson(), or INGEST_NOT_HANDLED, with *out still NULL and err untouched, for a
 * header it leaves to jansson.
 */
int ingest_safet_decode_jscan(const char *run, const uint8_t *body, size_t len, size_t hlen,
			      const struct ingest_limits *lim, struct ingest_batch **out,
			      struct bn_error *err)
{
	const unsigned need = 1u << SM_WORKER | 1u << SM_STEP | 1u << SM_SEQ;
	struct jscan s;
	struct ingest_batch hdr;
	struct safet_tensor *ts = NULL;
	const char *str[SM_N] = { NULL };
	size_t str_len[SM_N] = { 0 }, n = 0, i, max_tensors;
	unsigned seen = 0;
	char *buf;
	int r = INGEST_NOT_HANDLED;

	/* safet_decode_doc()'s limit: (n + ARR_N) / (ARR_N + 1) <= max_layers */
	max_tensors = lim->max_layers > (SIZE_MAX - ARR_N) / (ARR_N + 1)
			      ? SIZE_MAX - ARR_N
			      : lim->max_layers * (ARR_N + 1);
	buf = malloc(hlen + 1);
	if (buf == NULL)
		return INGEST_NOT_HANDLED;
	memcpy(buf, body + 8, hlen);
	memset(&s, 0, sizeof(s));
	s.p = buf;
	s.end = buf + hlen;
	if (!safet_scan_header(&s, buf, str, str_len, &seen, &ts, &n, max_tensors) ||
	    (seen & need) != need || n == 0)
		goto done;
	/* duplicate tensor names: jansson's JSON_REJECT_DUPLICATES */
	qsort(ts, n, sizeof(*ts), ingest_safet_key_cmp);
	for (i = 1; i < n; i++)
		if (ingest_safet_key_cmp(&ts[i - 1], &ts[i]) == 0)
			goto done;

	memset(&hdr, 0, sizeof(hdr));
	snprintf(hdr.run, sizeof(hdr.run), "%s", run);
	r = safet_scan_identity(str, str_len, seen, &hdr, err);
	if (r == 0)
		r = ingest_safet_decode_tensors(&hdr, ts, n, body + 8 + hlen, len - 8 - hlen, lim,
						out, err);
done:
	free(ts);
	free(buf);
	return r;
}
