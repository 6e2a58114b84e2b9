/*
 * ingest, for its tests only: the two ways ingest_decode_json() has of
 * reading a JSON body, and ingest_decode_safetensors() of reading a
 * safetensors header, one at a time.
 *
 * ingest_decode_json() first tries a fast, strict scanner specialised to
 * the upload's schema, and runs jansson (json_loadb) from scratch on any
 * body the scanner leaves alone; both feed the same checks and builder.
 * The tests compare the two on valid, invalid and mutated bodies, and
 * check that the fast path does handle ordinary uploads. bnstatd itself
 * calls only ingest_decode_json().
 */
#ifndef BNSTAT_INGEST_PRIVATE_H
#define BNSTAT_INGEST_PRIVATE_H

#include "bnstat/ingest.h"

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
