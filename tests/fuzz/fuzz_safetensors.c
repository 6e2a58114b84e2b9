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

#include <stdlib.h>
#include <string.h>

#include "ingest_private.h"

static void one(const uint8_t *body, size_t len, const struct ingest_limits *lim)
{
	struct ingest_batch *b = NULL, *bf = NULL, *bj = NULL;
	struct bn_error e, ef, ej;
	int r, rf, rj;

	bn_error_clear(&e);
	bn_error_clear(&ef);
	bn_error_clear(&ej);
	r = ingest_decode_safetensors("r1", body, len, lim, &b, &e);
	rf = ingest_decode_safetensors_jscan("r1", body, len, lim, &bf, &ef);
	rj = ingest_decode_safetensors_jansson("r1", body, len, lim, &bj, &ej);
	if (r == 0) {
		fuzz_check_batch(b, "r1", lim);
		fuzz_check_reencoded(b, lim);
	} else {
		fuzz_check_refused(r, b, &e);
	}
	fuzz_check_same("ingest_decode_safetensors vs jansson", true, r, b, &e, rj, bj, &ej);
	if (rf == INGEST_NOT_HANDLED)
		FUZZ_ASSERT(bf == NULL && ef.status == 0 && ef.message[0] == '\0',
			    "the fast scanner gave up, leaving a result");
	else
		fuzz_check_same("fast scanner vs jansson", true, rf, bf, &ef, rj, bj, &ej);
	ingest_batch_free(b);
	ingest_batch_free(bf);
	ingest_batch_free(bj);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct ingest_limits small = { 3, 8 };
	uint8_t *body = malloc(size ? size : 1);

	FUZZ_ASSERT(body != NULL, "out of memory");
	if (size > 0)
		memcpy(body, data, size);
	one(body, size, NULL);
	one(body, size, &small);
	free(body);
	return 0;
}
