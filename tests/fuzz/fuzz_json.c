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

#include <stdlib.h>
#include <string.h>

#include "ingest_private.h"

static void one(const char *body, size_t len, const struct ingest_limits *lim)
{
	struct ingest_batch *b = NULL, *bf = NULL, *bj = NULL;
	struct bn_error e, ef, ej;
	int r, rf, rj;

	bn_error_clear(&e);
	bn_error_clear(&ef);
	bn_error_clear(&ej);
	r = ingest_decode_json("r1", body, len, lim, &b, &e);
	rf = ingest_decode_json_jscan("r1", body, len, lim, &bf, &ef);
	rj = ingest_decode_json_jansson("r1", body, len, lim, &bj, &ej);
	if (r == 0) {
		fuzz_check_batch(b, "r1", lim);
		fuzz_check_reencoded(b, lim);
	} else {
		fuzz_check_refused(r, b, &e);
	}
	fuzz_check_same("ingest_decode_json vs jansson", true, r, b, &e, rj, bj, &ej);
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
	/* a copy of exactly size bytes, so that a read past the body is caught */
	char *body = malloc(size ? size : 1);

	FUZZ_ASSERT(body != NULL, "out of memory");
	if (size > 0)
		memcpy(body, data, size);
	one(body, size, NULL);
	one(body, size, &small);
	free(body);
	return 0;
}
