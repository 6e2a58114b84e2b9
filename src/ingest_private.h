/*
 * ingest, for its tests only: the two ways ingest_decode_json() has of
 * reading a JSON body, one at a time.
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

/* What ingest_decode_json_fast() returns for a body it leaves to jansson. */
#define INGEST_NOT_HANDLED 1

/*
 * ingest_decode_json() by the fast scanner alone: the same results,
 * except INGEST_NOT_HANDLED (with *out NULL and *err untouched) for a
 * body that it does not handle, for which ingest_decode_json() would run
 * the jansson path. A run name that is not valid is still an error.
 */
int ingest_decode_json_fast(const char *run, const char *body, size_t len,
			    const struct ingest_limits *limits,
			    struct ingest_batch **out, struct bn_error *err);

/*
 * ingest_decode_json() by the jansson path alone: how every body was
 * decoded before the fast path, and still how those it gives up on are.
 */
int ingest_decode_json_slow(const char *run, const char *body, size_t len,
			    const struct ingest_limits *limits,
			    struct ingest_batch **out, struct bn_error *err);

#endif
