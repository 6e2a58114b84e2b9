/*
 * error: the one error value every bnstat module fills in.
 *
 * A failing function returns a negative errno and, when the caller passed a
 * struct bn_error, describes the failure there in the terms of the wire
 * contract: an HTTP status, a short machine-readable code, a human message
 * and the path of the offending field ("layers.layer1.0.bn1.var[17]").
 * The HTTP layer turns it into {"error": {...}} as it is.
 */
#ifndef BNSTAT_ERROR_H
#define BNSTAT_ERROR_H

#include <stdarg.h>
#include <stdbool.h>

#define BN_ERROR_CODE_MAX 32
#define BN_ERROR_MESSAGE_MAX 512
#define BN_ERROR_PATH_MAX 384

/* Machine-readable codes used in replies (the "code" field). */
#define BN_E_MALFORMED "malformed_json"	     /* 400: not JSON, truncated, NaN literal */
#define BN_E_TYPE "wrong_type"		     /* 400: a field of the wrong JSON type */
#define BN_E_MISSING "missing_field"	     /* 400: a required field is absent */
#define BN_E_INVALID "invalid_value"	     /* 422: well-typed but not acceptable */
#define BN_E_PARAMETER "invalid_parameter"   /* 400: a query parameter that does not parse */
#define BN_E_NAME "invalid_name"	     /* 400: a NUL (%00) byte in the path */
#define BN_E_LIMIT "limit_exceeded"	     /* 422: too many layers/channels */
#define BN_E_CONFLICT "conflict"	     /* 409 */
#define BN_E_STEP_COMPACTED "step_compacted" /* 409: a new batch for a bucketed step */
#define BN_E_NOT_FOUND "not_found"	     /* 404 */
#define BN_E_NO_DATA "no_data"		     /* 404: a prior domain without batches in the window */
#define BN_E_TOO_LARGE "payload_too_large"   /* 413 */
#define BN_E_URI_TOO_LONG "uri_too_long"     /* 414: a long URL, too many query parameters */
#define BN_E_HEADERS_TOO_LARGE "headers_too_large" /* 431 */
#define BN_E_METHOD "method_not_allowed"	   /* 405 */
#define BN_E_MEDIA "unsupported_media_type"	   /* 415 */
#define BN_E_UNAVAILABLE "unavailable"		   /* 503 */
#define BN_E_READ_ONLY "read_only"		   /* 503: the disk is full */
#define BN_E_DAMAGED "database_damaged"		   /* 503: the file is damaged */
#define BN_E_UNAUTHORIZED "unauthorized"	   /* 401: no or unknown bearer token */
#define BN_E_FORBIDDEN "forbidden"		   /* 403: the token's role does not allow it */
#define BN_E_INTERNAL "internal"		   /* 500 */

/*
 * What an upload refused for a NaN or infinite statistic names, beyond
 * the code and path (docs/API.md, "Non-finite values"): ingest fills it
 * in, the HTTP layer counts the refusal per run, logs it and adds it to
 * the reply. The sizes are those of names (bnstat/batch.h).
 */
struct bn_error_nonfinite {
	bool set;	   /* the refusal is for a non-finite value */
	long long step;	   /* of the upload */
	long long channel; /* index of the value in its array */
	char worker[129];
	char layer[257];
	char field[16]; /* "mean", "var", "ema_mean" or "ema_var" */
};

struct bn_error {
	int status;			     /* HTTP status, 0 when unset */
	char code[BN_ERROR_CODE_MAX];	     /* one of BN_E_* */
	char message[BN_ERROR_MESSAGE_MAX];  /* for people */
	char path[BN_ERROR_PATH_MAX];	     /* offending field, "" when none */
	struct bn_error_nonfinite nonfinite; /* set by ingest only; cleared by bn_error_set() */
};

/*
 * Fill in *err (when err is not NULL), clearing err->nonfinite.set. path may be NULL. The message
 * is printf-formatted and truncated to fit. Returns -EINVAL for 4xx statuses, -EIO otherwise, so
 * that callers can write `return bn_error_set(...)`.
 */
int bn_error_set(struct bn_error *err, int status, const char *code, const char *path,
		 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Clear *err to "no error". */
void bn_error_clear(struct bn_error *err);

#endif
