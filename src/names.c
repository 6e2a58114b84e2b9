/*
 * ingest: names. What a run, worker, domain or layer name may be
 * (docs/API.md, "Names"), and how a client-supplied name or key is shown
 * back in an error path or message without breaking the JSON reply or the
 * log line it ends up in.
 */
#include "bnstat/ingest.h"
#include "ingest_private.h"

#include <string.h>

static bool name_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-';
}

/*
 * s[0..len) is 1..max characters of [A-Za-z0-9._-], not all dots: ".",
 * ".." and "..." are path segments that URL normalisation removes, so a
 * run of that name could not be reached by every client.
 */
bool ingest_name_valid_n(const char *s, size_t len, size_t max)
{
	bool all_dots = true;
	size_t i;

	if (len == 0 || len > max)
		return false;
	for (i = 0; i < len; i++) {
		if (!name_char((unsigned char)s[i]))
			return false;
		if (s[i] != '.')
			all_dots = false;
	}
	return !all_dots;
}

/* Length of s, but stop counting past max (s may be very long). */
size_t ingest_name_len(const char *s, size_t max)
{
	size_t n = 0;

	while (n <= max && s[n] != '\0')
		n++;
	return n;
}

bool ingest_name_valid(const char *s)
{
	return s != NULL &&
	       ingest_name_valid_n(s, ingest_name_len(s, INGEST_NAME_MAX), INGEST_NAME_MAX);
}

bool ingest_layer_name_valid(const char *s)
{
	return s != NULL && ingest_name_valid_n(s, ingest_name_len(s, INGEST_LAYER_NAME_MAX),
						INGEST_LAYER_NAME_MAX);
}

/*
 * Copy s[0..len) into dst (of dstsize >= 8 bytes) for an error path or
 * message: at most max bytes, '...' when cut, and any byte outside
 * printable ASCII replaced by '?'. Cutting UTF-8 in the middle of a
 * character would make the reply unencodable as JSON, and control
 * characters would break log lines.
 */
const char *ingest_show(char *dst, size_t dstsize, const char *s, size_t len, size_t max)
{
	size_t i, n = len;
	bool cut = false;

	if (n > max) {
		n = max;
		cut = true;
	}
	if (n > dstsize - 4) {
		n = dstsize - 4;
		cut = true;
	}
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		dst[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	if (cut) {
		memcpy(dst + n, "...", 3);
		n += 3;
	}
	dst[n] = '\0';
	return dst;
}

/* strcmp() order of a[0..alen) and b[0..blen), which hold no NUL. */
int ingest_name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);

	if (c != 0)
		return c;
	return (alen > blen) - (alen < blen);
}
