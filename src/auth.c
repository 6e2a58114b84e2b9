/*
 * auth: the token table and the access policy (see auth.h). Lookups take
 * a read lock; a reload builds the new table outside the lock and swaps
 * it in.
 */
#include "auth.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct token {
	char value[AUTH_TOKEN_MAX + 1];
	size_t len;
	unsigned roles;
};

struct table {
	struct token *tokens;
	unsigned n;
};

struct auth {
	pthread_rwlock_t lock;
	struct table t;
};

static int parse_roles(char *s, unsigned *roles)
{
	char *save = NULL, *r;

	*roles = 0;
	for (r = strtok_r(s, ",", &save); r != NULL; r = strtok_r(NULL, ",", &save)) {
		if (strcmp(r, "ingest") == 0)
			*roles |= AUTH_INGEST;
		else if (strcmp(r, "read") == 0)
			*roles |= AUTH_READ;
		else if (strcmp(r, "admin") == 0)
			*roles |= AUTH_ADMIN | AUTH_INGEST | AUTH_READ;
		else
			return -EINVAL;
	}
	return *roles ? 0 : -EINVAL;
}

static int read_table(const char *path, struct table *t, struct bn_error *err)
{
	FILE *f = fopen(path, "r");
	char *line = NULL; /* getline: a line of any length is read whole */
	size_t cap = 0;
	ssize_t n;
	unsigned lineno = 0;
	int rc = 0;

	t->tokens = NULL;
	t->n = 0;
	if (f == NULL)
		return bn_error_set(err, 400, BN_E_INVALID, "token-file",
				    "cannot open token file %s: %s", path, strerror(errno));
	while ((n = getline(&line, &cap, f)) != -1) {
		char *save = NULL, *tok, *roles, *extra;
		struct token *p;
		unsigned r;

		lineno++;
		/* a NUL would end the line early, and its tail would go unread */
		if (memchr(line, '\0', (size_t)n) != NULL) {
			rc = bn_error_set(err, 400, BN_E_INVALID, "token-file",
					  "%s:%u: a NUL byte: a token file is text", path, lineno);
			break;
		}
		tok = strtok_r(line, " \t\r\n", &save);
		if (tok == NULL || tok[0] == '#')
			continue;
		roles = strtok_r(NULL, " \t\r\n", &save);
		extra = strtok_r(NULL, " \t\r\n", &save);
		if (roles == NULL || (extra != NULL && extra[0] != '#')) {
			rc = bn_error_set(err, 400, BN_E_INVALID, "token-file",
					  "%s:%u: expected \"TOKEN ROLE[,ROLE]\"", path, lineno);
			break;
		}
		if (strlen(tok) < AUTH_TOKEN_MIN || strlen(tok) > AUTH_TOKEN_MAX) {
			rc = bn_error_set(err, 400, BN_E_INVALID, "token-file",
					  "%s:%u: a token must have %d to %d characters", path,
					  lineno, AUTH_TOKEN_MIN, AUTH_TOKEN_MAX);
			break;
		}
		if (parse_roles(roles, &r) < 0) {
			rc = bn_error_set(
				err, 400, BN_E_INVALID, "token-file",
				"%s:%u: roles are ingest, read and admin (comma-separated)", path,
				lineno);
			break;
		}
		p = realloc(t->tokens, (t->n + 1) * sizeof(*p));
		if (p == NULL) {
			rc = bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
			break;
		}
		t->tokens = p;
		memset(&p[t->n], 0, sizeof(p[t->n]));
		memcpy(p[t->n].value, tok, strlen(tok));
		p[t->n].len = strlen(tok);
		p[t->n].roles = r;
		t->n++;
	}
	free(line);
	fclose(f);
	if (rc == 0 && t->n == 0)
		rc = bn_error_set(err, 400, BN_E_INVALID, "token-file",
				  "%s holds no token: nobody could use the server", path);
	if (rc < 0) {
		free(t->tokens);
		t->tokens = NULL;
		t->n = 0;
	}
	return rc;
}

int auth_load(const char *path, struct auth **out, struct bn_error *err)
{
	struct auth *a = calloc(1, sizeof(*a));
	int rc;

	*out = NULL;
	if (a == NULL)
		return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
	rc = read_table(path, &a->t, err);
	if (rc < 0) {
		free(a);
		return rc;
	}
	pthread_rwlock_init(&a->lock, NULL);
	*out = a;
	return 0;
}

int auth_reload(struct auth *a, const char *path, struct bn_error *err)
{
	struct table t, old;
	int rc = read_table(path, &t, err);

	if (rc < 0)
		return rc;
	pthread_rwlock_wrlock(&a->lock);
	old = a->t;
	a->t = t;
	pthread_rwlock_unlock(&a->lock);
	free(old.tokens);
	return 0;
}

bool auth_token_equal(const char *stored, size_t stored_len, const char *cand, size_t len)
{
	unsigned char diff = (unsigned char)(len != stored_len);
	size_t i;

	/* every byte of the stored token, whatever the candidate holds */
	for (i = 0; i < stored_len; i++)
		diff |= (unsigned char)(stored[i] ^ (i < len ? cand[i] : 0));
	return diff == 0;
}

unsigned auth_roles(struct auth *a, const char *token)
{
	size_t len = strnlen(token, AUTH_TOKEN_MAX + 1);
	unsigned roles = AUTH_NONE, i;

	pthread_rwlock_rdlock(&a->lock);
	for (i = 0; i < a->t.n; i++)
		if (auth_token_equal(a->t.tokens[i].value, a->t.tokens[i].len, token, len))
			roles |= a->t.tokens[i].roles;
	pthread_rwlock_unlock(&a->lock);
	return roles;
}

unsigned auth_count(struct auth *a)
{
	unsigned n;

	pthread_rwlock_rdlock(&a->lock);
	n = a->t.n;
	pthread_rwlock_unlock(&a->lock);
	return n;
}

void auth_free(struct auth *a)
{
	if (a == NULL)
		return;
	pthread_rwlock_destroy(&a->lock);
	free(a->t.tokens);
	free(a);
}

/* --- the policy ----------------------------------------------------------------------- */

unsigned auth_endpoint_role(enum http_endpoint ep)
{
	switch (ep) {
	case HTTP_HEALTHZ:
		return AUTH_NONE;
	case HTTP_BATCHES:
		return AUTH_INGEST;
	case HTTP_METRICS:
	case HTTP_RUNS:
	case HTTP_RUN:
	case HTTP_STATS:
	case HTTP_COMPARE:
	case HTTP_SERIES:
	case HTTP_DRIFT:
	case HTTP_MOMENTUM:
	case HTTP_DOMAINS:
	case HTTP_SHIFT:
	case HTTP_SNAPSHOTS:
	case HTTP_SNAPSHOT:
		return AUTH_READ;
	case HTTP_ROOT:
	case HTTP_UI:
		return AUTH_PAGE;
	case HTTP_RUN_DELETE:
	case HTTP_SNAPSHOT_CREATE:
	case HTTP_SNAPSHOT_DELETE:
	case HTTP_EXPORT:
	case HTTP_IMPORT:
	case HTTP_NONE:
	default:
		return AUTH_ADMIN;
	}
}

bool auth_loopback(const struct sockaddr *sa)
{
	if (sa == NULL)
		return false;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
		const uint8_t *b = in6->sin6_addr.s6_addr;
		static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return true;
		return memcmp(b, v4mapped, 12) == 0 && b[12] == 127;
	}
	return false;
}

int auth_check(struct auth *a, enum http_endpoint ep, const char *authorization,
	       const struct sockaddr *client, struct bn_error *err)
{
	unsigned need = auth_endpoint_role(ep), have;
	const char *what;

	if (need == AUTH_NONE)
		return 0;
	if (a == NULL) {
		if (auth_loopback(client))
			return 0;
		return bn_error_set(
			err, 403, BN_E_FORBIDDEN, NULL, "%s",
			"this server has no token file and only serves loopback clients");
	}
	if (need == AUTH_PAGE)
		return 0;
	if (authorization == NULL || strncasecmp(authorization, "Bearer ", 7) != 0)
		return bn_error_set(err, 401, BN_E_UNAUTHORIZED, NULL, "%s",
				    "send Authorization: Bearer TOKEN");
	have = auth_roles(a, authorization + 7);
	if (have == AUTH_NONE)
		return bn_error_set(err, 401, BN_E_UNAUTHORIZED, NULL, "%s", "unknown token");
	if ((have & need) == need)
		return 0;
	what = need == AUTH_INGEST ? "ingest" : need == AUTH_ADMIN ? "admin" : "read";
	return bn_error_set(err, 403, BN_E_FORBIDDEN, NULL, "this token lacks the %s role", what);
}
