/*
 * jscan: the primitives of a fast, strict JSON scanner, shared by the JSON
 * form's fast path and the safetensors header's (src/ingest_json.c,
 * src/ingest_safetensors_scan.c). Each reads one token in place at the
 * cursor and returns false, the cursor then anywhere, on anything it does
 * not expect: the caller then gives the whole document to jansson, which
 * reports it. Strings with escapes, control characters or bytes outside
 * printable ASCII are among what they give up on, so a string they accept
 * is its own text in the document.
 *
 * The small ones are inline: they run for every token.
 */
#ifndef BNSTAT_JSCAN_H
#define BNSTAT_JSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The cursor p in the document [.., end); the document is borrowed. */
struct jscan {
	const char *p, *end;
};

/*
 * After whitespace, a string without escapes into *str, *len, which point
 * into the document (not NUL-terminated).
 */
bool jscan_string(struct jscan *s, const char **str, size_t *len);

/*
 * After whitespace, a JSON number token
 * -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, as jansson reads it: an
 * integer token (no fraction, no exponent) that fits int64 sets *is_int
 * and *i; another token sets *d from strtod(). False for an integer out of
 * range, a real that overflows (both syntax errors to jansson) or a real
 * token longer than jscan.c's JSCAN_NUMBER_MAX.
 */
bool jscan_number(struct jscan *s, bool *is_int, int64_t *i, double *d);

/* After whitespace, an integer token into *out (step, seq, count, offsets). */
bool jscan_int(struct jscan *s, int64_t *out);

/* The cursor past JSON whitespace. */
static inline void jscan_ws(struct jscan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
		s->p++;
}

/* After whitespace, the character c; the cursor moves past it. */
static inline bool jscan_char(struct jscan *s, char c)
{
	jscan_ws(s);
	if (s->p == s->end || *s->p != c)
		return false;
	s->p++;
	return true;
}

/*
 * After whitespace, the character ',' (true, *more set) or `close`
 * (true, *more cleared).
 */
static inline bool jscan_next(struct jscan *s, char close, bool *more)
{
	jscan_ws(s);
	if (s->p == s->end || (*s->p != ',' && *s->p != close))
		return false;
	*more = *s->p++ == ',';
	return true;
}

/*
 * The end of one member of an object whose known keys each have a bit:
 * false for a key seen before (the scanners leave duplicates to jansson),
 * else the bit is recorded and the ',' or '}' after the value is read.
 */
static inline bool jscan_member_end(struct jscan *s, unsigned *seen, unsigned bit, bool *more)
{
	if (*seen & bit)
		return false;
	*seen |= bit;
	return jscan_next(s, '}', more);
}

/* A key and its ':'. */
static inline bool jscan_key(struct jscan *s, const char **key, size_t *len)
{
	return jscan_string(s, key, len) && jscan_char(s, ':');
}

/* key[0..len) is the NUL-terminated word. */
static inline bool jscan_key_is(const char *key, size_t len, const char *word)
{
	return strlen(word) == len && memcmp(key, word, len) == 0;
}

#endif
