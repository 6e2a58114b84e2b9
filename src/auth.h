/*
 * auth: bearer tokens and their roles, from a token file.
 *
 * The file holds one "TOKEN ROLE[,ROLE...]" per line ('#' comments and
 * blank lines allowed); roles are ingest (upload), read (GET) and admin
 * (snapshots, deletion; admin implies the other two). Tokens are compared
 * in constant time and never logged. auth_reload() swaps in a new table
 * atomically, so SIGHUP can rotate tokens under load.
 *
 * The policy, which role each endpoint needs and who is served without a
 * token file, is here too, so that it reads in one place
 * (docs/OPERATIONS.md, "Authentication"; docs/API.md, the endpoint table).
 */
#ifndef BNSTAT_AUTH_H
#define BNSTAT_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "bnstat/error.h"
#include "endpoint.h"

/* Role bits, as auth_roles() and auth_endpoint_role() return them. */
enum auth_role {
	AUTH_NONE = 0,
	AUTH_INGEST = 1 << 0,
	AUTH_READ = 1 << 1,
	AUTH_ADMIN = 1 << 2,
	/*
	 * Not a token's role but an endpoint's need: no token even with a
	 * token file (the dashboard's files, which a browser's navigation
	 * fetches without one), loopback clients only without one.
	 */
	AUTH_PAGE = 1 << 3,
};

#define AUTH_TOKEN_MIN 16  /* characters of a token, at least */
#define AUTH_TOKEN_MAX 256 /* and at most */

struct auth;

/*
 * Read the token file at path (borrowed for the call). On success *out is
 * a new table owned by the caller (free it with auth_free()). Returns 0,
 * or a negative errno with *out NULL and *err filled in: status 400, path
 * "token-file", a message naming the file and line (never the token). A
 * file without a token is refused: nobody could use the server.
 */
int auth_load(const char *path, struct auth **out, struct bn_error *err);

/*
 * Read path again and, when it is valid, replace the tokens of a; when it
 * is not (or is gone), keep the old ones and describe the problem in *err
 * as auth_load() does. Returns 0 or a negative errno. Any thread, while
 * others call auth_roles() or auth_check(): they see the old table or the
 * new one, never a mix.
 */
int auth_reload(struct auth *a, const char *path, struct bn_error *err);

/*
 * The roles of token (AUTH_NONE for an unknown token), the union over
 * every line that lists it; admin implies ingest and read. token is
 * borrowed, NUL-terminated; at most AUTH_TOKEN_MAX + 1 bytes are read, so
 * a longer candidate never matches. Every stored token is compared in
 * constant time. Any thread.
 */
unsigned auth_roles(struct auth *a, const char *token);

/* The number of tokens (lines) loaded; for the log. Any thread. */
unsigned auth_count(struct auth *a);

/*
 * Free a, its tokens and its lock; NULL is fine. a must no longer be in use:
 * stop the server it was given to (http_stop()) first.
 */
void auth_free(struct auth *a);

/*
 * Are stored (stored_len bytes) and cand (len bytes) the same token? The
 * time taken depends on stored_len only, not on where the two differ, so
 * that a client cannot find a token byte by byte. Reads at most len bytes
 * of cand (it need not be NUL-terminated). Pure; any thread.
 */
bool auth_token_equal(const char *stored, size_t stored_len, const char *cand, size_t len);

/*
 * The policy: the role endpoint ep needs (docs/OPERATIONS.md,
 * "Authentication"): AUTH_NONE for /healthz, AUTH_INGEST for uploads,
 * AUTH_ADMIN for creating and deleting snapshots, for deleting runs and
 * for exporting and importing them, AUTH_PAGE for / and the dashboard's
 * files under /ui/, AUTH_READ for every other GET. HTTP_NONE (and any
 * value not in the enum) needs AUTH_ADMIN, so that an endpoint added
 * without a policy is closed, not open. Pure.
 */
unsigned auth_endpoint_role(enum http_endpoint ep);

struct sockaddr;

/*
 * The rule without a token file: is sa a loopback address (127.0.0.0/8,
 * ::1, or 127.0.0.0/8 mapped into IPv6)? NULL (an unknown client) is not.
 * sa is borrowed for the call. Pure.
 */
bool auth_loopback(const struct sockaddr *sa);

/*
 * May a request for ep go on? ep's role comes from auth_endpoint_role();
 * an endpoint needing none is always allowed. Without a token file (a is
 * NULL) only loopback clients are served. With one, an AUTH_PAGE endpoint
 * is served to anyone, without a token; for the others authorization (the
 * Authorization header's value, NULL when absent) must be "Bearer TOKEN"
 * (scheme in any case) with a token that has the role.
 *
 * Returns 0, or a negative errno with *err filled in: status 401
 * (unauthorized: no, a malformed or an unknown token; the reply should
 * carry WWW-Authenticate) or 403 (forbidden: the token lacks the role, or
 * a non-loopback client without a token file). The token is never copied
 * into *err. authorization and client are borrowed for the call; any
 * thread may call it, concurrently with auth_reload().
 */
int auth_check(struct auth *a, enum http_endpoint ep, const char *authorization,
	       const struct sockaddr *client, struct bn_error *err);

#endif
