/*
 * fuzz_config: the config file reader (config_parse() with -c FILE,
 * src/config.c). The input is the file. docs/OPERATIONS.md, "Options and
 * the config file", defines it by the flags: each `name = value` line
 * sets what `--name=value` sets. So a reference reader written here
 * splits the file into lines, skips blank and '#' lines, cuts each other
 * at its first '=', trims the key and the value (spaces, tabs; CR, LF at
 * the end), takes off one pair of double quotes, and gives the pairs as
 * flags to config_parse(). The file must give the same answer: accepted
 * with the same configuration, or refused (a 400; which error comes
 * first may differ, as the flags are checked for unknown names before
 * any value); a line without '=' or with a NUL byte must be refused, naming its
 * line (or an earlier one). No partial line ever becomes an entry.
 */
#include "fuzz_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

static struct config by_file, by_flags;

/* s[0..len) trimmed as the format says: spaces and tabs, and CR/LF at the end. */
static void trim(const char **s, size_t *len)
{
	while (*len > 0 && (**s == ' ' || **s == '\t')) {
		(*s)++;
		(*len)--;
	}
	while (*len > 0 && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t' ||
			    (*s)[*len - 1] == '\r' || (*s)[*len - 1] == '\n'))
		(*len)--;
}

/*
 * The flags for the file: argv[1..] (argv[0] "bnstatd"), NULL-terminated,
 * new strings; *argc. Returns the first line that cannot be a flag (no '=',
 * a NUL byte, the key config), 0 when none.
 */
static unsigned ref_flags(const uint8_t *data, size_t size, char ***argv, int *argc)
{
	const char *s = (const char *)data;
	size_t at = 0;
	unsigned line = 0;
	char **v = calloc(size + 2, sizeof(*v));

	FUZZ_ASSERT(v != NULL, "out of memory");
	v[0] = strdup("bnstatd");
	*argc = 1;
	*argv = v;
	while (at < size) {
		const char *nl = memchr(s + at, '\n', size - at), *p = s + at, *eq, *key, *val;
		size_t len = nl ? (size_t)(nl - p) : size - at, klen, vlen;

		line++;
		at += len + (nl != NULL);
		if (memchr(p, '\0', len) != NULL)
			return line;
		trim(&p, &len);
		if (len == 0 || p[0] == '#')
			continue;
		eq = memchr(p, '=', len);
		if (eq == NULL)
			return line;
		key = p;
		klen = (size_t)(eq - p);
		val = eq + 1;
		vlen = len - klen - 1;
		trim(&key, &klen);
		trim(&val, &vlen);
		if (klen == 6 && memcmp(key, "config", 6) == 0)
			return line; /* not an option: --config= would name another file */
		if (vlen >= 2 && val[0] == '"' && val[vlen - 1] == '"') {
			val++;
			vlen -= 2;
		}
		v[*argc] = malloc(klen + vlen + 4);
		FUZZ_ASSERT(v[*argc] != NULL, "out of memory");
		snprintf(v[*argc], klen + vlen + 4, "--%.*s=%.*s", (int)klen, key, (int)vlen, val);
		(*argc)++;
	}
	return 0;
}

/* Strings NUL-terminated and numbers in range: a configuration the daemon can use. */
static void check_config(const struct config *c)
{
	FUZZ_ASSERT(strnlen(c->db, sizeof(c->db)) < sizeof(c->db) && c->db[0] != '\0', "db");
	FUZZ_ASSERT(strnlen(c->host, sizeof(c->host)) < sizeof(c->host), "host");
	FUZZ_ASSERT(strnlen(c->token_file, sizeof(c->token_file)) < sizeof(c->token_file),
		    "token_file");
	FUZZ_ASSERT(strnlen(c->log_file, sizeof(c->log_file)) < sizeof(c->log_file), "log_file");
	FUZZ_ASSERT(c->port <= 65535, "port %u", c->port);
	FUZZ_ASSERT(c->http.threads >= 1 && c->http.max_connections >= 1, "threads, connections");
	FUZZ_ASSERT(c->http.limits.max_layers >= 1 && c->http.limits.max_channels >= 1, "limits");
	FUZZ_ASSERT((c->tls_cert[0] == '\0') == (c->tls_key[0] == '\0'), "tls-cert without tls-key");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = fuzz_file(data, size);
	char *argv_file[] = { "bnstatd", "-c", (char *)path, NULL };
	struct bn_error ef, eg;
	char **argv;
	int argc, rf, rg;
	unsigned bad = ref_flags(data, size, &argv, &argc);

	memset(&by_file, 0, sizeof(by_file));
	memset(&by_flags, 0, sizeof(by_flags));
	bn_error_clear(&ef);
	bn_error_clear(&eg);
	rf = config_parse(&by_file, 3, argv_file, &ef);
	if (rf < 0) {
		FUZZ_ASSERT(rf == -EINVAL && ef.status == 400 && strcmp(ef.code, BN_E_INVALID) == 0,
			    "rc %d, %d %s", rf, ef.status, ef.code);
		FUZZ_ASSERT(ef.message[0] != '\0', "a refusal without a message");
	}
	if (bad > 0) {
		unsigned at = 0;
		const char *p = strstr(ef.message, path);

		FUZZ_ASSERT(rf < 0, "line %u has no '=' or a NUL byte, and the file is accepted", bad);
		FUZZ_ASSERT(p != NULL && sscanf(p + strlen(path), ":%u:", &at) == 1 && at >= 1 &&
				    at <= bad,
			    "\"%s\" names no line up to %u", ef.message, bad);
	} else {
		rg = config_parse(&by_flags, argc, argv, &eg);
		FUZZ_ASSERT((rf == 0) == (rg == 0), "file: %d (%s), flags: %d (%s)", rf, ef.message,
			    rg, eg.message);
		if (rf == 0) {
			check_config(&by_file);
			memset(by_file.config_file, 0, sizeof(by_file.config_file));
			by_file.http.host = by_flags.http.host = NULL;
			by_file.http.ui_dir = by_flags.http.ui_dir = NULL; /* point into each */
			FUZZ_ASSERT(memcmp(&by_file, &by_flags, sizeof(by_file)) == 0,
				    "the file and its flags give different configurations");
		} else {
			FUZZ_ASSERT(ef.status == eg.status && strcmp(ef.code, eg.code) == 0,
				    "file: %d %s (%s); flags: %d %s (%s)", ef.status, ef.code,
				    ef.message, eg.status, eg.code, eg.message);
		}
	}
	for (int i = 0; i < argc; i++)
		free(argv[i]);
	free(argv);
	return 0;
}
