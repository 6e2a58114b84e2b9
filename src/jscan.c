/*
 * jscan: the fast JSON scanner's primitives that are not inline (see
 * jscan.h): strings, checked 8 bytes at a time, and numbers.
 *
 * Numbers convert as jansson converts them: an integer token (no '.',
 * 'e' or 'E') through int64 then to double, any other through strtod() on
 * the token's exact text. jansson swaps '.' for the locale's decimal point
 * first; bnstatd never calls setlocale(), so it runs in the "C" locale and
 * plain strtod() reads the same text the same way.
 */
#include "jscan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Longest real number token converted in place; longer ones give up. */
#define JSCAN_NUMBER_MAX 64

/*
 * Whether s[0..n) is all printable ASCII (0x20..0x7e) but for the
 * backslash. Base64 strings make most of a body, so this looks at 8
 * bytes at a time: the classic bit tricks flag, in the high bit of a
 * byte, one below 0x20, one above 0x7e and one equal to '\\'. Each may
 * also flag bytes after a flagged one (through carries), but never when
 * no byte is bad, which is all that is asked.
 */
static bool jscan_plain(const unsigned char *s, size_t n)
{
	const uint64_t ones = 0x0101010101010101ULL, high = ones * 0x80;
	uint64_t bad = 0, w, x;
	size_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		memcpy(&w, s + i, 8);
		x = w ^ ones * '\\';
		bad |= ((w - ones * 0x20) & ~w) | (w + ones) | w | ((x - ones) & ~x);
	}
	for (; i < n; i++)
		bad |= (uint64_t)(s[i] < 0x20 || s[i] > 0x7e || s[i] == '\\') << 7;
	return (bad & high) == 0;
}

/*
 * After whitespace, a string without escapes into *str, *len (pointing
 * into the body).
 */
bool jscan_string(struct jscan *s, const char **str, size_t *len)
{
	const char *q;

	if (!jscan_char(s, '"'))
		return false;
	q = memchr(s->p, '"', (size_t)(s->end - s->p));
	if (q == NULL || !jscan_plain((const unsigned char *)s->p, (size_t)(q - s->p)))
		return false;
	*str = s->p;
	*len = (size_t)(q - s->p);
	s->p = q + 1;
	return true;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/*
 * After whitespace, a JSON number token
 * -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, as jansson would read
 * it: an integer token (no fraction, no exponent) that fits int64 sets
 * *is_int and *i; another token sets *d from strtod(). An integer out of
 * range, or a real that overflows, is a syntax error to jansson: give up.
 */
bool jscan_number(struct jscan *s, bool *is_int, int64_t *i, double *d)
{
	const char *t, *p;
	char text[JSCAN_NUMBER_MAX + 1];
	uint64_t u = 0, lim;
	bool neg;

	jscan_ws(s);
	t = p = s->p;
	neg = p < s->end && *p == '-';
	if (neg)
		p++;
	if (p == s->end || !is_digit(*p))
		return false;
	if (*p == '0') {
		p++;
	} else {
		lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
		for (; p < s->end && is_digit(*p); p++) {
			unsigned dig = (unsigned)(*p - '0');

			if (u > (lim - dig) / 10)
				u = lim + 1; /* out of range; keeps scanning */
			else
				u = u * 10 + dig;
		}
	}
	*is_int = p == s->end || (*p != '.' && *p != 'e' && *p != 'E');
	if (*is_int) {
		if (u > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
			return false;
		if (!neg)
			*i = (int64_t)u;
		else if (u == 0)
			*i = 0;
		else /* -2^63 has no positive int64: -(u - 1) - 1 */
			*i = -(int64_t)(u - 1) - 1;
		s->p = p;
		return true;
	}
	if (*p == '.') {
		p++;
		if (p == s->end || !is_digit(*p))
			return false;
		while (p < s->end && is_digit(*p))
			p++;
	}
	if (p < s->end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < s->end && (*p == '+' || *p == '-'))
			p++;
		if (p == s->end || !is_digit(*p))
			return false;
		while (p < s->end && is_digit(*p))
			p++;
	}
	if ((size_t)(p - t) > JSCAN_NUMBER_MAX)
		return false;
	memcpy(text, t, (size_t)(p - t));
	text[p - t] = '\0';
	/* "C" locale (see above); the syntax is checked, so strtod() reads
	 * the whole token */
	*d = strtod(text, NULL);
	if (isinf(*d))
		return false;
	s->p = p;
	return true;
}

/* After whitespace, an integer token (step, seq, count). */
bool jscan_int(struct jscan *s, int64_t *out)
{
	bool is_int;
	double d;

	return jscan_number(s, &is_int, out, &d) && is_int;
}
