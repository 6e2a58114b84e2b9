/*
 * ingest's own header: what its files share and bnstatd's other modules do
 * not see. The module is one job (validate and decode an upload) in several
 * files, one sub-job each: names.c, base64.c, batch_hash.c, ingest_build.c
 * (layer plans and the one builder of a batch), ingest_ident.c (the
 * identity of an upload), jscan.c (the fast JSON scanner's primitives),
 * ingest_json.c and ingest_safetensors*.c (the two forms of an upload).
 *
 * It also holds, for the tests, the two ways each decoder has of reading
 * its JSON, one at a time. ingest_decode_json() first tries a fast, strict
 * scanner specialised to the upload's schema, and runs jansson
 * (json_loadb) from scratch on any body the scanner leaves alone;
 * ingest_decode_safetensors() does the same with its header. Both ways
 * feed the same checks and builder. The tests compare the two on valid,
 * invalid and mutated bodies, and check that the fast path does handle
 * ordinary uploads; bnstatd itself calls only the public decoders of
 * bnstat/ingest.h.
 */
#ifndef BNSTAT_INGEST_PRIVATE_H
#define BNSTAT_INGEST_PRIVATE_H

#include "bnstat/ingest.h"

/* ------------------------------------------------------------------ */
/* names.c */

/* How much of an unknown key or an invalid name is echoed in an error. */
#define INGEST_SHOW_MAX 64

/* True when s[0..len) is 1..max characters of [A-Za-z0-9._-]. */
bool ingest_name_valid_n(const char *s, size_t len, size_t max);

/*
 * The length of the NUL-terminated s, but at most max + 1: s may be very
 * long, and anything past max is invalid anyway.
 */
size_t ingest_name_len(const char *s, size_t max);

/*
 * strcmp() order of a[0..alen) and b[0..blen), which hold no NUL and
 * need not be NUL-terminated: the order of layers in a batch.
 */
int ingest_name_cmp(const char *a, size_t alen, const char *b, size_t blen);

/*
 * Copy s[0..len) into dst (of dstsize >= 8 bytes) for an error path or
 * message: at most max bytes, "..." when cut, any byte outside printable
 * ASCII replaced by '?'. Returns dst, which the caller owns; s is only
 * read.
 */
const char *ingest_show(char *dst, size_t dstsize, const char *s, size_t len, size_t max);

/* ------------------------------------------------------------------ */
/* base64.c */

/*
 * The decoded size of base64 text s[0..len) with '=' padding, or
 * (size_t)-1 when len is not a multiple of 4. Looks at the last two
 * characters only; ingest_base64_decode() checks the others.
 */
size_t ingest_base64_decoded_size(const char *s, size_t len);

/* ------------------------------------------------------------------ */
/* batch_hash.c */

/*
 * Compute b->hash over b's content (see struct ingest_batch): var_kind,
 * n_layers, then per layer in the order of b->layers (name order) name,
 * count, channels, whether an EMA was sent and the doubles. b stays the
 * caller's; only b->hash is written. Changing what this computes changes
 * stored hashes, which the store compares with those of retried uploads.
 */
void ingest_batch_hash(struct ingest_batch *b);

/* ------------------------------------------------------------------ */
/* the decoders one way at a time, for the tests */

/* What ingest_decode_json_jscan() returns for a body it leaves to jansson. */
#define INGEST_NOT_HANDLED 1

/*
 * ingest_decode_json() by the fast scanner alone: the same results,
 * except INGEST_NOT_HANDLED (with *out NULL and *err untouched) for a
 * body that it does not handle, for which ingest_decode_json() would run
 * the jansson path. A run name that is not valid is still an error.
 */
int ingest_decode_json_jscan(const char *run, const char *body, size_t len,
			     const struct ingest_limits *limits, struct ingest_batch **out,
			     struct bn_error *err);

/*
 * ingest_decode_json() by the jansson path alone: how every body was
 * decoded before the fast path, and still how those it gives up on are.
 */
int ingest_decode_json_jansson(const char *run, const char *body, size_t len,
			       const struct ingest_limits *limits, struct ingest_batch **out,
			       struct bn_error *err);

/*
 * The same two ways for ingest_decode_safetensors()'s header: the fast
 * scanner alone (INGEST_NOT_HANDLED, with *out NULL and *err untouched,
 * for a header it leaves to jansson), and jansson alone. The checks
 * before the header (run name, header length) are errors for both.
 */
int ingest_decode_safetensors_jscan(const char *run, const uint8_t *body, size_t len,
				    const struct ingest_limits *limits, struct ingest_batch **out,
				    struct bn_error *err);

int ingest_decode_safetensors_jansson(const char *run, const uint8_t *body, size_t len,
				      const struct ingest_limits *limits, struct ingest_batch **out,
				      struct bn_error *err);

#endif
