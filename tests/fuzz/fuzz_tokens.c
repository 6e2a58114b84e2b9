/*
 * fuzz_tokens: the token file reader (auth_load(), src/auth.c). The input
 * is the file. A reference reader written here from docs/OPERATIONS.md,
 * "Authentication" (one "TOKEN ROLE[,ROLE]" per line split on spaces,
 * tabs and CRs, '#' comments, a trailing '#' comment after the roles,
 * tokens of 16 to 256 characters, roles ingest, read and admin, at least
 * one token, no NUL byte) says whether the file is accepted and, if not,
 * at which line. Accepted: auth_count() is the number of token lines,
 * every token has exactly the union of its lines' roles (admin implying
 * the others), and no other word of the file, nor any piece of a token,
 * is a token. Refused: a 400 at "token-file" naming that line, no table,
 * and no token echoed.
 */
#include "fuzz_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"

struct ref {
	char **tok;
	unsigned *roles;
	size_t n;
	unsigned bad_line; /* 0: accepted (when n > 0) */
};

/* A line holds no '\n', so that splitting on it too serves the whole file as well. */
static bool is_sep(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The words of s[0..len), as new strings (at most max). */
static size_t words(const char *s, size_t len, char **w, size_t max)
{
	size_t n = 0, i = 0;

	while (i < len && n < max) {
		size_t j;

		while (i < len && is_sep(s[i]))
			i++;
		if (i == len)
			break;
		for (j = i; j < len && !is_sep(s[j]); j++)
			;
		w[n] = strndup(s + i, j - i);
		FUZZ_ASSERT(w[n] != NULL, "out of memory");
		n++;
		i = j;
	}
	return n;
}

/* ROLE[,ROLE...] (empty items skipped) into bits; 0 when invalid or empty. */
static unsigned ref_roles(const char *s)
{
	unsigned r = 0;
	const char *p = s;

	while (*p) {
		size_t n = strcspn(p, ",");

		if (n == 6 && strncmp(p, "ingest", 6) == 0)
			r |= AUTH_INGEST;
		else if (n == 4 && strncmp(p, "read", 4) == 0)
			r |= AUTH_READ;
		else if (n == 5 && strncmp(p, "admin", 5) == 0)
			r |= AUTH_ADMIN | AUTH_INGEST | AUTH_READ;
		else if (n != 0)
			return 0;
		p += n;
		if (*p == ',')
			p++;
	}
	return r;
}

static void ref_read(const uint8_t *data, size_t size, struct ref *r)
{
	const char *s = (const char *)data;
	size_t at = 0;
	unsigned line = 0;

	memset(r, 0, sizeof(*r));
	r->tok = calloc(size / 2 + 1, sizeof(*r->tok));
	r->roles = calloc(size / 2 + 1, sizeof(*r->roles));
	FUZZ_ASSERT(r->tok != NULL && r->roles != NULL, "out of memory");
	while (at < size) {
		const char *nl = memchr(s + at, '\n', size - at);
		size_t len = nl ? (size_t)(nl - (s + at)) : size - at;
		char *w[3] = { NULL, NULL, NULL };
		size_t nw, tl;
		unsigned roles;

		line++;
		if (memchr(s + at, '\0', len) != NULL) {
			r->bad_line = line;
			return;
		}
		nw = words(s + at, len, w, 3);
		at += len + (nl != NULL);
		if (nw == 0 || w[0][0] == '#') {
			for (size_t i = 0; i < nw; i++)
				free(w[i]);
			continue;
		}
		tl = strlen(w[0]);
		roles = nw >= 2 ? ref_roles(w[1]) : 0;
		if (nw < 2 || (nw == 3 && w[2][0] != '#') || tl < AUTH_TOKEN_MIN ||
		    tl > AUTH_TOKEN_MAX || roles == 0) {
			r->bad_line = line;
			for (size_t i = 0; i < nw; i++)
				free(w[i]);
			return;
		}
		r->tok[r->n] = w[0];
		r->roles[r->n] = roles;
		r->n++;
		free(w[1]);
		free(w[2]);
	}
}

static void ref_free(struct ref *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->tok[i]);
	free(r->tok);
	free(r->roles);
}

/* The roles of t in the reference: the union over its lines. */
static unsigned ref_lookup(const struct ref *r, const char *t)
{
	unsigned roles = 0;

	for (size_t i = 0; i < r->n; i++)
		if (strcmp(r->tok[i], t) == 0)
			roles |= r->roles[i];
	return roles;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = fuzz_file(data, size);
	struct auth *a = (struct auth *)&a; /* must be set to NULL on a refusal */
	struct bn_error err;
	struct ref r;
	int rc;

	ref_read(data, size, &r);
	bn_error_clear(&err);
	rc = auth_load(path, &a, &err);
	if (r.bad_line == 0 && r.n > 0) {
		char *w[64];
		size_t nw;

		FUZZ_ASSERT(rc == 0, "refused: %s", err.message);
		FUZZ_ASSERT(auth_count(a) == r.n, "%u tokens, expected %zu", auth_count(a), r.n);
		for (size_t i = 0; i < r.n; i++) {
			unsigned want = ref_lookup(&r, r.tok[i]);
			char *piece = strndup(r.tok[i], strlen(r.tok[i]) - 1);

			FUZZ_ASSERT(piece != NULL, "out of memory");
			FUZZ_ASSERT(auth_roles(a, r.tok[i]) == want, "token %zu: roles %u, expected %u",
				    i, auth_roles(a, r.tok[i]), want);
			/* a piece of a token is no token, unless it is one itself */
			FUZZ_ASSERT(auth_roles(a, piece) == ref_lookup(&r, piece),
				    "a token without its last character is accepted");
			free(piece);
		}
		/* every other word of the file is no token */
		nw = words((const char *)data, size, w, 64);
		for (size_t i = 0; i < nw; i++) {
			FUZZ_ASSERT(auth_roles(a, w[i]) == ref_lookup(&r, w[i]),
				    "word %zu is a token it should not be", i);
			free(w[i]);
		}
		auth_free(a);
	} else {
		char where[96];

		FUZZ_ASSERT(rc == -EINVAL && a == NULL, "accepted (rc %d), expected a refusal", rc);
		FUZZ_ASSERT(err.status == 400 && strcmp(err.code, BN_E_INVALID) == 0 &&
				    strcmp(err.path, "token-file") == 0,
			    "%d %s '%s'", err.status, err.code, err.path);
		if (r.bad_line > 0) {
			snprintf(where, sizeof(where), "%s:%u: ", path, r.bad_line);
			FUZZ_ASSERT(strstr(err.message, where) != NULL, "\"%s\" does not name %s",
				    err.message, where);
		}
		for (size_t i = 0; i < r.n; i++)
			FUZZ_ASSERT(strstr(err.message + strlen(path), r.tok[i]) == NULL,
				    "the message echoes a token");
	}
	ref_free(&r);
	return 0;
}
