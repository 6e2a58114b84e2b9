/*
 * bench_query_options.c: the command line of the query benchmark
 * (tests/bench/README.md, "Query benchmark").
 */
#include "bench_query.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

struct query_options opt;
unsigned url_port;

static unsigned long long parse_ull(const char *s, const char *what, unsigned long long max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (s == NULL || *s == '\0' || *s == '-')
		die("%s: not a number: '%s'", what, s ? s : "");
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max)
		die("%s: not a number in 0..%llu: '%s'", what, max, s);
	return v;
}

static void usage(void)
{
	printf("Usage: bench_query [OPTION]... [-- BNSTATD-ARG...]\n"
	       "Query latency of bnstatd on a long ResNet-50 run (Markdown report on stdout).\n\n"
	       "  --bnstatd PATH          the daemon (default: $BNSTATD, else ./src/bnstatd)\n"
	       "  --url http://127.0.0.1:PORT  use a running bnstatd instead of spawning one\n"
	       "                          (only 127.0.0.1/localhost; no restart measurement)\n"
	       "  --run NAME              the run (default: bench-query)\n"
	       "  --steps N               steps to fill, 0..N-1 (default: 10000)\n"
	       "  --conns N               upload connections, one range of steps each (default: "
	       "4)\n"
	       "  --reps N                repetitions of each warm query (default: 5)\n"
	       "  --form auto|json|safetensors  upload body (default: auto = safetensors if the\n"
	       "                          server takes it, else JSON with base64 f32 arrays)\n"
	       "  --replay-cache-mb N     passed to the spawned bnstatd\n"
	       "  --tmpdir DIR            where the temporary directory goes (default: $TMPDIR or "
	       "/tmp)\n"
	       "  --db FILE               spawn bnstatd on FILE instead of a temporary database\n"
	       "                          (FILE is never deleted)\n"
	       "  --no-fill               measure the run as it is (its last step is N-1)\n"
	       "  --no-late               skip the late upload (it adds a batch to step N/2)\n"
	       "  --no-restart            skip the restart of the spawned daemon\n"
	       "  --timeout S             limit per request in seconds (default: 1800)\n"
	       "  --fill-timeout S        limit for the whole fill in seconds (default: 21600)\n"
	       "  --keep                  keep the temporary directory (database and log)\n"
	       "  -h, --help              this help\n\n"
	       "Arguments after -- go to the spawned bnstatd (default: --synchronous normal).\n");
}

void parse_args(int argc, char **argv)
{
	int i;
	bool daemon_args_given = false;

	opt.bnstatd = env_or("BNSTATD", "./src/bnstatd");
	opt.run = "bench-query";
	opt.tmpdir = env_or("TMPDIR", "/tmp");
	opt.steps = 10000;
	opt.conns = 4;
	opt.reps = 5;
	opt.timeout = 1800;
	opt.fill_timeout = 21600;
	opt.form = FORM_AUTO;
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = NULL;

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage();
			exit(0);
		} else if (strcmp(a, "--") == 0) {
			for (i++; i < argc; i++) {
				if (opt.n_daemon_args == MAX_DAEMON_ARGS)
					die("at most %d bnstatd arguments", MAX_DAEMON_ARGS);
				opt.daemon_args[opt.n_daemon_args++] = argv[i];
			}
			daemon_args_given = true;
		} else if (strcmp(a, "--bnstatd") == 0) {
			v = opt_value(argc, argv, &i);
			opt.bnstatd = v;
		} else if (strcmp(a, "--url") == 0) {
			v = opt_value(argc, argv, &i);
			opt.url = v;
		} else if (strcmp(a, "--run") == 0) {
			v = opt_value(argc, argv, &i);
			opt.run = v;
		} else if (strcmp(a, "--steps") == 0) {
			v = opt_value(argc, argv, &i);
			opt.steps = parse_ull(v, "--steps", 100000000ULL);
		} else if (strcmp(a, "--conns") == 0) {
			v = opt_value(argc, argv, &i);
			opt.conns = (unsigned)parse_ull(v, "--conns", MAX_CONNS);
		} else if (strcmp(a, "--reps") == 0) {
			v = opt_value(argc, argv, &i);
			opt.reps = (unsigned)parse_ull(v, "--reps", MAX_REPS);
		} else if (strcmp(a, "--form") == 0) {
			v = opt_value(argc, argv, &i);
			if (strcmp(v, "auto") == 0)
				opt.form = FORM_AUTO;
			else if (strcmp(v, "json") == 0)
				opt.form = FORM_JSON;
			else if (strcmp(v, "safetensors") == 0)
				opt.form = FORM_SAFETENSORS;
			else
				die("--form: auto, json or safetensors, not '%s'", v);
		} else if (strcmp(a, "--replay-cache-mb") == 0) {
			v = opt_value(argc, argv, &i);
			opt.replay_cache_mb = (unsigned)parse_ull(v, "--replay-cache-mb", 1u << 20);
		} else if (strcmp(a, "--tmpdir") == 0) {
			v = opt_value(argc, argv, &i);
			opt.tmpdir = v;
		} else if (strcmp(a, "--db") == 0) {
			v = opt_value(argc, argv, &i);
			opt.db = v;
		} else if (strcmp(a, "--no-fill") == 0) {
			opt.no_fill = true;
		} else if (strcmp(a, "--no-late") == 0) {
			opt.no_late = true;
		} else if (strcmp(a, "--no-restart") == 0) {
			opt.no_restart = true;
		} else if (strcmp(a, "--timeout") == 0) {
			v = opt_value(argc, argv, &i);
			opt.timeout = (double)parse_ull(v, "--timeout", 86400);
		} else if (strcmp(a, "--fill-timeout") == 0) {
			v = opt_value(argc, argv, &i);
			opt.fill_timeout = (double)parse_ull(v, "--fill-timeout", 7 * 86400);
		} else if (strcmp(a, "--keep") == 0) {
			opt.keep = true;
		} else {
			die("unknown option '%s' (see --help)", a);
		}
	}
	if (!daemon_args_given) {
		opt.daemon_args[opt.n_daemon_args++] = "--synchronous";
		opt.daemon_args[opt.n_daemon_args++] = "normal";
	}
	if (opt.conns == 0)
		die("--conns: 0");
	if (opt.reps == 0)
		die("--reps: 0");
	if (opt.timeout <= 0 || opt.fill_timeout <= 0)
		die("--timeout and --fill-timeout must be > 0");
	if (!opt.no_fill && opt.steps < 10)
		die("--steps: at least 10");
	if (!opt.no_fill && opt.steps < opt.conns)
		die("--steps (%llu) must be at least --conns (%u)", opt.steps, opt.conns);
	for (const char *p = opt.run; *p; p++)
		if (!(p[0] >= 'A' && p[0] <= 'Z') && !(p[0] >= 'a' && p[0] <= 'z') &&
		    !(p[0] >= '0' && p[0] <= '9') && p[0] != '.' && p[0] != '_' && p[0] != '-')
			die("--run: names are [A-Za-z0-9._-]");
	if (opt.url != NULL) {
		const char *h = opt.url, *colon;

		if (strncmp(h, "http://", 7) == 0)
			h += 7;
		if (strncmp(h, "127.0.0.1:", 10) != 0 && strncmp(h, "localhost:", 10) != 0)
			die("--url: only http://127.0.0.1:PORT (or localhost), not '%s'", opt.url);
		colon = strchr(h, ':');
		url_port = (unsigned)strtoul(colon + 1, NULL, 10);
		if (url_port == 0 || url_port > 65535)
			die("--url: no port in '%s'", opt.url);
		if (opt.db != NULL)
			die("--db is for the spawned daemon; not with --url");
		opt.no_restart = true;
	}
	if (opt.no_fill && opt.url == NULL && opt.db == NULL)
		die("--no-fill needs --url or --db (an existing run)");
}
