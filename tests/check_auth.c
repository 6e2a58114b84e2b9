/*
 * check_auth: the token file parser, the constant-time compare, the role
 * each endpoint needs and the decision auth_check() makes from them, with
 * and without a token file (docs/OPERATIONS.md, "Authentication").
 */
#include <check.h>
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "auth.h"
#include "file_testutil.h"

/* Tokens of at least AUTH_TOKEN_MIN characters. */
#define T_INGEST "ingest-0123456789abcdef"
#define T_READ "read-0123456789abcdef"
#define T_ADMIN "admin-0123456789abcdef"
#define T_BOTH "both-0123456789abcdef"

static char path[64];

static void write_file(const char *text)
{
	tu_write_temp(path, sizeof(path), "check_auth", text);
}

/* Load text as a token file; the file is removed again. */
static int load(const char *text, struct auth **a, struct bn_error *err)
{
	int rc;

	write_file(text);
	bn_error_clear(err);
	rc = auth_load(path, a, err);
	unlink(path);
	return rc;
}

/* text is refused, naming path:line (line 0: no line), and never echoing a token. */
static void expect_refused(const char *text, unsigned line, const char *says)
{
	struct auth *a = (struct auth *)&a; /* must be reset to NULL */
	struct bn_error err;
	char where[96];

	ck_assert_int_lt(load(text, &a, &err), 0);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(err.status, 400);
	ck_assert_str_eq(err.code, BN_E_INVALID);
	ck_assert_str_eq(err.path, "token-file");
	if (line > 0) {
		snprintf(where, sizeof(where), "%s:%u: ", path, line);
		ck_assert_msg(strstr(err.message, where) != NULL, "\"%s\" does not name %s",
			      err.message, where);
	} else {
		ck_assert_msg(strstr(err.message, path) != NULL, "\"%s\" does not name %s",
			      err.message, path);
	}
	ck_assert_msg(strstr(err.message, says) != NULL, "\"%s\" does not say \"%s\"", err.message,
		      says);
	ck_assert_msg(strstr(err.message, "0123456789abcdef") == NULL, "\"%s\" echoes a token",
		      err.message);
}

/* The four tokens of the tests, one role set each. */
static struct auth *load_four(void)
{
	struct auth *a = NULL;
	struct bn_error err;

	ck_assert_int_eq(load("# bnstat tokens\n\n" T_INGEST " ingest\n" T_READ " read\n" T_ADMIN
			      " admin\n" T_BOTH " ingest,read\n",
			      &a, &err),
			 0);
	ck_assert_ptr_nonnull(a);
	return a;
}

/* --- the token file ------------------------------------------------------------------ */

START_TEST(test_good_files)
{
	struct auth *a = NULL;
	struct bn_error err;

	a = load_four();
	ck_assert_uint_eq(auth_count(a), 4);
	ck_assert_uint_eq(auth_roles(a, T_INGEST), AUTH_INGEST);
	ck_assert_uint_eq(auth_roles(a, T_READ), AUTH_READ);
	ck_assert_uint_eq(auth_roles(a, T_ADMIN), AUTH_ADMIN | AUTH_INGEST | AUTH_READ);
	ck_assert_uint_eq(auth_roles(a, T_BOTH), AUTH_INGEST | AUTH_READ);
	ck_assert_uint_eq(auth_roles(a, "nobody-0123456789abcdef"), AUTH_NONE);
	ck_assert_uint_eq(auth_roles(a, ""), AUTH_NONE);
	auth_free(a);

	/* tabs, CRLF, indentation, a comment after the roles, no final newline */
	ck_assert_int_eq(load("\t" T_READ "\t\tread  # the dashboard\r\n"
			      "   # indented comment\n\r\n" T_INGEST " ingest,read,ingest",
			      &a, &err),
			 0);
	ck_assert_uint_eq(auth_count(a), 2);
	ck_assert_uint_eq(auth_roles(a, T_READ), AUTH_READ);
	ck_assert_uint_eq(auth_roles(a, T_INGEST), AUTH_INGEST | AUTH_READ);
	auth_free(a);

	/* a token listed twice has the roles of both lines */
	ck_assert_int_eq(load(T_READ " read\n" T_READ " ingest\n", &a, &err), 0);
	ck_assert_uint_eq(auth_count(a), 2);
	ck_assert_uint_eq(auth_roles(a, T_READ), AUTH_INGEST | AUTH_READ);
	auth_free(a);
}
END_TEST

START_TEST(test_token_lengths)
{
	char text[2 * AUTH_TOKEN_MAX], tok[AUTH_TOKEN_MAX + 2];
	struct auth *a = NULL;
	struct bn_error err;

	memset(tok, 'k', sizeof(tok));
	tok[AUTH_TOKEN_MIN] = '\0';
	snprintf(text, sizeof(text), "%s read\n", tok);
	ck_assert_int_eq(load(text, &a, &err), 0);
	ck_assert_uint_eq(auth_roles(a, tok), AUTH_READ);
	auth_free(a);

	memset(tok, 'k', sizeof(tok));
	tok[AUTH_TOKEN_MAX] = '\0';
	snprintf(text, sizeof(text), "%s read\n", tok);
	ck_assert_int_eq(load(text, &a, &err), 0);
	ck_assert_uint_eq(auth_roles(a, tok), AUTH_READ);
	/* a candidate longer than any token never matches, whatever it starts with */
	tok[AUTH_TOKEN_MAX] = 'k';
	tok[AUTH_TOKEN_MAX + 1] = '\0';
	ck_assert_uint_eq(auth_roles(a, tok), AUTH_NONE);
	auth_free(a);

	memset(tok, 'k', sizeof(tok));
	tok[AUTH_TOKEN_MIN - 1] = '\0';
	snprintf(text, sizeof(text), T_READ " read\n%s read\n", tok);
	expect_refused(text, 2, "a token must have 16 to 256 characters");
	memset(tok, 'k', sizeof(tok));
	tok[AUTH_TOKEN_MAX + 1] = '\0';
	snprintf(text, sizeof(text), "%s read\n", tok);
	expect_refused(text, 1, "a token must have 16 to 256 characters");
}
END_TEST

START_TEST(test_bad_lines)
{
	const char *form = "expected \"TOKEN ROLE[,ROLE]\"";
	const char *roles = "roles are ingest, read and admin (comma-separated)";

	expect_refused(T_READ "\n", 1, form);
	expect_refused("\n# comment\n" T_READ "   \n", 3, form);
	expect_refused(T_READ " read extra\n", 1, form);
	expect_refused(T_READ " read, ingest\n", 1, form);
	expect_refused(T_READ " writer\n", 1, roles);
	expect_refused(T_READ " read,writer\n", 1, roles);
	expect_refused(T_READ " Read\n", 1, roles);
	expect_refused(T_READ " ,\n", 1, roles);
	expect_refused(T_READ " read\n" T_INGEST " ingest;read\n", 2, roles);
	expect_refused("", 0, "holds no token: nobody could use the server");
	expect_refused("# only a comment\n\n", 0, "holds no token");
}
END_TEST

/* A line longer than any buffer is one line: its tail never becomes an entry. */
START_TEST(test_long_lines)
{
	static char text[20000];
	struct auth *a = NULL;
	struct bn_error err;
	size_t n;

	/* a comment whose tail, past 1,023 bytes, looks like a token line */
	n = (size_t)snprintf(text, sizeof(text), "# ");
	memset(text + n, 'x', 1021);
	n += 1021;
	snprintf(text + n, sizeof(text) - n, "EVILtokenEVILtoken99 admin\n" T_READ " read\n");
	ck_assert_int_eq(load(text, &a, &err), 0);
	ck_assert_uint_eq(auth_count(a), 1);
	ck_assert_uint_eq(auth_roles(a, "EVILtokenEVILtoken99"), AUTH_NONE);
	ck_assert_uint_eq(auth_roles(a, T_READ), AUTH_READ);
	auth_free(a);

	/* a comment after the roles, of any length, is still a comment */
	n = (size_t)snprintf(text, sizeof(text), T_READ " read #");
	memset(text + n, 'y', 15000);
	snprintf(text + n + 15000, sizeof(text) - n - 15000, " " T_ADMIN " admin\n");
	ck_assert_int_eq(load(text, &a, &err), 0);
	ck_assert_uint_eq(auth_count(a), 1);
	ck_assert_uint_eq(auth_roles(a, T_ADMIN), AUTH_NONE);
	auth_free(a);
}
END_TEST

/*
 * A NUL byte refuses the file, naming its line: it would end the line
 * early, and "TOKEN read\0junk admin" was a read token with its tail
 * unread (found by tests/fuzz/fuzz_tokens).
 */
START_TEST(test_nul_byte)
{
	static const char text[] = T_ADMIN " admin\n" T_READ " read\0" T_INGEST " ingest\n";
	struct auth *a = (struct auth *)&a;
	struct bn_error err;
	char where[96];

	tu_write_temp_n(path, sizeof(path), "check_auth", text, sizeof(text) - 1);
	bn_error_clear(&err);
	ck_assert_int_lt(auth_load(path, &a, &err), 0);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(err.status, 400);
	ck_assert_str_eq(err.path, "token-file");
	snprintf(where, sizeof(where), "%s:2: a NUL byte", path);
	ck_assert_msg(strstr(err.message, where) != NULL, "\"%s\"", err.message);
	ck_assert_ptr_null(strstr(err.message, "0123456789abcdef"));
	unlink(path);
}
END_TEST

START_TEST(test_missing_file)
{
	struct auth *a = (struct auth *)&a;
	struct bn_error err;

	bn_error_clear(&err);
	ck_assert_int_lt(auth_load("/nonexistent/bnstat-tokens", &a, &err), 0);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(err.status, 400);
	ck_assert_ptr_nonnull(
		strstr(err.message, "cannot open token file /nonexistent/bnstat-tokens"));
}
END_TEST

START_TEST(test_reload)
{
	struct auth *a = load_four();
	struct bn_error err;

	/* a good file replaces every token */
	write_file("# rotated\nnew-token-0123456789 admin\n");
	ck_assert_int_eq(auth_reload(a, path, &err), 0);
	unlink(path);
	ck_assert_uint_eq(auth_count(a), 1);
	ck_assert_uint_eq(auth_roles(a, T_READ), AUTH_NONE);
	ck_assert_uint_eq(auth_roles(a, "new-token-0123456789"),
			  AUTH_ADMIN | AUTH_INGEST | AUTH_READ);

	/* a broken one keeps the tokens in force and says where it is broken */
	write_file(T_READ " read\n" T_INGEST " reader\n");
	bn_error_clear(&err);
	ck_assert_int_lt(auth_reload(a, path, &err), 0);
	ck_assert_ptr_nonnull(strstr(err.message, ":2: "));
	unlink(path);
	ck_assert_uint_eq(auth_count(a), 1);
	ck_assert_uint_eq(auth_roles(a, T_READ), AUTH_NONE);
	ck_assert_uint_ne(auth_roles(a, "new-token-0123456789"), AUTH_NONE);

	/* and so does a file that went away */
	ck_assert_int_lt(auth_reload(a, "/nonexistent/bnstat-tokens", &err), 0);
	ck_assert_uint_eq(auth_count(a), 1);
	auth_free(a);
	auth_free(NULL);
}
END_TEST

/* --- the compare ----------------------------------------------------------------------- */

START_TEST(test_token_equal)
{
	const char *s = "0123456789abcdef";
	char cand[32];

	ck_assert(auth_token_equal(s, 16, "0123456789abcdef", 16));
	ck_assert(!auth_token_equal(s, 16, "x123456789abcdef", 16));  /* first byte */
	ck_assert(!auth_token_equal(s, 16, "0123456789abcdex", 16));  /* last byte */
	ck_assert(!auth_token_equal(s, 16, "0123456789abcde", 15));   /* a prefix */
	ck_assert(!auth_token_equal(s, 16, "0123456789abcdef0", 17)); /* one byte more */
	ck_assert(!auth_token_equal(s, 16, "", 0));
	ck_assert(auth_token_equal("", 0, "", 0));
	/* a prefix of stored padded with NULs is not stored */
	ck_assert(!auth_token_equal("ab\0", 3, "ab", 2));
	/* only len bytes of the candidate are read: it need not be NUL-terminated */
	memset(cand, '#', sizeof(cand));
	memcpy(cand, s, 16);
	ck_assert(auth_token_equal(s, 16, cand, 16));
	ck_assert(!auth_token_equal(s, 16, cand, 17));
	/* nor is the rest of a longer stored token compared against a short candidate's end */
	ck_assert(!auth_token_equal(s, 16, cand, 8));
}
END_TEST

/* --- the policy -------------------------------------------------------------------------- */

static const struct {
	enum http_endpoint ep;
	unsigned need;
	const char *role; /* in the 403's message */
} policy[] = {
	{ HTTP_HEALTHZ, AUTH_NONE, NULL },	  { HTTP_METRICS, AUTH_READ, "read" },
	{ HTTP_RUNS, AUTH_READ, "read" },	  { HTTP_RUN, AUTH_READ, "read" },
	{ HTTP_RUN_DELETE, AUTH_ADMIN, "admin" }, { HTTP_BATCHES, AUTH_INGEST, "ingest" },
	{ HTTP_STATS, AUTH_READ, "read" },	  { HTTP_COMPARE, AUTH_READ, "read" },
	{ HTTP_SERIES, AUTH_READ, "read" },	  { HTTP_DRIFT, AUTH_READ, "read" },
	{ HTTP_DOMAINS, AUTH_READ, "read" },	  { HTTP_SHIFT, AUTH_READ, "read" },
	{ HTTP_SNAPSHOTS, AUTH_READ, "read" },	  { HTTP_SNAPSHOT_CREATE, AUTH_ADMIN, "admin" },
	{ HTTP_SNAPSHOT, AUTH_READ, "read" },	  { HTTP_SNAPSHOT_DELETE, AUTH_ADMIN, "admin" },
	{ HTTP_MOMENTUM, AUTH_READ, "read" },	  { HTTP_EXPORT, AUTH_ADMIN, "admin" },
	{ HTTP_IMPORT, AUTH_ADMIN, "admin" },
};

#define N_POLICY (sizeof(policy) / sizeof(policy[0]))

static struct sockaddr_storage addr4(const char *text)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;

	memset(&ss, 0, sizeof(ss));
	in->sin_family = AF_INET;
	ck_assert_int_eq(inet_pton(AF_INET, text, &in->sin_addr), 1);
	return ss;
}

static struct sockaddr_storage addr6(const char *text)
{
	struct sockaddr_storage ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

	memset(&ss, 0, sizeof(ss));
	in6->sin6_family = AF_INET6;
	ck_assert_int_eq(inet_pton(AF_INET6, text, &in6->sin6_addr), 1);
	return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

START_TEST(test_endpoint_roles)
{
	size_t i;

	/* every endpoint of the enum is in the table above, or the dashboard's (test_page) */
	ck_assert_uint_eq(N_POLICY + 2, HTTP_UI);
	for (i = 0; i < N_POLICY; i++)
		ck_assert_msg(auth_endpoint_role(policy[i].ep) == policy[i].need,
			      "endpoint %d needs %u, not %u", (int)policy[i].ep, policy[i].need,
			      auth_endpoint_role(policy[i].ep));
	/* what no endpoint is stays closed */
	ck_assert_uint_eq(auth_endpoint_role(HTTP_NONE), AUTH_ADMIN);
	ck_assert_uint_eq(auth_endpoint_role((enum http_endpoint)(HTTP_UI + 1)), AUTH_ADMIN);
}
END_TEST

/*
 * The dashboard's files: with a token file, served without a token (a
 * browser's navigation sends none), whatever the header holds; without
 * one, to loopback clients only, as every other endpoint.
 */
START_TEST(test_page)
{
	static const enum http_endpoint pages[] = { HTTP_ROOT, HTTP_UI };
	struct sockaddr_storage lo = addr4("127.0.0.1"), far4 = addr4("10.231.16.2"),
				far6 = addr6("2001:db8::2");
	struct auth *a = load_four();
	struct bn_error err;
	size_t i;

	for (i = 0; i < 2; i++) {
		ck_assert_uint_eq(auth_endpoint_role(pages[i]), AUTH_PAGE);
		ck_assert_int_eq(auth_check(a, pages[i], NULL, SA(far4), &err), 0);
		ck_assert_int_eq(auth_check(a, pages[i], "Bearer junk", SA(far6), &err), 0);
		ck_assert_int_eq(auth_check(a, pages[i], NULL, NULL, &err), 0);
		ck_assert_int_eq(auth_check(NULL, pages[i], NULL, SA(lo), &err), 0);
		bn_error_clear(&err);
		ck_assert_int_lt(auth_check(NULL, pages[i], NULL, SA(far4), &err), 0);
		ck_assert_int_eq(err.status, 403);
		ck_assert_str_eq(err.code, BN_E_FORBIDDEN);
		bn_error_clear(&err);
		ck_assert_int_lt(auth_check(NULL, pages[i], "Bearer " T_ADMIN, NULL, &err), 0);
		ck_assert_int_eq(err.status, 403);
	}
	/* the API the page calls still needs its token */
	bn_error_clear(&err);
	ck_assert_int_lt(auth_check(a, HTTP_DRIFT, NULL, SA(lo), &err), 0);
	ck_assert_int_eq(err.status, 401);
	auth_free(a);
}
END_TEST

/* The role x endpoint matrix with a token file, from a loopback client. */
START_TEST(test_matrix)
{
	static const struct {
		const char *token;
		unsigned roles;
	} who[] = {
		{ T_INGEST, AUTH_INGEST },
		{ T_READ, AUTH_READ },
		{ T_ADMIN, AUTH_ADMIN | AUTH_INGEST | AUTH_READ },
		{ T_BOTH, AUTH_INGEST | AUTH_READ },
	};
	struct sockaddr_storage lo = addr4("127.0.0.1");
	struct auth *a = load_four();
	struct bn_error err;
	char header[128], lacks[64];
	size_t i, j;

	for (i = 0; i < N_POLICY; i++) {
		for (j = 0; j < sizeof(who) / sizeof(who[0]); j++) {
			int rc;

			snprintf(header, sizeof(header), "Bearer %s", who[j].token);
			bn_error_clear(&err);
			rc = auth_check(a, policy[i].ep, header, SA(lo), &err);
			if ((who[j].roles & policy[i].need) == policy[i].need) {
				ck_assert_msg(rc == 0, "endpoint %d, token %s: %s",
					      (int)policy[i].ep, who[j].token, err.message);
				continue;
			}
			ck_assert_msg(rc < 0, "endpoint %d, token %s allowed", (int)policy[i].ep,
				      who[j].token);
			ck_assert_int_eq(err.status, 403);
			ck_assert_str_eq(err.code, BN_E_FORBIDDEN);
			snprintf(lacks, sizeof(lacks), "this token lacks the %s role",
				 policy[i].role);
			ck_assert_str_eq(err.message, lacks);
			ck_assert_str_eq(err.path, "");
		}
	}
	auth_free(a);
}
END_TEST

/* No, a malformed or an unknown token: 401 wherever a role is needed. */
START_TEST(test_unauthorized)
{
	static const struct {
		const char *header;
		const char *message;
	} cases[] = {
		{ NULL, "send Authorization: Bearer TOKEN" },
		{ "", "send Authorization: Bearer TOKEN" },
		{ "Basic dXNlcjpwYXNzd29yZA==", "send Authorization: Bearer TOKEN" },
		{ T_READ, "send Authorization: Bearer TOKEN" },
		{ "Bearer", "send Authorization: Bearer TOKEN" },
		{ "Bearer\t" T_READ, "send Authorization: Bearer TOKEN" },
		{ "Bearer ", "unknown token" },
		{ "Bearer  " T_READ, "unknown token" },
		{ "Bearer " T_READ " ", "unknown token" },
		{ "Bearer nobody-0123456789abcdef", "unknown token" },
		{ "Bearer read-0123456789abcde", "unknown token" },
		{ "Bearer " T_READ "x", "unknown token" },
	};
	struct sockaddr_storage lo = addr4("127.0.0.1");
	struct auth *a = load_four();
	struct bn_error err;
	size_t i, j;

	for (i = 0; i < N_POLICY; i++) {
		for (j = 0; j < sizeof(cases) / sizeof(cases[0]); j++) {
			int rc;

			bn_error_clear(&err);
			rc = auth_check(a, policy[i].ep, cases[j].header, SA(lo), &err);
			if (policy[i].need == AUTH_NONE) {
				ck_assert_int_eq(rc, 0); /* /healthz is open */
				continue;
			}
			ck_assert_msg(rc < 0, "endpoint %d allowed with \"%s\"", (int)policy[i].ep,
				      cases[j].header ? cases[j].header : "(none)");
			ck_assert_int_eq(err.status, 401);
			ck_assert_str_eq(err.code, BN_E_UNAUTHORIZED);
			ck_assert_str_eq(err.message, cases[j].message);
		}
	}
	/* the scheme is case-insensitive (RFC 7235) */
	ck_assert_int_eq(auth_check(a, HTTP_RUNS, "bearer " T_READ, SA(lo), &err), 0);
	ck_assert_int_eq(auth_check(a, HTTP_RUNS, "BEARER " T_READ, SA(lo), &err), 0);
	/* with a token file, a loopback client needs a token like anyone */
	ck_assert_int_lt(auth_check(a, HTTP_RUNS, NULL, SA(lo), &err), 0);
	ck_assert_int_eq(err.status, 401);
	auth_free(a);
}
END_TEST

START_TEST(test_loopback_addresses)
{
	static const char *const yes4[] = { "127.0.0.1", "127.0.0.2", "127.255.255.254" };
	static const char *const no4[] = { "10.0.0.1", "0.0.0.0", "128.0.0.1", "192.168.1.127",
					   "255.255.255.255" };
	static const char *const yes6[] = { "::1", "::ffff:127.0.0.1", "::ffff:127.1.2.3" };
	static const char *const no6[] = {
		"::", "::2", "fe80::1", "2001:db8::1", "::ffff:10.0.0.1", "::127.0.0.1", "::1:0:0:1"
	};
	struct sockaddr_storage ss;
	struct sockaddr_un un;
	size_t i;

	for (i = 0; i < sizeof(yes4) / sizeof(yes4[0]); i++) {
		ss = addr4(yes4[i]);
		ck_assert_msg(auth_loopback(SA(ss)), "%s is loopback", yes4[i]);
	}
	for (i = 0; i < sizeof(no4) / sizeof(no4[0]); i++) {
		ss = addr4(no4[i]);
		ck_assert_msg(!auth_loopback(SA(ss)), "%s is not loopback", no4[i]);
	}
	for (i = 0; i < sizeof(yes6) / sizeof(yes6[0]); i++) {
		ss = addr6(yes6[i]);
		ck_assert_msg(auth_loopback(SA(ss)), "%s is loopback", yes6[i]);
	}
	for (i = 0; i < sizeof(no6) / sizeof(no6[0]); i++) {
		ss = addr6(no6[i]);
		ck_assert_msg(!auth_loopback(SA(ss)), "%s is not loopback", no6[i]);
	}
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	ck_assert(!auth_loopback((const struct sockaddr *)&un));
	ck_assert(!auth_loopback(NULL));
}
END_TEST

/* Without a token file: loopback clients only, token or not; /healthz for all. */
START_TEST(test_no_token_file)
{
	struct sockaddr_storage lo4 = addr4("127.0.0.1"), lo6 = addr6("::1"),
				far4 = addr4("10.231.16.2"), far6 = addr6("2001:db8::2");
	struct bn_error err;
	size_t i;

	for (i = 0; i < N_POLICY; i++) {
		ck_assert_int_eq(auth_check(NULL, policy[i].ep, NULL, SA(lo4), &err), 0);
		ck_assert_int_eq(auth_check(NULL, policy[i].ep, NULL, SA(lo6), &err), 0);
		/* a header is neither needed nor looked at */
		ck_assert_int_eq(auth_check(NULL, policy[i].ep, "Bearer junk", SA(lo4), &err), 0);
		if (policy[i].need == AUTH_NONE) {
			ck_assert_int_eq(auth_check(NULL, policy[i].ep, NULL, SA(far4), &err), 0);
			ck_assert_int_eq(auth_check(NULL, policy[i].ep, NULL, NULL, &err), 0);
			continue;
		}
		bn_error_clear(&err);
		ck_assert_int_lt(auth_check(NULL, policy[i].ep, NULL, SA(far4), &err), 0);
		ck_assert_int_eq(err.status, 403);
		ck_assert_str_eq(err.code, BN_E_FORBIDDEN);
		ck_assert_str_eq(err.message,
				 "this server has no token file and only serves loopback clients");
		bn_error_clear(&err);
		ck_assert_int_lt(auth_check(NULL, policy[i].ep, "Bearer " T_ADMIN, SA(far6), &err),
				 0);
		ck_assert_int_eq(err.status, 403);
		/* a client whose address is unknown is not a loopback one */
		bn_error_clear(&err);
		ck_assert_int_lt(auth_check(NULL, policy[i].ep, NULL, NULL, &err), 0);
		ck_assert_int_eq(err.status, 403);
	}
}
END_TEST

static Suite *auth_suite(void)
{
	Suite *s = suite_create("auth");
	TCase *file = tcase_create("token_file");
	TCase *compare = tcase_create("compare");
	TCase *pol = tcase_create("policy");

	tcase_add_test(file, test_good_files);
	tcase_add_test(file, test_token_lengths);
	tcase_add_test(file, test_bad_lines);
	tcase_add_test(file, test_long_lines);
	tcase_add_test(file, test_nul_byte);
	tcase_add_test(file, test_missing_file);
	tcase_add_test(file, test_reload);
	suite_add_tcase(s, file);
	tcase_add_test(compare, test_token_equal);
	suite_add_tcase(s, compare);
	tcase_add_test(pol, test_endpoint_roles);
	tcase_add_test(pol, test_page);
	tcase_add_test(pol, test_matrix);
	tcase_add_test(pol, test_unauthorized);
	tcase_add_test(pol, test_loopback_addresses);
	tcase_add_test(pol, test_no_token_file);
	suite_add_tcase(s, pol);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(auth_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
