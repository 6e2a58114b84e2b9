/*
 * fuzz_json: the JSON upload (ingest_decode_json(), src/ingest_json.c and
 * its fast scanner src/jscan.c). The input is the body. Under the default
 * limits and under small ones (3 layers, 8 channels), each of the three
 * ways to decode it (the public decoder, the fast scanner alone, jansson
 * alone) either accepts a batch that obeys docs/API.md's rules
 * (fuzz_check_batch()) or refuses with an error and no batch; the three
 * agree, to the message; and an accepted batch written again as JSON
 * numbers and as safetensors decodes to the same batch.
 */
#include "fuzz_common.h"

#include "ingest_private.h"

static int decode(const char *run, const void *body, size_t len, const struct ingest_limits *lim,
		  struct ingest_batch **out, struct bn_error *err)
{
	return ingest_decode_json(run, (const char *)body, len, lim, out, err);
}

static int fast(const char *run, const void *body, size_t len, const struct ingest_limits *lim,
		struct ingest_batch **out, struct bn_error *err)
{
	return ingest_decode_json_jscan(run, (const char *)body, len, lim, out, err);
}

static int slow(const char *run, const void *body, size_t len, const struct ingest_limits *lim,
		struct ingest_batch **out, struct bn_error *err)
{
	return ingest_decode_json_jansson(run, (const char *)body, len, lim, out, err);
}

static const struct fuzz_decoders decoders = { "ingest_decode_json", decode, fast, slow };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_check_decoders(&decoders, data, size);
	return 0;
}
