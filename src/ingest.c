/*
 * ingest: validate and decode one JSON upload (SPEC section 4, "Upload")
 * into a struct ingest_batch, and compute its content hash.
 *
 * The decoder works in two passes over the parsed document. The first pass
 * checks everything structural (types, names, required and unknown keys,
 * integers, encodings, lengths, limits) and sizes the result; then a single
 * allocation is made for the whole batch (header, layer table, all value
 * arrays, names), and the second pass converts the values straight into it
 * (base64 is decoded in place, f32 widened in place) and checks each value
 * (finite, variance >= 0). A failure anywhere frees that one block, so
 * nothing leaks and *out stays NULL.
 *
 * Layers are handled in name order in both passes, so which of several
 * bad layers is reported does not depend on the key order of the JSON.
 *
 * Error paths and messages can echo client-supplied names; they go through
 * show(), which keeps them printable ASCII and bounded, because the HTTP
 * layer puts them into a JSON reply and the log puts them on a line.
 */
#include "bnstat/ingest.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest count accepted: counts must stay exact as doubles. */
#define COUNT_MAX ((int64_t)1 << 53)

/* How much of an unknown key or an invalid name is echoed in an error. */
#define SHOW_MAX 64

/* ------------------------------------------------------------------ */
/* names */

static bool name_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

/* s[0..len) is 1..max characters of [A-Za-z0-9._-]. */
static bool name_valid_n(const char *s, size_t len, size_t max)
{
	size_t i;

	if (len == 0 || len > max)
		return false;
	for (i = 0; i < len; i++)
		if (!name_char((unsigned char)s[i]))
			return false;
	return true;
}

/* Length of s, but stop counting past max (s may be very long). */
static size_t bounded_len(const char *s, size_t max)
{
	size_t n = 0;

	while (n <= max && s[n] != '\0')
		n++;
	return n;
}

bool ingest_name_valid(const char *s)
{
	return s != NULL &&
	       name_valid_n(s, bounded_len(s, INGEST_NAME_MAX), INGEST_NAME_MAX);
}

bool ingest_layer_name_valid(const char *s)
{
	return s != NULL && name_valid_n(s, bounded_len(s, INGEST_LAYER_NAME_MAX),
					 INGEST_LAYER_NAME_MAX);
}

/*
 * Copy s[0..len) into dst (of dstsize >= 8 bytes) for an error path or
 * message: at most max bytes, '...' when cut, and any byte outside
 * printable ASCII replaced by '?'. Cutting UTF-8 in the middle of a
 * character would make the reply unencodable as JSON, and control
 * characters would break log lines.
 */
static const char *show(char *dst, size_t dstsize, const char *s, size_t len,
			size_t max)
{
	size_t i, n = len;
	bool cut = false;

	if (n > max) {
		n = max;
		cut = true;
	}
	if (n > dstsize - 4) {
		n = dstsize - 4;
		cut = true;
	}
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		dst[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	if (cut) {
		memcpy(dst + n, "...", 3);
		n += 3;
	}
	dst[n] = '\0';
	return dst;
}

/* ------------------------------------------------------------------ */
/* base64 */

/*
 * Decoding table: the 6-bit value of each byte of the standard alphabet,
 * XX (0xFF) for everything else, '=' included: padding is handled apart,
 * in the last quantum only.
 */
#define XX 0xFF
static const uint8_t b64_table[256] = {
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, 62, XX, XX, XX, 63,
	52, 53, 54, 55, 56, 57, 58, 59, 60, 61, XX, XX, XX, XX, XX, XX,
	XX,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
	15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, XX, XX, XX, XX, XX,
	XX, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
	41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
};
#undef XX

/*
 * Decoded size of base64 text of length len with '=' padding, or
 * (size_t)-1 when len is not a multiple of 4. Does not look at the other
 * characters; ingest_base64_decode() does.
 */
static size_t b64_decoded_size(const char *s, size_t len)
{
	size_t n;

	if (len % 4 != 0)
		return (size_t)-1;
	if (len == 0)
		return 0;
	n = len / 4 * 3;
	if (s[len - 1] == '=')
		n--;
	if (s[len - 2] == '=')
		n--;
	return n;
}

/*
 * The inner loop decodes a quantum per iteration without a branch:
 * invalid characters map to 0xFF, whose high bit is collected in `bad` and
 * looked at once at the end. Only the last quantum may hold padding, and
 * its unused bits must be zero (RFC 4648 section 3.5), so that each byte
 * string has exactly one accepted encoding.
 */
long ingest_base64_decode(const char *src, size_t len, uint8_t *dst)
{
	const unsigned char *s = (const unsigned char *)src;
	uint8_t *d = dst;
	unsigned bad = 0;
	uint32_t a, b, c, e, v;
	size_t i, body;

	if (len % 4 != 0 || len / 4 * 3 > (size_t)LONG_MAX)
		return -EINVAL;
	if (len == 0)
		return 0;
	body = len - 4;
	for (i = 0; i < body; i += 4) {
		a = b64_table[s[i]];
		b = b64_table[s[i + 1]];
		c = b64_table[s[i + 2]];
		e = b64_table[s[i + 3]];
		bad |= a | b | c | e;
		v = a << 18 | b << 12 | c << 6 | e;
		d[0] = (uint8_t)(v >> 16);
		d[1] = (uint8_t)(v >> 8);
		d[2] = (uint8_t)v;
		d += 3;
	}
	a = b64_table[s[body]];
	b = b64_table[s[body + 1]];
	bad |= a | b;
	if (s[body + 3] == '=') {
		if (s[body + 2] == '=') {
			/* xx== : one byte, low 4 bits of b unused */
			if (b & 0x0F)
				return -EINVAL;
			if (bad & 0x80)
				return -EINVAL;
			*d++ = (uint8_t)(a << 2 | b >> 4);
		} else {
			/* xxx= : two bytes, low 2 bits of c unused */
			c = b64_table[s[body + 2]];
			bad |= c;
			if ((bad & 0x80) || (c & 0x03))
				return -EINVAL;
			v = a << 18 | b << 12 | c << 6;
			d[0] = (uint8_t)(v >> 16);
			d[1] = (uint8_t)(v >> 8);
			d += 2;
		}
	} else {
		c = b64_table[s[body + 2]];
		e = b64_table[s[body + 3]];
		bad |= c | e;
		if (bad & 0x80)
			return -EINVAL;
		v = a << 18 | b << 12 | c << 6 | e;
		d[0] = (uint8_t)(v >> 16);
		d[1] = (uint8_t)(v >> 8);
		d[2] = (uint8_t)v;
		d += 3;
	}
	return (long)(d - dst);
}

/* ------------------------------------------------------------------ */
/* content hash */

/*
 * A 128-bit non-cryptographic hash over a stream of 64-bit words, in the
 * manner of xxh64: four independent lanes (so the loop runs at several
 * GB/s), each word mixed as acc = rotl(acc + w*P2, 31) * P1, which for a
 * given acc is a bijection of w. The two output halves are two different
 * foldings of the 256-bit lane state, each followed by a full avalanche.
 *
 * The stream is canonical: every item is a 64-bit word, a double is its
 * IEEE-754 bit pattern (= its little-endian bytes read as a little-endian
 * word), and name bytes are packed little-endian into words after their
 * length. So the hash depends on decoded content only, on any host.
 *
 * Changing anything here changes stored hashes: a retry of a batch stored
 * before the change would then be answered 409 instead of "duplicate".
 */
#define H_P1 0x9E3779B185EBCA87ULL
#define H_P2 0xC2B2AE3D27D4EB4FULL
#define H_P3 0x165667B19E3779F9ULL
#define H_P4 0x85EBCA77C2B2AE63ULL
#define H_P5 0x27D4EB2F165667C5ULL

struct hasher {
	uint64_t v[4];
	uint64_t buf[4];
	unsigned nbuf;
	uint64_t nwords;
};

static inline uint64_t rotl64(uint64_t x, unsigned r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint64_t h_round(uint64_t acc, uint64_t w)
{
	acc += w * H_P2;
	acc = rotl64(acc, 31);
	return acc * H_P1;
}

static uint64_t h_avalanche(uint64_t h)
{
	h ^= h >> 33;
	h *= H_P2;
	h ^= h >> 29;
	h *= H_P3;
	h ^= h >> 32;
	return h;
}

static uint64_t h_merge(uint64_t h, uint64_t lane)
{
	h ^= h_round(0, lane);
	return h * H_P1 + H_P4;
}

static void h_init(struct hasher *h)
{
	/* xxh64's lane seeds for seed 0x626e73746174 ("bnstat") */
	const uint64_t seed = 0x626e73746174ULL;

	h->v[0] = seed + H_P1 + H_P2;
	h->v[1] = seed + H_P2;
	h->v[2] = seed;
	h->v[3] = seed - H_P1;
	h->nbuf = 0;
	h->nwords = 0;
}

static inline void h_block(struct hasher *h, const uint64_t w[4])
{
	h->v[0] = h_round(h->v[0], w[0]);
	h->v[1] = h_round(h->v[1], w[1]);
	h->v[2] = h_round(h->v[2], w[2]);
	h->v[3] = h_round(h->v[3], w[3]);
}

static inline void h_word(struct hasher *h, uint64_t w)
{
	h->buf[h->nbuf++] = w;
	h->nwords++;
	if (h->nbuf == 4) {
		h_block(h, h->buf);
		h->nbuf = 0;
	}
}

static void h_doubles(struct hasher *h, const double *d, size_t n)
{
	uint64_t w[4];

	while (n > 0 && h->nbuf != 0) {
		memcpy(&w[0], d, 8);
		h_word(h, w[0]);
		d++;
		n--;
	}
	h->nwords += n - n % 4;
	for (; n >= 4; n -= 4, d += 4) {
		memcpy(w, d, sizeof(w));
		h_block(h, w);
	}
	for (; n > 0; n--, d++) {
		memcpy(&w[0], d, 8);
		h_word(h, w[0]);
	}
}

static void h_bytes(struct hasher *h, const char *s, size_t len)
{
	size_t i;
	uint64_t w = 0;

	h_word(h, (uint64_t)len);
	for (i = 0; i < len; i++) {
		w |= (uint64_t)(unsigned char)s[i] << (8 * (i % 8));
		if (i % 8 == 7) {
			h_word(h, w);
			w = 0;
		}
	}
	if (len % 8 != 0)
		h_word(h, w);
}

static void h_final(struct hasher *h, uint8_t out[INGEST_HASH_SIZE])
{
	uint64_t len, lo, hi, v0, v1, v2, v3;
	int i;

	len = h->nwords;
	/* zero padding is unambiguous: the word count is mixed in below */
	while (h->nbuf != 0)
		h_word(h, 0);
	v0 = h->v[0];
	v1 = h->v[1];
	v2 = h->v[2];
	v3 = h->v[3];

	lo = rotl64(v0, 1) + rotl64(v1, 7) + rotl64(v2, 12) + rotl64(v3, 18);
	lo = h_merge(lo, v0);
	lo = h_merge(lo, v1);
	lo = h_merge(lo, v2);
	lo = h_merge(lo, v3);
	lo = h_avalanche(lo + len * 8);

	hi = rotl64(v3, 5) + rotl64(v2, 23) + rotl64(v1, 37) + rotl64(v0, 47);
	hi ^= H_P5;
	hi = h_merge(hi, v3 ^ rotl64(v1, 29));
	hi = h_merge(hi, v2 ^ rotl64(v0, 41));
	hi = h_merge(hi, v1 + v2);
	hi = h_merge(hi, v0 + v3);
	hi = h_avalanche(hi ^ (len * H_P3));

	for (i = 0; i < 8; i++) {
		out[i] = (uint8_t)(lo >> (8 * i));
		out[8 + i] = (uint8_t)(hi >> (8 * i));
	}
}

/*
 * Stream: var_kind, n_layers, then per layer in name order: name (length,
 * bytes), count, channels, has_ema, mean[], var[], and when has_ema
 * ema_mean[], ema_var[].
 */
static void batch_hash(struct ingest_batch *b)
{
	struct hasher h;
	size_t i;

	h_init(&h);
	h_word(&h, (uint64_t)b->var_kind);
	h_word(&h, (uint64_t)b->n_layers);
	for (i = 0; i < b->n_layers; i++) {
		const struct ingest_layer *l = &b->layers[i];
		bool has_ema = l->ema_mean != NULL;

		h_bytes(&h, l->name, strlen(l->name));
		h_word(&h, (uint64_t)l->count);
		h_word(&h, (uint64_t)l->channels);
		h_word(&h, has_ema ? 1 : 0);
		if (l->channels == 0)
			continue;
		h_doubles(&h, l->mean, l->channels);
		h_doubles(&h, l->var, l->channels);
		if (has_ema) {
			h_doubles(&h, l->ema_mean, l->channels);
			h_doubles(&h, l->ema_var, l->channels);
		}
	}
	h_final(&h, b->hash);
}

/* ------------------------------------------------------------------ */
/* decoding */

enum arr_id { ARR_MEAN, ARR_VAR, ARR_EMA_MEAN, ARR_EMA_VAR, ARR_N };

static const char *const arr_key[ARR_N] = {"mean", "var", "ema_mean",
					   "ema_var"};

enum enc { ENC_NONE, ENC_NUMBERS, ENC_F32, ENC_F64 };

/* Where one value array comes from, as found by the first pass. */
struct src_array {
	enum enc enc;
	const json_t *json; /* the array (ENC_NUMBERS) or the object */
	const char *b64;    /* ENC_F32, ENC_F64 */
	size_t b64_len;
	size_t n;           /* number of values */
};

/* One layer between the passes. */
struct layer_plan {
	const char *name; /* jansson's key, NUL-terminated, no NUL inside */
	size_t name_len;
	const json_t *obj;
	int64_t count;
	size_t channels;
	struct src_array src[ARR_N];
};

static const char *const top_keys[] = {"worker", "step",     "seq",
				       "domain", "var_kind", "layers"};

static const char *type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a real number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	case JSON_NULL:
		return "null";
	}
	return "?";
}

static bool key_known(const char *key, const char *const *known, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(key, known[i]) == 0)
			return true;
	return false;
}

/*
 * Path "layers.<name>[.<field>][.<sub>][[index]]" of something in layer p.
 * Fields and sub-keys given here may be client-supplied (unknown keys).
 */
static void layer_path(char *path, size_t size, const struct layer_plan *p,
		       const char *field, const char *sub, long index)
{
	char name[INGEST_LAYER_NAME_MAX + 4], key[SHOW_MAX + 4];
	int n;

	show(name, sizeof(name), p->name, p->name_len, INGEST_LAYER_NAME_MAX);
	n = snprintf(path, size, "layers.%s", name);
	if (field != NULL && n >= 0 && (size_t)n < size)
		n += snprintf(path + n, size - (size_t)n, ".%s",
			      show(key, sizeof(key), field, strlen(field), SHOW_MAX));
	if (sub != NULL && n >= 0 && (size_t)n < size)
		n += snprintf(path + n, size - (size_t)n, ".%s",
			      show(key, sizeof(key), sub, strlen(sub), SHOW_MAX));
	if (index >= 0 && n >= 0 && (size_t)n < size)
		snprintf(path + n, size - (size_t)n, "[%ld]", index);
}

/* bn_error_set() for something in layer p; see layer_path(). */
__attribute__((format(printf, 8, 9))) static int
layer_error(struct bn_error *err, int status, const char *code,
	    const struct layer_plan *p, const char *field, const char *sub,
	    long index, const char *fmt, ...)
{
	char path[BN_ERROR_PATH_MAX], msg[BN_ERROR_MESSAGE_MAX];
	va_list ap;

	layer_path(path, sizeof(path), p, field, sub, index);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return bn_error_set(err, status, code, path, "%s", msg);
}

/*
 * A JSON integer in [0, max]. A JSON real (1.5, and 3.0 too: the wire
 * contract wants integers written as integers) is well-typed for JSON but
 * not acceptable, hence 422; anything else is the wrong type, 400.
 * The error path is filled in by the caller through `path`, or through
 * layer `p` and `field` when p is not NULL.
 */
static int get_uint(const json_t *v, int64_t max, int64_t *out,
		    const char *path, const struct layer_plan *p,
		    const char *field, struct bn_error *err)
{
	json_int_t i;

#define UINT_ERR(status, code, ...)                                          \
	(p ? layer_error(err, status, code, p, field, NULL, -1, __VA_ARGS__)  \
	   : bn_error_set(err, status, code, path, __VA_ARGS__))
	if (json_is_real(v))
		return UINT_ERR(422, BN_E_INVALID,
				"must be an integer, not a real number (%.17g)",
				json_real_value(v));
	if (!json_is_integer(v))
		return UINT_ERR(400, BN_E_TYPE, "must be an integer, not %s",
				type_name(v));
	i = json_integer_value(v);
	if (i < 0)
		return UINT_ERR(422, BN_E_INVALID, "must be >= 0, not %lld",
				(long long)i);
	if (i > max)
		return UINT_ERR(422, BN_E_INVALID, "must be <= %lld, not %lld",
				(long long)max, (long long)i);
#undef UINT_ERR
	*out = (int64_t)i;
	return 0;
}

/* A top-level name field (worker, domain) into dst. */
static int get_name(const json_t *root, const char *key, bool required,
		    const char *dflt, char *dst, struct bn_error *err)
{
	const json_t *v = json_object_get(root, key);
	const char *s;
	size_t len;

	if (v == NULL) {
		if (required)
			return bn_error_set(err, 400, BN_E_MISSING, key,
					    "%s is required", key);
		snprintf(dst, INGEST_NAME_MAX + 1, "%s", dflt);
		return 0;
	}
	if (!json_is_string(v))
		return bn_error_set(err, 400, BN_E_TYPE, key,
				    "%s must be a string, not %s", key,
				    type_name(v));
	s = json_string_value(v);
	len = json_string_length(v);
	if (!name_valid_n(s, len, INGEST_NAME_MAX)) {
		char shown[SHOW_MAX + 4];

		return bn_error_set(err, 422, BN_E_INVALID, key,
				    "%s \"%s\" must match [A-Za-z0-9._-]{1,%d}",
				    key, show(shown, sizeof(shown), s, len, SHOW_MAX),
				    INGEST_NAME_MAX);
	}
	memcpy(dst, s, len);
	dst[len] = '\0';
	return 0;
}

/*
 * First pass over one value array of a layer: find its encoding and its
 * length, check everything but the values themselves.
 */
static int plan_array(struct layer_plan *p, enum arr_id id,
		      struct bn_error *err)
{
	const char *key = arr_key[id];
	struct src_array *a = &p->src[id];
	const json_t *v = json_object_get(p->obj, key);
	const json_t *dt, *b64, *x;
	const char *k, *dts;
	size_t esize, bytes;

	a->enc = ENC_NONE;
	a->n = 0;
	if (v == NULL)
		return 0;
	a->json = v;
	if (json_is_array(v)) {
		a->enc = ENC_NUMBERS;
		a->n = json_array_size(v);
		return 0;
	}
	if (!json_is_object(v))
		return layer_error(err, 400, BN_E_TYPE, p, key, NULL, -1,
				   "must be an array of numbers or "
				   "{\"dtype\", \"b64\"}, not %s",
				   type_name(v));
	json_object_foreach ((json_t *)v, k, x) {
		if (strcmp(k, "dtype") != 0 && strcmp(k, "b64") != 0)
			return layer_error(err, 422, BN_E_INVALID, p, key, k,
					   -1,
					   "unknown key (expected \"dtype\" "
					   "and \"b64\")");
	}
	dt = json_object_get(v, "dtype");
	if (dt == NULL)
		return layer_error(err, 400, BN_E_MISSING, p, key, "dtype", -1,
				   "dtype is required (\"f32\" or \"f64\")");
	if (!json_is_string(dt))
		return layer_error(err, 400, BN_E_TYPE, p, key, "dtype", -1,
				   "dtype must be a string, not %s",
				   type_name(dt));
	dts = json_string_value(dt);
	if (strcmp(dts, "f32") == 0 && json_string_length(dt) == 3) {
		a->enc = ENC_F32;
		esize = 4;
	} else if (strcmp(dts, "f64") == 0 && json_string_length(dt) == 3) {
		a->enc = ENC_F64;
		esize = 8;
	} else {
		char shown[SHOW_MAX + 4];

		return layer_error(err, 422, BN_E_INVALID, p, key, "dtype", -1,
				   "unknown dtype \"%s\" (expected \"f32\" or "
				   "\"f64\")",
				   show(shown, sizeof(shown), dts,
					json_string_length(dt), SHOW_MAX));
	}
	b64 = json_object_get(v, "b64");
	if (b64 == NULL)
		return layer_error(err, 400, BN_E_MISSING, p, key, "b64", -1,
				   "b64 is required");
	if (!json_is_string(b64))
		return layer_error(err, 400, BN_E_TYPE, p, key, "b64", -1,
				   "b64 must be a string, not %s",
				   type_name(b64));
	a->b64 = json_string_value(b64);
	a->b64_len = json_string_length(b64);
	bytes = b64_decoded_size(a->b64, a->b64_len);
	if (bytes == (size_t)-1)
		return layer_error(err, 422, BN_E_INVALID, p, key, "b64", -1,
				   "bad base64: length %zu is not a multiple "
				   "of 4 (standard alphabet, '=' padding)",
				   a->b64_len);
	if (bytes % esize != 0)
		return layer_error(err, 422, BN_E_INVALID, p, key, "b64", -1,
				   "decodes to %zu bytes, not a multiple of "
				   "%zu (%s)",
				   bytes, esize, dts);
	a->n = bytes / esize;
	return 0;
}

/* First pass over one layer. */
static int plan_layer(struct layer_plan *p, enum stats_var_kind kind,
		      const struct ingest_limits *lim, struct bn_error *err)
{
	static const char *const layer_keys[] = {"count", "mean", "var",
						 "ema_mean", "ema_var"};
	const json_t *v;
	const char *k;
	size_t n, i;
	bool any;
	int r;

	if (!name_valid_n(p->name, p->name_len, INGEST_LAYER_NAME_MAX))
		return layer_error(err, 422, BN_E_INVALID, p, NULL, NULL, -1,
				   "layer name must match [A-Za-z0-9._-]{1,%d}",
				   INGEST_LAYER_NAME_MAX);
	if (!json_is_object(p->obj))
		return layer_error(err, 400, BN_E_TYPE, p, NULL, NULL, -1,
				   "a layer must be an object, not %s",
				   type_name(p->obj));
	json_object_foreach ((json_t *)p->obj, k, v) {
		if (!key_known(k, layer_keys, 5))
			return layer_error(err, 422, BN_E_INVALID, p, k, NULL,
					   -1,
					   "unknown key (expected count, mean, "
					   "var, ema_mean, ema_var)");
	}

	v = json_object_get(p->obj, "count");
	if (v == NULL)
		return layer_error(err, 400, BN_E_MISSING, p, "count", NULL, -1,
				   "count is required");
	r = get_uint(v, COUNT_MAX, &p->count, NULL, p, "count", err);
	if (r < 0)
		return r;
	if (p->count == 1 && kind == STATS_VAR_UNBIASED)
		return layer_error(err, 422, BN_E_INVALID, p, "count", NULL, -1,
				   "count 1 has no unbiased variance (send "
				   "var_kind \"biased\")");

	any = false;
	for (i = 0; i < ARR_N; i++) {
		r = plan_array(p, (enum arr_id)i, err);
		if (r < 0)
			return r;
		any = any || p->src[i].enc != ENC_NONE;
	}
	if ((p->src[ARR_EMA_MEAN].enc == ENC_NONE) !=
	    (p->src[ARR_EMA_VAR].enc == ENC_NONE)) {
		bool has_m = p->src[ARR_EMA_MEAN].enc != ENC_NONE;

		return layer_error(err, 422, BN_E_INVALID, p,
				   has_m ? "ema_mean" : "ema_var", NULL, -1,
				   "%s needs %s: send both or neither",
				   has_m ? "ema_mean" : "ema_var",
				   has_m ? "ema_var" : "ema_mean");
	}
	/* count 0 (layer unused) may come without arrays; else both needed */
	if (p->count == 0 && !any) {
		p->channels = 0;
		return 0;
	}
	for (i = ARR_MEAN; i <= ARR_VAR; i++)
		if (p->src[i].enc == ENC_NONE)
			return layer_error(err, 400, BN_E_MISSING, p,
					   arr_key[i], NULL, -1,
					   "%s is required when count > 0 or "
					   "other arrays are given",
					   arr_key[i]);

	n = p->src[ARR_MEAN].n;
	if (n == 0)
		return layer_error(err, 422, BN_E_INVALID, p, "mean", NULL, -1,
				   "must hold at least one channel");
	if (n > lim->max_channels)
		return layer_error(err, 422, BN_E_LIMIT, p, "mean", NULL, -1,
				   "%zu channels, more than the limit of %zu",
				   n, lim->max_channels);
	for (i = ARR_VAR; i < ARR_N; i++)
		if (p->src[i].enc != ENC_NONE && p->src[i].n != n)
			return layer_error(err, 422, BN_E_INVALID, p,
					   arr_key[i], NULL, -1,
					   "%zu values, but mean has %zu",
					   p->src[i].n, n);
	p->channels = n;
	return 0;
}

static inline uint32_t load_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static inline uint64_t load_le64(const uint8_t *p)
{
	return (uint64_t)load_le32(p) | (uint64_t)load_le32(p + 4) << 32;
}

/*
 * Second pass over one value array: write its p->channels doubles to dst
 * and check them. Base64 is decoded straight into dst: f64 in place, f32
 * into the upper half of dst and then widened front to back, which never
 * overwrites a float not yet read (double i ends where float 2i-n+1 ends,
 * and 2i-n+1 <= i).
 */
static int fill_array(const struct layer_plan *p, enum arr_id id, double *dst,
		      struct bn_error *err)
{
	const struct src_array *a = &p->src[id];
	const char *key = arr_key[id];
	const bool is_var = id == ARR_VAR || id == ARR_EMA_VAR;
	size_t n = p->channels, i;
	uint8_t *bytes;
	long got;

	switch (a->enc) {
	case ENC_NUMBERS:
		for (i = 0; i < n; i++) {
			const json_t *x = json_array_get(a->json, i);

			if (json_is_real(x))
				dst[i] = json_real_value(x);
			else if (json_is_integer(x))
				dst[i] = (double)json_integer_value(x);
			else
				return layer_error(err, 400, BN_E_TYPE, p, key,
						   NULL, (long)i,
						   "must be a number, not %s",
						   type_name(x));
		}
		break;
	case ENC_F64:
		bytes = (uint8_t *)dst;
		got = ingest_base64_decode(a->b64, a->b64_len, bytes);
		if (got < 0)
			return layer_error(err, 422, BN_E_INVALID, p, key, "b64",
					   -1,
					   "bad base64 (standard alphabet, '=' "
					   "padding, no whitespace)");
		for (i = 0; i < n; i++) {
			uint64_t u = load_le64(bytes + 8 * i);

			memcpy(&dst[i], &u, 8);
		}
		break;
	case ENC_F32:
		bytes = (uint8_t *)dst + 4 * n;
		got = ingest_base64_decode(a->b64, a->b64_len, bytes);
		if (got < 0)
			return layer_error(err, 422, BN_E_INVALID, p, key, "b64",
					   -1,
					   "bad base64 (standard alphabet, '=' "
					   "padding, no whitespace)");
		for (i = 0; i < n; i++) {
			uint32_t u = load_le32(bytes + 4 * i);
			float f;

			memcpy(&f, &u, 4);
			dst[i] = (double)f;
		}
		break;
	case ENC_NONE:
		return 0;
	}

	for (i = 0; i < n; i++) {
		double x = dst[i];

		if (!isfinite(x))
			return layer_error(err, 422, BN_E_INVALID, p, key, NULL,
					   (long)i, "must be finite, not %g", x);
		if (is_var && x < 0)
			return layer_error(err, 422, BN_E_INVALID, p, key, NULL,
					   (long)i,
					   "a variance must be >= 0, not %.17g",
					   x);
		/* -0.0 == 0.0: store +0.0 so that the hash agrees too */
		if (x == 0)
			dst[i] = 0.0;
	}
	return 0;
}

static int plan_cmp(const void *a, const void *b)
{
	return strcmp(((const struct layer_plan *)a)->name,
		      ((const struct layer_plan *)b)->name);
}

static size_t align_up(size_t n, size_t a)
{
	return (n + a - 1) / a * a;
}

/*
 * The identity and options of the upload (everything but the layers)
 * into *hdr. Unknown keys are looked for first, so that a misspelt
 * "layers" is reported as unknown rather than as missing.
 */
static int decode_header(const json_t *root, struct ingest_batch *hdr,
			 struct bn_error *err)
{
	const json_t *v;
	const char *k;
	int r;

	if (!json_is_object(root))
		return bn_error_set(err, 400, BN_E_TYPE, NULL,
				    "the body must be a JSON object, not %s",
				    type_name(root));
	json_object_foreach ((json_t *)root, k, v) {
		if (!key_known(k, top_keys, sizeof(top_keys) / sizeof(*top_keys))) {
			char shown[SHOW_MAX + 4];

			show(shown, sizeof(shown), k, strlen(k), SHOW_MAX);
			return bn_error_set(err, 422, BN_E_INVALID, shown,
					    "unknown key \"%s\" (expected worker, "
					    "step, seq, domain, var_kind, layers)",
					    shown);
		}
	}

	r = get_name(root, "worker", true, NULL, hdr->worker, err);
	if (r < 0)
		return r;
	v = json_object_get(root, "step");
	if (v == NULL)
		return bn_error_set(err, 400, BN_E_MISSING, "step",
				    "step is required");
	r = get_uint(v, INT64_MAX, &hdr->step, "step", NULL, NULL, err);
	if (r < 0)
		return r;
	v = json_object_get(root, "seq");
	if (v == NULL)
		return bn_error_set(err, 400, BN_E_MISSING, "seq",
				    "seq is required");
	r = get_uint(v, INT64_MAX, &hdr->seq, "seq", NULL, NULL, err);
	if (r < 0)
		return r;
	r = get_name(root, "domain", false, "default", hdr->domain, err);
	if (r < 0)
		return r;

	hdr->var_kind = STATS_VAR_UNBIASED;
	v = json_object_get(root, "var_kind");
	if (v == NULL)
		return 0;
	if (!json_is_string(v))
		return bn_error_set(err, 400, BN_E_TYPE, "var_kind",
				    "var_kind must be a string, not %s",
				    type_name(v));
	if (strcmp(json_string_value(v), "biased") == 0 &&
	    json_string_length(v) == 6) {
		hdr->var_kind = STATS_VAR_BIASED;
	} else if (strcmp(json_string_value(v), "unbiased") != 0 ||
		   json_string_length(v) != 8) {
		char shown[SHOW_MAX + 4];

		return bn_error_set(err, 422, BN_E_INVALID, "var_kind",
				    "var_kind \"%s\" is not \"unbiased\" or "
				    "\"biased\"",
				    show(shown, sizeof(shown), json_string_value(v),
					 json_string_length(v), SHOW_MAX));
	}
	return 0;
}

/*
 * Everything after the document is parsed. On success *out holds the
 * batch; on failure nothing is allocated.
 */
static int decode_doc(const char *run, const json_t *root,
		      const struct ingest_limits *lim,
		      struct ingest_batch **out, struct bn_error *err)
{
	struct ingest_batch hdr, *b = NULL;
	struct layer_plan *plans = NULL;
	const json_t *layers, *v;
	const char *k;
	size_t n_layers, i, j, n_doubles = 0, name_bytes = 0;
	size_t off_layers, off_doubles, off_names, total;
	double *dp;
	char *np;
	int r;

	memset(&hdr, 0, sizeof(hdr));
	snprintf(hdr.run, sizeof(hdr.run), "%s", run);
	r = decode_header(root, &hdr, err);
	if (r < 0)
		return r;

	layers = json_object_get(root, "layers");
	if (layers == NULL)
		return bn_error_set(err, 400, BN_E_MISSING, "layers",
				    "layers is required");
	if (!json_is_object(layers))
		return bn_error_set(err, 400, BN_E_TYPE, "layers",
				    "layers must be an object, not %s",
				    type_name(layers));
	n_layers = json_object_size(layers);
	if (n_layers == 0)
		return bn_error_set(err, 422, BN_E_INVALID, "layers",
				    "at least one layer is required");
	if (n_layers > lim->max_layers)
		return bn_error_set(err, 422, BN_E_LIMIT, "layers",
				    "%zu layers, more than the limit of %zu",
				    n_layers, lim->max_layers);

	/* pass 1: check the structure and size the batch */
	plans = calloc(n_layers, sizeof(*plans));
	if (plans == NULL)
		goto nomem;
	j = 0;
	json_object_foreach ((json_t *)layers, k, v) {
		plans[j].name = k;
		plans[j].name_len = strlen(k);
		plans[j].obj = v;
		j++;
	}
	qsort(plans, n_layers, sizeof(*plans), plan_cmp);
	for (i = 0; i < n_layers; i++) {
		size_t arrays;

		r = plan_layer(&plans[i], hdr.var_kind, lim, err);
		if (r < 0)
			goto fail;
		arrays = plans[i].src[ARR_EMA_MEAN].enc != ENC_NONE ? 4 : 2;
		/* cannot overflow in practice (bounded by the body size), but
		 * the limits are configurable */
		if (plans[i].channels > (SIZE_MAX / 64 - n_doubles) / arrays)
			goto nomem;
		n_doubles += plans[i].channels * arrays;
		name_bytes += plans[i].name_len + 1;
	}

	/* one block: header, layer table, doubles, names */
	off_layers = align_up(sizeof(struct ingest_batch),
			      alignof(struct ingest_layer));
	off_doubles = align_up(off_layers + n_layers * sizeof(struct ingest_layer),
			       alignof(double));
	off_names = off_doubles + n_doubles * sizeof(double);
	total = off_names + name_bytes;
	b = malloc(total);
	if (b == NULL)
		goto nomem;
	*b = hdr;
	b->n_layers = n_layers;
	b->layers = (struct ingest_layer *)(void *)((char *)b + off_layers);
	dp = (double *)(void *)((char *)b + off_doubles);
	np = (char *)b + off_names;

	/* pass 2: the values */
	for (i = 0; i < n_layers; i++) {
		const struct layer_plan *p = &plans[i];
		struct ingest_layer *l = &b->layers[i];
		double *arr[ARR_N] = {NULL, NULL, NULL, NULL};

		memcpy(np, p->name, p->name_len + 1);
		l->name = np;
		np += p->name_len + 1;
		l->count = p->count;
		l->channels = p->channels;
		for (j = 0; j < ARR_N && p->channels > 0; j++) {
			if (p->src[j].enc == ENC_NONE)
				continue;
			arr[j] = dp;
			dp += p->channels;
			r = fill_array(p, (enum arr_id)j, arr[j], err);
			if (r < 0)
				goto fail;
		}
		l->mean = arr[ARR_MEAN];
		l->var = arr[ARR_VAR];
		l->ema_mean = arr[ARR_EMA_MEAN];
		l->ema_var = arr[ARR_EMA_VAR];
	}
	batch_hash(b);
	free(plans);
	*out = b;
	return 0;

nomem:
	bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
	r = -ENOMEM;
fail:
	free(b);
	free(plans);
	return r;
}

int ingest_decode_json(const char *run, const char *body, size_t len,
		       const struct ingest_limits *limits,
		       struct ingest_batch **out, struct bn_error *err)
{
	static const struct ingest_limits defaults = {
		INGEST_DEFAULT_MAX_LAYERS, INGEST_DEFAULT_MAX_CHANNELS};
	json_error_t jerr;
	json_t *root;
	size_t run_len;
	int r;

	*out = NULL;
	if (limits == NULL)
		limits = &defaults;
	run_len = run ? bounded_len(run, INGEST_NAME_MAX) : 0;
	if (!name_valid_n(run ? run : "", run_len, INGEST_NAME_MAX)) {
		char shown[SHOW_MAX + 4];

		return bn_error_set(err, 422, BN_E_INVALID, "run",
				    "run \"%s\" must match [A-Za-z0-9._-]{1,%d}",
				    show(shown, sizeof(shown), run ? run : "",
					 run_len, SHOW_MAX),
				    INGEST_NAME_MAX);
	}

	/* JSON_DECODE_ANY so that a scalar body is a wrong type (400
	 * wrong_type), like an array, rather than a syntax error */
	root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
			  &jerr);
	if (root == NULL) {
		char text[JSON_ERROR_TEXT_LENGTH + 4];

		if (json_error_code(&jerr) == json_error_out_of_memory) {
			bn_error_set(err, 500, BN_E_INTERNAL, NULL,
				     "out of memory");
			return -ENOMEM;
		}
		/* jansson quotes the offending input, which may be binary */
		show(text, sizeof(text), jerr.text, strlen(jerr.text),
		     JSON_ERROR_TEXT_LENGTH);
		return bn_error_set(err, 400, BN_E_MALFORMED, NULL,
				    "malformed JSON at line %d, column %d: %s",
				    jerr.line, jerr.column, text);
	}
	r = decode_doc(run, root, limits, out, err);
	json_decref(root);
	return r;
}

void ingest_batch_free(struct ingest_batch *b)
{
	free(b);
}
