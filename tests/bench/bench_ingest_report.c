/*
 * bench_ingest_report.c: the ingest benchmark's Markdown report on stdout:
 * the head (machine, versions, command line), the table of the HTTP
 * cells, the in-process rows, memory, storage and correctness. What each
 * column means: tests/bench/README.md, "What each column means".
 */
#include "bench_ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/utsname.h>

#include <jansson.h>
#include <microhttpd.h>

#include "bench_body.h"
#include "bench_proc.h"
#include "bench_spawn.h"
#include "bench_util.h"

struct row *rows;
size_t n_rows;
struct form_mem mem[F_COUNT];

struct row *row_add(enum target t, enum form f, unsigned conns)
{
	struct row *r;

	rows = xrealloc(rows, (n_rows + 1) * sizeof(*rows));
	r = &rows[n_rows++];
	memset(r, 0, sizeof(*r));
	r->target = t;
	r->form = f;
	r->conns = conns;
	return r;
}

static const struct row *row_find(enum target t, enum form f, unsigned conns)
{
	size_t i;

	for (i = 0; i < n_rows; i++)
		if (rows[i].target == t && rows[i].form == f && rows[i].conns == conns &&
		    !rows[i].unsupported && !rows[i].failed)
			return &rows[i];
	return NULL;
}

static void machine_line(void)
{
	char model[256];
	struct utsname u;

	cpu_model(model, sizeof(model));
	uname(&u);
	printf("- machine: %ld CPUs online (nproc), %s, Linux %s %s\n",
	       sysconf(_SC_NPROCESSORS_ONLN), model, u.release, u.machine);
}

static void print_command(int argc, char **argv)
{
	int i;

	printf("- command: `");
	for (i = 0; i < argc; i++) {
		const char *a = argv[i];
		bool plain = *a != '\0' &&
			     strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				       "0123456789-_./=,:") == strlen(a);

		printf(plain ? "%s%s" : "%s'%s'", i ? " " : "", a);
	}
	printf("`\n");
}

void print_header(int argc, char **argv)
{
	char ver[256];
	struct sbuf b[F_COUNT] = { { 0 } };
	int f;

	for (f = 0; f < F_COUNT; f++)
		body_render(&b[f], (enum form)f, 0, 0, 0);
	spawn_version(opt.bnstatd, ver, sizeof(ver), true, "unknown version");
	printf("# bnstat ingest benchmark\n\n");
	machine_line();
	printf("- bnstatd: `%s` (%s), `--threads %u`", opt.bnstatd, ver, opt.threads);
	for (size_t i = 0; i < opt.n_daemon_args; i++)
		printf(" `%s`", opt.daemon_args[i]);
	printf("; libmicrohttpd %s, jansson %s\n", MHD_get_version(), jansson_version_str());
	print_command(argc, argv);
	printf("- workload: torchvision ResNet-50, %zu BatchNorm layers, %zu channels, "
	       "batch %d (count = %d·H·W per layer); body bytes: safetensors %zu, b64 %zu, "
	       "json %zu\n",
	       N_LAYERS, n_channels, NBS, NBS, b[F_ST].len, b[F_B64].len, b[F_JSON].len);
	printf("- each cell: N connections = N workers (`rank0`…), %u upload(s) per worker per "
	       "step%s, a barrier between steps, %s; %u client thread(s); one bnstatd per form on "
	       "a fresh database in %s\n\n",
	       opt.batches_per_step, opt.ema ? " with the worker's EMA of every layer" : "",
	       opt.uploads ? "bounded by --uploads" : "bounded by --seconds",
	       opt.client_threads, opt.tmpdir);
	for (f = 0; f < F_COUNT; f++)
		sb_free(&b[f]);
	fflush(stdout);
}

static void fmt_num(char *out, size_t size, double v, int prec)
{
	if (isnan(v))
		snprintf(out, size, "—");
	else
		snprintf(out, size, "%.*f", prec, v);
}

double kb_mib(long kb)
{
	return kb < 0 ? NAN : (double)kb / 1024.0;
}

void print_table(void)
{
	size_t i;

	printf("## Uploads over HTTP\n\n");
	printf("| target | body | conns | uploads | errors | uploads/s | MB/s | p50 ms | p99 ms "
	       "| server CPU ms/upload | server CPU %% of a core | client CPU ms/upload | vs sink "
	       "|\n");
	printf("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
	for (i = 0; i < n_rows; i++) {
		const struct row *r = &rows[i];
		const struct cell *c = &r->cell;
		const char *tname = r->target == T_SINK ? "sink" : "bnstatd";
		char ups[32], mbs[32], p50[32], p99[32], scpu[32], spct[32], ccpu[32], ratio[32];
		double rate, n;
		const struct row *s;

		if (r->unsupported || r->failed) {
			printf("| %s | %s | %u | — | — | %s | | | | | | | |\n", tname,
			       form_names[r->form], r->conns, r->why);
			continue;
		}
		n = c->ok > 0 ? (double)c->done : NAN;
		rate = c->elapsed > 0 ? (double)c->ok / c->elapsed : NAN;
		fmt_num(ups, sizeof(ups), rate, 1);
		fmt_num(mbs, sizeof(mbs),
			c->elapsed > 0 ? (double)c->bytes / c->elapsed / 1e6 : NAN, 1);
		fmt_num(p50, sizeof(p50), c->p50, 2);
		fmt_num(p99, sizeof(p99), c->p99, 2);
		fmt_num(scpu, sizeof(scpu), c->server_cpu_s * 1e3 / n, 3);
		fmt_num(spct, sizeof(spct), c->server_cpu_s / c->elapsed * 100, 0);
		fmt_num(ccpu, sizeof(ccpu), c->client_cpu_s * 1e3 / n, 3);
		s = row_find(T_SINK, r->form, r->conns);
		if (r->target == T_SINK)
			snprintf(ratio, sizeof(ratio), "1");
		else if (s != NULL && s->cell.ok > 0)
			fmt_num(ratio, sizeof(ratio), rate / ((double)s->cell.ok / s->cell.elapsed),
				2);
		else
			snprintf(ratio, sizeof(ratio), "—");
		printf("| %s | %s | %u | %" PRIu64 " | %" PRIu64 " | %s | %s | %s | %s | %s | %s "
		       "| %s | %s |\n",
		       tname, form_names[r->form], r->conns, c->ok, c->http_err + c->io_err, ups,
		       mbs, p50, p99, scpu, spct, ccpu, ratio);
	}
	printf("\n");
	for (i = 0; i < n_rows; i++) {
		const struct row *r = &rows[i];
		const struct cell *c = &r->cell;

		if (r->unsupported || r->failed || c->http_err + c->io_err + c->dup == 0)
			continue;
		printf("- %s %s c%u: %" PRIu64 " HTTP errors, %" PRIu64 " broken connections, "
		       "%" PRIu64 " duplicates",
		       r->target == T_SINK ? "sink" : "bnstatd", form_names[r->form], r->conns,
		       c->http_err, c->io_err, c->dup);
		if (c->http_err > 0) {
			printf("; statuses:");
			for (int s = 0; s < STATUS_MAX; s++)
				if (c->status[s] && s != 200)
					printf(" %d×%u", s, c->status[s]);
		}
		printf("; last: `%s`\n", c->last_err);
	}
}

void print_inproc(const struct inproc *ip, size_t n)
{
	size_t i, j;

	if (n == 0)
		return;
	printf("## In process, one thread\n\n");
	printf("| what | per second | MB/s | µs each |\n|---|--:|--:|--:|\n");
	for (i = 0; i < n; i++)
		printf("| %s | %.1f | %.1f | %.1f |\n", ip[i].what, ip[i].per_s, ip[i].mb_s,
		       ip[i].us_each);
	printf("\n");
	for (i = 0; i < n; i++) {
		if (strstr(ip[i].what, "json body") == NULL &&
		    strstr(ip[i].what, "b64 body") == NULL)
			continue;
		for (j = 0; j < opt.n_conns; j++) {
			enum form f = strstr(ip[i].what, "json body") ? F_JSON : F_B64;
			const struct row *r = row_find(T_DAEMON, f, opt.conns[j]);

			if (r == NULL || r->cell.elapsed <= 0)
				continue;
			printf("- bnstatd/%s at %u conns: %.1f uploads/s = %.2f × the rate of "
			       "`json_loadb` alone on one thread\n",
			       form_names[f], opt.conns[j], (double)r->cell.ok / r->cell.elapsed,
			       (double)r->cell.ok / r->cell.elapsed / ip[i].per_s);
		}
	}
	printf("\n");
}

void print_memory(void)
{
	int f;
	size_t i;
	bool any = false;

	for (f = 0; f < F_COUNT; f++)
		any = any || mem[f].ran;
	if (!any)
		return;
	printf("## bnstatd memory and storage\n\n");
	printf("| body | RSS at start MiB | RSS at end MiB | peak RSS (VmHWM) MiB | database MiB | "
	       "steps stored | exit |\n|---|--:|--:|--:|--:|--:|---|\n");
	for (f = 0; f < F_COUNT; f++) {
		if (!mem[f].ran)
			continue;
		char a[32], b[32], c[32];

		fmt_num(a, sizeof(a), kb_mib(mem[f].rss_start), 1);
		fmt_num(b, sizeof(b), kb_mib(mem[f].rss_end), 1);
		fmt_num(c, sizeof(c), kb_mib(mem[f].hwm), 1);
		printf("| %s | %s | %s | %s | %.1f | %zu | %s |\n", form_names[f], a, b, c,
		       mem[f].db_mib, mem[f].steps,
		       mem[f].exit_status == 0 ? "0 (SIGTERM)" : "**not 0**");
	}
	printf("\n## Correctness (bnstatd)\n\n");
	for (i = 0; i < n_rows; i++) {
		const struct row *r = &rows[i];

		if (r->target != T_DAEMON || !r->verify.ran)
			continue;
		printf("- %s %s, run `%s`: %s\n", r->verify.ok ? "ok" : "**FAILED**",
		       form_names[r->form], r->cell.run, r->verify.text.p);
	}
	printf("\n");
}
