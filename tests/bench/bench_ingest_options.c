/*
 * bench_ingest_options.c: the command line of the ingest benchmark
 * (tests/bench/README.md, "Options").
 */
#include "bench_ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

const char *const form_names[F_COUNT] = { "safetensors", "b64", "json" };

struct options opt;

void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"Usage: %s [OPTION]... [BNSTATD]\n"
		"The ingest benchmark of bnstatd: a bare libmicrohttpd sink, bnstatd with\n"
		"safetensors, base64 and JSON-number bodies, and the in-process baselines,\n"
		"side by side. Prints a Markdown report on stdout, progress on stderr.\n\n"
		"  --bnstatd PATH          the daemon (default: $BNSTATD, else ./src/bnstatd)\n"
		"  --seconds S             length of each cell (default 5)\n"
		"  --uploads N             or: uploads per cell (a count; time still bounds it)\n"
		"  --conns LIST            concurrent connections = workers (default 8,64)\n"
		"  --forms LIST            of sink,safetensors,b64,json,estimator,parse\n"
		"                          (default: all)\n"
		"  --threads N             bnstatd --threads and the sink's pool (default 4)\n"
		"  --batches-per-step K    uploads per worker per step, seq 0..K-1 (default 1)\n"
		"  --ema                   each upload also carries the worker's EMA of every\n"
		"                          layer (ema_mean, ema_var), as a training job sends\n"
		"  --client-threads N      load generator threads (default 2)\n"
		"  --variants N            distinct value sets, rendered up front (default 8)\n"
		"  --timeout S             per request (default 60)\n"
		"  --daemon-arg ARG        pass ARG to bnstatd (repeat: --daemon-arg\n"
		"                          --synchronous --daemon-arg normal)\n"
		"  --uploads-rss N         memory mode: N uploads of the first bnstatd form\n"
		"                          of --forms at the first --conns, RSS sampled as it\n"
		"                          goes (bounded by --seconds, default then 600)\n"
		"  --tmpdir DIR            where the temporary database goes ($TMPDIR, /tmp)\n"
		"  --keep                  keep the temporary directories\n"
		"  --dump-body FORM        write one upload body (rank0, step 0) to stdout\n"
		"                          and exit (to check a decoder against it)\n"
		"  -h, --help              this text\n",
		argv0);
}

static unsigned long parse_ulong(const char *s, const char *what, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v > max || s[0] == '-')
		die("%s: not a number in 0..%lu: '%s'", what, max, s);
	return v;
}

/* parse_ulong(), and 0 refused ("<what>: 0"). */
static unsigned long parse_positive(const char *s, const char *what, unsigned long max)
{
	unsigned long v = parse_ulong(s, what, max);

	if (v == 0)
		die("%s: 0", what);
	return v;
}

static void parse_forms(const char *list)
{
	char *copy = strdup(list), *save = NULL, *tok;
	int f;

	if (copy == NULL)
		die("out of memory");
	opt.run_sink = opt.run_estimator = opt.run_parse = false;
	for (f = 0; f < F_COUNT; f++)
		opt.run_form[f] = false;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		bool known = false;

		for (f = 0; f < F_COUNT; f++)
			if (strcmp(tok, form_names[f]) == 0)
				opt.run_form[f] = known = true;
		if (strcmp(tok, "sink") == 0)
			opt.run_sink = known = true;
		if (strcmp(tok, "estimator") == 0)
			opt.run_estimator = known = true;
		if (strcmp(tok, "parse") == 0)
			opt.run_parse = known = true;
		if (!known)
			die("--forms: unknown form '%s' (sink, safetensors, b64, json, "
			    "estimator, parse)",
			    tok);
	}
	free(copy);
}

static void parse_conns(const char *list)
{
	char *copy = strdup(list), *save = NULL, *tok;

	if (copy == NULL)
		die("out of memory");
	opt.n_conns = 0;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (opt.n_conns == sizeof(opt.conns) / sizeof(opt.conns[0]))
			die("--conns: at most 16 values");
		opt.conns[opt.n_conns] = (unsigned)parse_ulong(tok, "--conns", MAX_CONNS);
		if (opt.conns[opt.n_conns] == 0)
			die("--conns: 0 connections");
		opt.n_conns++;
	}
	if (opt.n_conns == 0)
		die("--conns: empty list");
	free(copy);
}

void parse_options(int argc, char **argv)
{
	int i;

	opt.seconds = 5;
	opt.conns[0] = 8;
	opt.conns[1] = 64;
	opt.n_conns = 2;
	parse_forms("sink,safetensors,b64,json,estimator,parse");
	opt.threads = 4;
	opt.batches_per_step = 1;
	opt.client_threads = 2;
	opt.variants = 8;
	opt.timeout = 60;
	opt.dump_form = -1;
	opt.tmpdir = env_or("TMPDIR", "/tmp");
	opt.bnstatd = env_or("BNSTATD", "./src/bnstatd");

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = NULL;

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout, argv[0]);
			exit(0);
		} else if (strcmp(a, "--bnstatd") == 0) {
			v = opt_value(argc, argv, &i);
			opt.bnstatd = v;
		} else if (strcmp(a, "--seconds") == 0) {
			char *end;

			v = opt_value(argc, argv, &i);
			opt.seconds = strtod(v, &end);
			if (*end != '\0' || !(opt.seconds > 0) || opt.seconds > 86400)
				die("--seconds: not a positive number: '%s'", v);
			opt.seconds_given = true;
		} else if (strcmp(a, "--uploads") == 0) {
			v = opt_value(argc, argv, &i);
			opt.uploads = parse_ulong(v, a, 1000000000ul);
		} else if (strcmp(a, "--uploads-rss") == 0) {
			v = opt_value(argc, argv, &i);
			opt.uploads_rss = parse_ulong(v, a, 1000000000ul);
		} else if (strcmp(a, "--conns") == 0) {
			v = opt_value(argc, argv, &i);
			parse_conns(v);
		} else if (strcmp(a, "--forms") == 0) {
			v = opt_value(argc, argv, &i);
			parse_forms(v);
		} else if (strcmp(a, "--threads") == 0) {
			v = opt_value(argc, argv, &i);
			opt.threads = (unsigned)parse_positive(v, a, 256);
		} else if (strcmp(a, "--batches-per-step") == 0) {
			v = opt_value(argc, argv, &i);
			opt.batches_per_step = (unsigned)parse_positive(v, a, 100000);
		} else if (strcmp(a, "--ema") == 0) {
			opt.ema = true;
		} else if (strcmp(a, "--client-threads") == 0) {
			v = opt_value(argc, argv, &i);
			opt.client_threads = (unsigned)parse_positive(v, a, 256);
		} else if (strcmp(a, "--variants") == 0) {
			v = opt_value(argc, argv, &i);
			opt.variants = (unsigned)parse_positive(v, a, 1024);
		} else if (strcmp(a, "--timeout") == 0) {
			v = opt_value(argc, argv, &i);
			opt.timeout = (double)parse_positive(v, a, 86400);
		} else if (strcmp(a, "--daemon-arg") == 0) {
			v = opt_value(argc, argv, &i);
			if (opt.n_daemon_args ==
			    sizeof(opt.daemon_args) / sizeof(opt.daemon_args[0]))
				die("too many --daemon-arg");
			opt.daemon_args[opt.n_daemon_args++] = v;
		} else if (strcmp(a, "--tmpdir") == 0) {
			v = opt_value(argc, argv, &i);
			opt.tmpdir = v;
		} else if (strcmp(a, "--keep") == 0) {
			opt.keep = true;
		} else if (strcmp(a, "--dump-body") == 0) {
			int f;

			v = opt_value(argc, argv, &i);
			for (f = 0; f < F_COUNT && strcmp(v, form_names[f]) != 0; f++)
				;
			if (f == F_COUNT)
				die("--dump-body: one of safetensors, b64, json");
			opt.dump_form = f;
		} else if (a[0] == '-' && a[1] != '\0') {
			usage(stderr, argv[0]);
			die("unknown option '%s'", a);
		} else {
			opt.bnstatd = a;
		}
	}
	if (opt.uploads > 0 && !opt.seconds_given)
		opt.seconds = 600; /* the count bounds the cell; time is only a safety net */
	if (opt.uploads_rss > 0 && !opt.seconds_given)
		opt.seconds = 600;
}
