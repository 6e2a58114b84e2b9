/*
 * fuzz_safetensors: the binary upload (ingest_decode_safetensors(),
 * src/ingest_safetensors.c and src/ingest_safetensors_scan.c). The input
 * is the body. As fuzz_json: under the default and small limits, the
 * public decoder, the fast header scanner alone and jansson alone accept
 * a batch that obeys docs/API.md's rules or refuse with an error and no
 * batch, and agree; an accepted batch written again as JSON and as
 * safetensors decodes to the same batch.
 */
#include "fuzz_common.h"

#include "ingest_private.h"

static int decode(const char *run, const void *body, size_t len, const struct ingest_limits *lim,
		  struct ingest_batch **out, struct bn_error *err)
{
	return ingest_decode_safetensors(run, (const uint8_t *)body, len, lim, out, err);
}

static int fast(const char *run, const void *body, size_t len, const struct ingest_limits *lim,
		struct ingest_batch **out, struct bn_error *err)
{
	return ingest_decode_safetensors_jscan(run, (const uint8_t *)body, len, lim, out, err);
}

static int slow(const char *run, const void *body, size_t len, const struct ingest_limits *lim,
		struct ingest_batch **out, struct bn_error *err)
{
	return ingest_decode_safetensors_jansson(run, (const uint8_t *)body, len, lim, out, err);
}

static const struct fuzz_decoders decoders = { "ingest_decode_safetensors", decode, fast, slow };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_check_decoders(&decoders, data, size);
	return 0;
}
