/*
 * fuzz_common: what the fuzz targets of tests/fuzz/ share: the failure
 * macro (an abort, so that libFuzzer, or the corpus replay in make check,
 * stops at the input and reports it), the invariants of a decoded batch
 * and of a refusal, the comparison of two decoders' results, and a file
 * that holds one input for the readers that take a path (config, token
 * file). docs/TESTING.md, "Fuzzing", says what each target checks.
 */
#ifndef BNSTAT_FUZZ_COMMON_H
#define BNSTAT_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bnstat/batch.h"
#include "bnstat/error.h"
#include "bnstat/ingest.h"

/* libFuzzer's entry point, which every target defines. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Print the message, then abort(): the invariant does not hold. */
__attribute__((noreturn, format(printf, 3, 4))) void fuzz_fail(const char *file, int line,
							       const char *fmt, ...);

#define FUZZ_ASSERT(cond, ...)                                        \
	do {                                                          \
		if (!(cond))                                          \
			fuzz_fail(__FILE__, __LINE__, "" __VA_ARGS__); \
	} while (0)

/*
 * A batch that a decoder accepted for run `run` under limits lim obeys
 * docs/API.md, "Upload": valid names, step and seq >= 0, 1..max_layers
 * layers in strict name order, 0 <= count <= 2^53, no count 1 with an
 * unbiased variance, 1..max_channels channels for a counted layer, every
 * value finite, every variance >= 0, EMAs both or neither, and the hash
 * the one ingest_batch_hash() computes.
 */
void fuzz_check_batch(const struct ingest_batch *b, const char *run,
		      const struct ingest_limits *lim);

/*
 * A refusal: rc negative, no batch, and an error a client can read
 * (a 400 or 422 with a known code, a message; or a 500 for memory).
 */
void fuzz_check_refused(int rc, const struct ingest_batch *b, const struct bn_error *err);

/*
 * Two results of decoding the same body (rc, batch, error) are the same:
 * both accepted with equal batches (identity, hash, layers and their
 * values bit for bit; and their upload order when order is true), or both
 * refused with the same status, code, path, message and non-finite
 * details. what names the pair.
 */
void fuzz_check_same(const char *what, bool order, int r1, const struct ingest_batch *b1,
		     const struct bn_error *e1, int r2, const struct ingest_batch *b2,
		     const struct bn_error *e2);

/*
 * The accepted batch b written again in the other forms of docs/API.md,
 * "Upload": a JSON body with numbers (%.17g, which reads back exactly),
 * and a safetensors body with F64 values and I64 counts. *len is the
 * size; the body is the caller's to free().
 */
char *fuzz_batch_json(const struct ingest_batch *b, size_t *len);
uint8_t *fuzz_batch_safetensors(const struct ingest_batch *b, size_t *len);

/*
 * b, accepted, decodes to the same batch (but for the upload order) from
 * each of the two bodies above.
 */
void fuzz_check_reencoded(const struct ingest_batch *b, const struct ingest_limits *lim);

/*
 * A path naming a file that holds exactly data[0..size), rewritten at
 * every call (one memory file for the life of the process).
 */
const char *fuzz_file(const uint8_t *data, size_t size);

/*
 * The three decoders of one upload form (the public one, its fast path
 * alone, jansson alone), called as decode(run, body, len, lim, &batch, &err).
 */
struct fuzz_decoders {
	const char *name; /* the public decoder's, for messages */
	int (*decode)(const char *run, const void *body, size_t len,
		      const struct ingest_limits *lim, struct ingest_batch **out,
		      struct bn_error *err);
	int (*fast)(const char *run, const void *body, size_t len, const struct ingest_limits *lim,
		    struct ingest_batch **out, struct bn_error *err);
	int (*slow)(const char *run, const void *body, size_t len, const struct ingest_limits *lim,
		    struct ingest_batch **out, struct bn_error *err);
};

/*
 * The body (a copy of exactly size bytes, so that a read past it is
 * caught) through the three decoders, under the default limits and under
 * small ones (3 layers, 8 channels): an accepted batch obeys
 * fuzz_check_batch() and survives fuzz_check_reencoded(), a refusal
 * fuzz_check_refused(); the public decoder and the fast path (unless it
 * leaves the body to jansson, with no result) agree with jansson.
 */
void fuzz_check_decoders(const struct fuzz_decoders *d, const uint8_t *data, size_t size);

#endif
