/*
 * fuzz_base64: ingest_base64_decode() (src/base64.c) against a reference
 * decoder written here, the plain way (one character at a time, RFC 4648
 * section 4 with the strictness docs/API.md, "Upload", asks for: standard
 * alphabet, '=' padding in the last quantum only, no whitespace, unused
 * bits zero). For any input text: both accept or both refuse; accepted,
 * they give the same bytes, as many as ingest_base64_decoded_size() said,
 * written into a buffer of exactly that size; and those bytes encode back
 * to the very text (one accepted encoding per byte string). Then the input
 * taken as bytes is encoded and must decode back to itself.
 */
#include "fuzz_common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ingest_private.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int value_of(unsigned char c)
{
	const char *p = c != '\0' ? strchr(alphabet, c) : NULL;

	return p != NULL ? (int)(p - alphabet) : -1;
}

/* The reference: the decoded length, or -1. dst has room for len / 4 * 3 bytes. */
static long ref_decode(const unsigned char *s, size_t len, uint8_t *dst)
{
	size_t pad = 0, out = 0;
	uint32_t acc = 0;

	if (len % 4 != 0)
		return -1;
	if (len >= 1 && s[len - 1] == '=')
		pad++;
	if (len >= 2 && s[len - 2] == '=')
		pad++;
	if (pad == 1 && len >= 2 && s[len - 2] == '=')
		return -1;
	for (size_t i = 0; i < len - pad; i++) {
		int v = value_of(s[i]);

		if (v < 0)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		if (i % 4 == 3) {
			dst[out++] = (uint8_t)(acc >> 16);
			dst[out++] = (uint8_t)(acc >> 8);
			dst[out++] = (uint8_t)acc;
			acc = 0;
		}
	}
	if (pad == 2) { /* 2 characters: 12 bits, 8 used */
		if (acc & 0x0F)
			return -1;
		dst[out++] = (uint8_t)(acc >> 4);
	} else if (pad == 1) { /* 3 characters: 18 bits, 16 used */
		if (acc & 0x03)
			return -1;
		dst[out++] = (uint8_t)(acc >> 10);
		dst[out++] = (uint8_t)(acc >> 2);
	}
	return (long)out;
}

/* Standard base64 of b[0..n) into a new NUL-terminated string. */
static char *encode(const uint8_t *b, size_t n, size_t *len)
{
	char *s = malloc(n / 3 * 4 + 5);
	size_t o = 0;

	FUZZ_ASSERT(s != NULL, "out of memory");
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)b[i] << 16;

		if (i + 1 < n)
			v |= (uint32_t)b[i + 1] << 8;
		if (i + 2 < n)
			v |= b[i + 2];
		s[o++] = alphabet[v >> 18 & 63];
		s[o++] = alphabet[v >> 12 & 63];
		s[o++] = i + 1 < n ? alphabet[v >> 6 & 63] : '=';
		s[o++] = i + 2 < n ? alphabet[v & 63] : '=';
	}
	s[o] = '\0';
	*len = o;
	return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size ? size : 1), *again;
	uint8_t *ref = malloc(size / 4 * 3 + 1), *dst = NULL;
	size_t want = 0, elen;
	long r, rr;

	FUZZ_ASSERT(text != NULL && ref != NULL, "out of memory");
	if (size > 0)
		memcpy(text, data, size);
	rr = ref_decode(data, size, ref);
	if (size % 4 == 0) {
		want = ingest_base64_decoded_size(text, size);
		FUZZ_ASSERT(want <= size / 4 * 3, "decoded size %zu for %zu characters", want, size);
	} else {
		FUZZ_ASSERT(ingest_base64_decoded_size(text, size) == (size_t)-1,
			    "a decoded size for %zu characters", size);
	}
	dst = malloc(want ? want : 1); /* exactly the decoded size */
	FUZZ_ASSERT(dst != NULL, "out of memory");
	r = ingest_base64_decode(text, size, dst);
	FUZZ_ASSERT((r >= 0) == (rr >= 0), "decoder %ld, reference %ld", r, rr);
	if (r < 0) {
		FUZZ_ASSERT(r == -EINVAL, "decoder %ld", r);
	} else {
		FUZZ_ASSERT((size_t)r == want && r == rr, "decoded %ld bytes, size %zu, reference %ld",
			    r, want, rr);
		FUZZ_ASSERT(memcmp(dst, ref, (size_t)r) == 0, "the bytes differ from the reference");
		again = encode(dst, (size_t)r, &elen);
		FUZZ_ASSERT(elen == size && memcmp(again, text, size) == 0,
			    "an accepted text that is not the encoding of its bytes");
		free(again);
	}
	free(dst);

	/* any bytes: encoded, then decoded back */
	again = encode(data, size, &elen);
	dst = malloc(size ? size : 1);
	FUZZ_ASSERT(dst != NULL, "out of memory");
	FUZZ_ASSERT(ingest_base64_decoded_size(again, elen) == size, "decoded size of an encoding");
	r = ingest_base64_decode(again, elen, dst);
	FUZZ_ASSERT(r == (long)size && memcmp(dst, data, size) == 0,
		    "%zu bytes encoded decode to %ld bytes, or others", size, r);
	free(again);
	free(dst);
	free(text);
	free(ref);
	return 0;
}
