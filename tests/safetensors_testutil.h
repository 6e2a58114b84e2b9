/*
 * The safetensors side of the ingest tests: the one writer of safetensors
 * bodies (struct stw for valid ones, st_body() for a header given as
 * text), and st_decode(), through which every safetensors body of the
 * tests is decoded, both header parsers compared on the way.
 *
 * Bodies returned are the caller's to free(); batches to
 * ingest_batch_free().
 */
#ifndef BNSTAT_SAFETENSORS_TESTUTIL_H
#define BNSTAT_SAFETENSORS_TESTUTIL_H

#include "ingest_testutil.h"

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

void stw_tensor(struct stw *w, const char *name, const char *dtype, const char *shape,
		const void *bytes, size_t n);

/* x[0..n) as an F32 or F64 tensor of shape [n]. */
void stw_values(struct stw *w, const char *name, const double *x, size_t n, enum enc e);

/* An I64 count, of shape [] or [1]. */
void stw_count(struct stw *w, const char *name, int64_t count, bool scalar);

/*
 * The body: header length, "{<meta>, <entries>}" (meta NULL: none), pad
 * spaces after the JSON (as safetensors' own writer aligns the data),
 * data. Frees what w holds; the body is the caller's to free().
 */
unsigned char *stw_finish(struct stw *w, const char *meta, size_t pad, size_t *len);

/*
 * The one assembler of safetensors bodies: the 8-byte little-endian
 * length hlen, header[0..hlen), data[0..dlen) (data may be NULL when dlen
 * is 0). The body, of *len bytes, is the caller's to free().
 */
unsigned char *st_body_n(const char *header, size_t hlen, const void *data, size_t dlen,
			 size_t *len);

/* st_body_n() of the NUL-terminated header text. */
unsigned char *st_body(const char *header, const void *data, size_t dlen, size_t *len);

/* The required metadata, and the metadata member of a header. */
#define ST_WSS "\"worker\": \"w\", \"step\": \"1\", \"seq\": \"0\""

#define ST_META "\"__metadata__\": {" ST_WSS "}"

/* How often st_decode() saw each outcome of the safetensors fast path. */
extern size_t st_outcomes[3];

/* What the safetensors fast path did with the last body st_decode() saw. */
extern enum fast_outcome st_last_outcome;

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
int st_decode(const unsigned char *body, size_t len, const struct ingest_limits *lim,
	      struct ingest_batch **b, struct bn_error *err);

struct ingest_batch *st_ok(const unsigned char *body, size_t len, const struct ingest_limits *lim);

/* Refused with status, code and path, and a printable message. */
void st_expect(const unsigned char *body, size_t len, const struct ingest_limits *lim, int status,
	       const char *code, const char *path, const char *what);

/* The hbatch of the hash tests as safetensors. */
unsigned char *hbatch_st(const struct hbatch *h, const enum enc enc[6], bool reverse, bool scalar,
			 size_t *len);

#endif
