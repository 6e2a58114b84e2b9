/*
 * auth: bearer tokens and their roles, from a token file.
 *
 * The file holds one "TOKEN ROLE[,ROLE...]" per line ('#' comments and
 * blank lines allowed); roles are ingest (upload), read (GET) and admin
 * (snapshots, deletion; admin implies the other two). Tokens are compared
 * in constant time and never logged. auth_reload() swaps in a new table
 * atomically, so SIGHUP can rotate tokens under load.
 */
#ifndef BNSTAT_AUTH_H
#define BNSTAT_AUTH_H

#include "bnstat/error.h"

enum auth_role {
	AUTH_NONE = 0,
	AUTH_INGEST = 1 << 0,
	AUTH_READ = 1 << 1,
	AUTH_ADMIN = 1 << 2,
};

#define AUTH_TOKEN_MIN 16
#define AUTH_TOKEN_MAX 256

struct auth;

/*
 * Read the token file at path. On success *out is owned by the caller
 * (auth_free()). Errors name the file and line in *err.
 */
int auth_load(const char *path, struct auth **out, struct bn_error *err);

/*
 * Read path again and, when it is valid, replace the tokens of a; when it
 * is not, keep the old ones and describe the problem in *err.
 */
int auth_reload(struct auth *a, const char *path, struct bn_error *err);

/* The roles of token (AUTH_NONE for an unknown token); admin implies all. */
unsigned auth_roles(struct auth *a, const char *token);

/* Number of tokens loaded. */
unsigned auth_count(struct auth *a);

void auth_free(struct auth *a);

#endif
