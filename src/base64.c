/*
 * ingest: base64 (RFC 4648, standard alphabet, '=' padding), in which the
 * JSON form of an upload may send its value arrays as little-endian
 * f32/f64 (docs/API.md, "Upload"). Strict, so that each byte string has
 * exactly one accepted encoding, and fast, because a base64 upload is
 * mostly this text.
 */
#include "bnstat/ingest.h"
#include "ingest_private.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>

/*
 * Decoding table: the 6-bit value of each byte of the standard alphabet,
 * XX (0xFF) for everything else, '=' included: padding is handled apart,
 * in the last quantum only.
 */
#define XX 0xFF
static const uint8_t b64_table[256] = {
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, 62,
	XX, XX, XX, 63, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, XX, XX, XX, XX, XX, XX, XX, 0,
	1,  2,	3,  4,	5,  6,	7,  8,	9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
	23, 24, 25, XX, XX, XX, XX, XX, XX, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38,
	39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
};
#undef XX

/*
 * Decoded size of base64 text of length len with '=' padding, or
 * (size_t)-1 when len is not a multiple of 4. Does not look at the other
 * characters; ingest_base64_decode() does.
 */
size_t ingest_base64_decoded_size(const char *s, size_t len)
{
	size_t n;

	if (len % 4 != 0)
		return (size_t)-1;
	if (len == 0)
		return 0;
	n = len / 4 * 3;
	if (s[len - 1] == '=')
		n--;
	if (s[len - 2] == '=')
		n--;
	return n;
}

/*
 * The inner loop decodes a quantum per iteration without a branch:
 * invalid characters map to 0xFF, whose high bit is collected in `bad` and
 * looked at once at the end. Only the last quantum may hold padding, and
 * its unused bits must be zero (RFC 4648 section 3.5), so that each byte
 * string has exactly one accepted encoding.
 */
long ingest_base64_decode(const char *src, size_t len, uint8_t *dst)
{
	const unsigned char *s = (const unsigned char *)src;
	uint8_t *d = dst;
	unsigned bad = 0;
	uint32_t a, b, c, e, v;
	size_t i, body;

	if (len % 4 != 0 || len / 4 * 3 > (size_t)LONG_MAX)
		return -EINVAL;
	if (len == 0)
		return 0;
	body = len - 4;
	for (i = 0; i < body; i += 4) {
		a = b64_table[s[i]];
		b = b64_table[s[i + 1]];
		c = b64_table[s[i + 2]];
		e = b64_table[s[i + 3]];
		bad |= a | b | c | e;
		v = a << 18 | b << 12 | c << 6 | e;
		d[0] = (uint8_t)(v >> 16);
		d[1] = (uint8_t)(v >> 8);
		d[2] = (uint8_t)v;
		d += 3;
	}
	a = b64_table[s[body]];
	b = b64_table[s[body + 1]];
	bad |= a | b;
	if (s[body + 3] == '=') {
		if (s[body + 2] == '=') {
			/* xx== : one byte, low 4 bits of b unused */
			if (b & 0x0F)
				return -EINVAL;
			if (bad & 0x80)
				return -EINVAL;
			*d++ = (uint8_t)(a << 2 | b >> 4);
		} else {
			/* xxx= : two bytes, low 2 bits of c unused */
			c = b64_table[s[body + 2]];
			bad |= c;
			if ((bad & 0x80) || (c & 0x03))
				return -EINVAL;
			v = a << 18 | b << 12 | c << 6;
			d[0] = (uint8_t)(v >> 16);
			d[1] = (uint8_t)(v >> 8);
			d += 2;
		}
	} else {
		c = b64_table[s[body + 2]];
		e = b64_table[s[body + 3]];
		bad |= c | e;
		if (bad & 0x80)
			return -EINVAL;
		v = a << 18 | b << 12 | c << 6 | e;
		d[0] = (uint8_t)(v >> 16);
		d[1] = (uint8_t)(v >> 8);
		d[2] = (uint8_t)v;
		d += 3;
	}
	return (long)(d - dst);
}
