/*
 * fuzz_query: a request target, as libmicrohttpd hands it to bnstatd: the
 * input is PATH[?QUERY]. The path goes through the router
 * (http_route_parse(), src/http_route.c) with each method; every value of
 * the query string, unescaped by bnstatd's unescape callback
 * (http_unescape_no_nul(): libmicrohttpd's, with a %00 made DEL, which
 * must never leave a NUL inside the string), goes through the
 * parameter parsers of src/query.c: the strict number grammar of
 * docs/API.md, "Query parameters" (query_parse_number(), momentum,
 * target_se) and the integer one (query_parse_int()).
 *
 * The parsers are checked against a reference written here: POSIX regular
 * expressions for the grammars, digits accumulated by hand for the range
 * of a long long, strtod for the value. Accepted: the value is the
 * reference's; refused: 400 invalid_parameter (422 invalid_value for a
 * number out of the parameter's range) naming the parameter, and the
 * output untouched. The router returns one of its three answers; a
 * {run} or {label} too long for its buffer is cut where name validation
 * refuses it, never into a valid name.
 */
#include "fuzz_common.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "http_private.h"
#include "query.h"
#include "query_private.h"
#include "store.h"

static regex_t re_number, re_int;

static void init(void)
{
	static bool done;

	if (done)
		return;
	FUZZ_ASSERT(regcomp(&re_number, "^-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?$",
			    REG_EXTENDED | REG_NOSUB) == 0, "regcomp");
	FUZZ_ASSERT(regcomp(&re_int, "^-?[0-9]+$", REG_EXTENDED | REG_NOSUB) == 0, "regcomp");
	done = true;
}

/*
 * A 400 invalid_parameter (or status/code given) naming name: the error's
 * path holds a name's first BN_ERROR_PATH_MAX - 1 bytes.
 */
static void check_error(int rc, const struct bn_error *err, int status, const char *code,
			const char *name, const char *v)
{
	FUZZ_ASSERT(rc == -EINVAL, "%s=%s: rc %d", name, v, rc);
	FUZZ_ASSERT(err->status == status && strcmp(err->code, code) == 0 &&
			    strncmp(err->path, name, sizeof(err->path) - 1) == 0,
		    "%s=%s: %d %s '%s', expected %d %s '%s'", name, v, err->status, err->code,
		    err->path, status, code, name);
}

/* The reference for a long long: 0 and *out, or -ERANGE, or -EINVAL for the grammar. */
static int ref_int(const char *s, long long *out)
{
	bool neg = s[0] == '-';
	unsigned long long acc = 0, lim = neg ? (unsigned long long)LLONG_MAX + 1 : LLONG_MAX;

	if (regexec(&re_int, s, 0, NULL, 0) != 0)
		return -EINVAL;
	for (const char *p = s + neg; *p; p++) {
		unsigned d = (unsigned)(*p - '0');

		if (acc > (lim - d) / 10)
			return -ERANGE;
		acc = acc * 10 + d;
	}
	*out = neg ? (acc == lim ? LLONG_MIN : -(long long)acc) : (long long)acc;
	return 0;
}

static void check_value(const char *name, const char *v)
{
	static const long long mins[] = { 0, 1, LLONG_MIN };
	const double untouched = 12345.0;
	bool number_ok = v != NULL && regexec(&re_number, v, 0, NULL, 0) == 0 &&
			 isfinite(strtod(v, NULL));
	struct bn_error err;
	double d = untouched;
	long long ll, ref = 0;
	int rc, rr;

	bn_error_clear(&err);
	rc = query_parse_number(name, v, &d, &err);
	if (number_ok) {
		FUZZ_ASSERT(rc == 0, "%s=%s refused: %s", name, v, err.message);
		FUZZ_ASSERT(d == strtod(v, NULL), "%s=%s: %.17g", name, v, d);
	} else {
		check_error(rc, &err, 400, BN_E_PARAMETER, name, v ? v : "(none)");
		FUZZ_ASSERT(d == untouched, "a refused number was stored");
	}

	rr = v != NULL ? ref_int(v, &ref) : -EINVAL;
	for (size_t i = 0; i < sizeof(mins) / sizeof(mins[0]); i++) {
		ll = 777;
		bn_error_clear(&err);
		rc = query_parse_int(name, v, mins[i], &ll, &err);
		if (rr == 0 && ref >= mins[i]) {
			FUZZ_ASSERT(rc == 0 && ll == ref, "%s=%s: rc %d, %lld, expected %lld", name, v,
				    rc, ll, ref);
		} else {
			check_error(rc, &err, rr == 0 ? 422 : 400,
				    rr == 0 ? BN_E_INVALID : BN_E_PARAMETER, name, v ? v : "(none)");
			FUZZ_ASSERT(ll == 777, "a refused integer was stored");
		}
	}

	if (v == NULL)
		return; /* absent: the defaults, not a parse */
	d = untouched;
	bn_error_clear(&err);
	rc = query_parse_momentum(v, &d, &err);
	if (number_ok && strtod(v, NULL) > 0.0 && strtod(v, NULL) <= 1.0)
		FUZZ_ASSERT(rc == 0 && d == strtod(v, NULL), "momentum=%s: rc %d", v, rc);
	else
		check_error(rc, &err, number_ok ? 422 : 400,
			    number_ok ? BN_E_INVALID : BN_E_PARAMETER, "momentum", v);
	d = untouched;
	bn_error_clear(&err);
	rc = query_parse_target_se(v, &d, &err);
	if (number_ok && strtod(v, NULL) > 0.0)
		FUZZ_ASSERT(rc == 0 && d == strtod(v, NULL), "target_se=%s: rc %d", v, rc);
	else
		check_error(rc, &err, number_ok ? 422 : 400,
			    number_ok ? BN_E_INVALID : BN_E_PARAMETER, "target_se", v);
}

/* The daemon's unescaping: a %00 never ends the string early. */
static void unescape(char *s)
{
	size_t before = strlen(s), n = http_unescape_no_nul(NULL, NULL, s);

	FUZZ_ASSERT(n <= before && strlen(s) == n, "unescaped to %zu bytes, strlen %zu", n,
		    strlen(s));
}

static void check_route(const char *path)
{
	static const char *const methods[] = { "GET", "POST", "DELETE", "PUT", "get" };
	struct http_route r;

	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		int rc = http_route_parse(methods[i], path, &r);
		size_t n;

		FUZZ_ASSERT(rc == 0 || rc == -ENOENT || rc == -ENOTSUP, "route rc %d", rc);
		FUZZ_ASSERT((rc == 0) == (r.endpoint != HTTP_NONE), "rc %d, endpoint %d", rc,
			    (int)r.endpoint);
		FUZZ_ASSERT(r.name != NULL, "no name for the log");
		FUZZ_ASSERT(rc != -ENOTSUP || r.allowed != NULL, "a 405 without Allow");
		FUZZ_ASSERT(rc != 0 || strstr(r.allowed, methods[i]) != NULL,
			    "%s reaches an endpoint that does not allow it", methods[i]);
		n = strnlen(r.run, sizeof(r.run));
		FUZZ_ASSERT(n < sizeof(r.run), "run unterminated");
		if (strncmp(path, "/v1/runs/", 9) == 0 && rc != -ENOENT && n > 0) {
			size_t seg = strcspn(path + 9, "/");

			FUZZ_ASSERT(strncmp(r.run, path + 9, n) == 0 && (n == seg || n == sizeof(r.run) - 1),
				    "run \"%s\" is not the path's segment", r.run);
			FUZZ_ASSERT(n == seg || !ingest_name_valid(r.run),
				    "a long run name cut into a valid one");
		}
		n = strnlen(r.label, sizeof(r.label));
		FUZZ_ASSERT(n < sizeof(r.label), "label unterminated");
		FUZZ_ASSERT(n <= STORE_LABEL_MAX || !ingest_name_valid(r.label),
			    "a long label cut into a valid one");
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1), *q, *save = NULL, *kv;

	init();
	FUZZ_ASSERT(s != NULL, "out of memory");
	memcpy(s, data, size);
	s[size] = '\0';
	/* a NUL in the input ends the target, as it ends MHD's request line */
	q = strchr(s, '?');
	if (q != NULL)
		*q++ = '\0';
	unescape(s);
	check_route(s);
	for (kv = q ? strtok_r(q, "&", &save) : NULL; kv != NULL; kv = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(kv, '=');

		if (eq != NULL)
			*eq++ = '\0';
		unescape(kv);
		if (eq != NULL)
			unescape(eq);
		check_value(kv[0] ? kv : "p", eq);
	}
	free(s);
	return 0;
}
