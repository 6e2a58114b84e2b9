/*
 * bench: the ingest benchmark of bnstatd (docs/PERFORMANCE.md, "Ingest:
 * `make bench`"). This file is its main flow: the runs of the sink, of
 * each body form against its own bnstatd, of the memory mode, and main();
 * the parts are the bench_ingest_*.c files (bench_ingest.h).
 *
 * One program, one run, everything side by side on the same machine:
 *
 *   - sink: a bare libmicrohttpd server inside this process, configured like
 *     bnstatd's (internal polling thread pool, epoll, same thread count),
 *     that reads each POST body into memory, drops it and answers {}: the
 *     ceiling for a given body;
 *   - bnstatd, spawned as a child process on a temporary database, fed
 *     ResNet-50 sized uploads as safetensors, JSON with base64 arrays and
 *     JSON with number arrays;
 *   - in process, one thread: fvcore's _PopulationVarianceEstimator update
 *     in float32 (what PreciseBN users run today) and jansson's json_loadb
 *     alone on the two JSON bodies.
 *
 * The load generator is a minimal HTTP/1.1 keep-alive client on raw
 * non-blocking sockets driven by epoll, with the request bodies rendered
 * once up front and sent with writev, so that it costs little next to the
 * server. Workers upload as in training: every worker sends its batch of
 * step s, then all wait for each other (a barrier), then step s+1.
 *
 * tests/bench/README.md says how each number is measured and which file
 * does what.
 */
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/statvfs.h>

#include "bench_http.h"
#include "bench_ingest.h"
#include "bench_proc.h"
#include "bench_spawn.h"
#include "bench_util.h"

/* ------------------------------------------------------------------------ */
/* the runs */

static void run_sink_cells(void)
{
	struct sink s;
	int f;
	size_t j;
	bool any_form = false;

	for (f = 0; f < F_COUNT; f++)
		any_form = any_form || opt.run_form[f];
	sink_start(&s);
	note("sink listening on 127.0.0.1:%u with %zu threads", s.port, s.n_tids);
	for (f = 0; f < F_COUNT; f++) {
		if (any_form && !opt.run_form[f])
			continue;
		for (j = 0; j < opt.n_conns; j++) {
			struct row *r = row_add(T_SINK, (enum form)f, opt.conns[j]);

			cell_setup(&r->cell, T_SINK, (enum form)f, opt.conns[j], s.port);
			r->cell.sink = &s;
			note("sink %s c%u ...", form_names[f], opt.conns[j]);
			cell_run(&r->cell);
			note("  %" PRIu64 " uploads in %.2f s", r->cell.ok, r->cell.elapsed);
			cell_free(&r->cell);
		}
	}
	sink_stop(&s);
}

/* One upload outside the timing: is the form supported, is our body right? */
static int probe(const struct daemon *d, enum form f, char *why, size_t size)
{
	struct sbuf body = { 0 }, reply = { 0 };
	int status;

	body_render(&body, f, 0, 0, 0);
	status = http_simple(d->port, opt.timeout, "POST", "/v1/runs/bench-probe/batches",
			     f == F_ST ? "application/octet-stream" : "application/json", body.p,
			     body.len, &reply);
	if (status == 415)
		snprintf(why, size, "unsupported (415)");
	else if (status != 200)
		snprintf(why, size, "probe upload answered %d: `%.150s`", status,
			 reply.p ? reply.p : "");
	sb_free(&body);
	sb_free(&reply);
	return status;
}

static void run_daemon_form(enum form f)
{
	struct daemon d;
	size_t j;
	int status;
	char why[256];

	if (daemon_start(&d) < 0) {
		for (j = 0; j < opt.n_conns; j++) {
			struct row *r = row_add(T_DAEMON, f, opt.conns[j]);

			r->failed = true;
			snprintf(r->why, sizeof(r->why), "bnstatd did not start");
		}
		return;
	}
	note("bnstatd %s: pid %d, port %u, db %s", form_names[f], (int)d.pid, d.port, d.db);
	mem[f].ran = true;
	mem[f].rss_start = proc_status_kb(d.pid, "VmRSS");
	status = probe(&d, f, why, sizeof(why));
	for (j = 0; j < opt.n_conns; j++) {
		struct row *r = row_add(T_DAEMON, f, opt.conns[j]);

		if (status == 200 && daemon_gone(&d, why, sizeof(why))) {
			r->failed = true;
			snprintf(r->why, sizeof(r->why), "%s", why);
			continue;
		}
		if (status != 200) {
			r->unsupported = status == 415;
			r->failed = status != 415;
			snprintf(r->why, sizeof(r->why), "%s", why);
			continue;
		}
		cell_setup(&r->cell, T_DAEMON, f, opt.conns[j], d.port);
		r->cell.daemon = &d;
		note("bnstatd %s c%u ...", form_names[f], opt.conns[j]);
		cell_run(&r->cell);
		note("  %" PRIu64 " uploads in %.2f s; checking", r->cell.ok, r->cell.elapsed);
		if (daemon_gone(&d, why, sizeof(why))) {
			note("%s during the cell", why);
			r->verify.ran = true;
			sb_printf(&r->verify.text, "%s during the cell", why);
			print_log_tail(d.log);
		} else {
			verify_cell(&r->cell, &r->verify);
		}
		mem[f].steps += r->cell.steps_done;
		cell_free(&r->cell);
	}
	if (status != 200)
		note("bnstatd %s: %s", form_names[f], why);
	mem[f].rss_end = proc_status_kb(d.pid, "VmRSS");
	mem[f].hwm = proc_status_kb(d.pid, "VmHWM");
	mem[f].db_mib = dir_mib(d.dir, "bench.db");
	mem[f].exit_status = daemon_stop(&d);
	if (mem[f].exit_status != 0 && !d.exited)
		print_log_tail(d.log);
	if (opt.keep)
		note("kept %s", d.dir);
	else
		dir_remove(d.dir);
}

/* --uploads-rss N: many uploads through one daemon, RSS sampled as it goes. */
static int run_rss(void)
{
	struct daemon d;
	struct cell c;
	enum form f = F_COUNT;
	char why[256];
	int status = 0, ff, exit_status;
	size_t i;
	long rss0, rss1, hwm;
	double db;
	struct verify v = { 0 };

	{
		/* bnstatd keeps one aggregate row per (step, layer): 5 doubles a
		 * channel, whatever the number of workers */
		uint64_t per_step = (uint64_t)opt.conns[0] * opt.batches_per_step;
		double steps = ceil((double)opt.uploads_rss / (double)per_step);
		double need = steps * (double)n_channels * 5 * 8 * 1.1;
		struct statvfs sv;

		if (statvfs(opt.tmpdir, &sv) == 0 &&
		    need > 0.5 * (double)sv.f_bavail * (double)sv.f_frsize)
			die("--uploads-rss %" PRIu64 " at %u conns x %u per step is %.0f steps, "
			    "about %.1f GiB of database, more than half the free space of %s; "
			    "use more --batches-per-step (a PreciseBN pass: many batches at one "
			    "step) or more --conns",
			    opt.uploads_rss, opt.conns[0], opt.batches_per_step, steps,
			    need / 1073741824.0, opt.tmpdir);
	}
	if (daemon_start(&d) < 0)
		return 1;
	for (ff = 0; ff < F_COUNT && f == F_COUNT; ff++) {
		if (!opt.run_form[ff])
			continue;
		status = probe(&d, (enum form)ff, why, sizeof(why));
		if (status == 200)
			f = (enum form)ff;
		else
			note("%s: %s", form_names[ff], why);
	}
	if (f == F_COUNT) {
		daemon_stop(&d);
		dir_remove(d.dir);
		die("--uploads-rss: no body form of --forms is accepted by this bnstatd");
	}
	rss0 = proc_status_kb(d.pid, "VmRSS");
	cell_setup(&c, T_DAEMON, f, opt.conns[0], d.port);
	snprintf(c.run, sizeof(c.run), "bench-rss-%s", form_names[f]);
	c.daemon = &d;
	c.max_uploads = opt.uploads_rss;
	c.rss_every = opt.uploads_rss / 10 ? opt.uploads_rss / 10 : 1;
	c.rss_next = c.rss_every;
	note("--uploads-rss %" PRIu64 ": %s, %u conns, %u per worker per step, at most %.0f s; "
	     "the database grows by about %.1f MiB per step",
	     opt.uploads_rss, form_names[f], c.conns, c.k, c.seconds,
	     (double)n_channels * 5 * 8 / 1048576.0);
	cell_run(&c);
	rss1 = proc_status_kb(d.pid, "VmRSS");
	hwm = proc_status_kb(d.pid, "VmHWM");
	db = dir_mib(d.dir, "bench.db");
	if (daemon_gone(&d, why, sizeof(why))) {
		v.ran = true;
		sb_printf(&v.text, "%s during the run", why);
		print_log_tail(d.log);
	} else {
		verify_cell(&c, &v);
	}

	printf("## bnstatd memory over %" PRIu64 " uploads (%s)\n\n", c.ok, form_names[f]);
	printf("| body | conns | uploads | errors | seconds | uploads/s | RSS start MiB | "
	       "RSS end MiB | peak RSS MiB | database MiB | steps |\n"
	       "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
	printf("| %s | %u | %" PRIu64 " | %" PRIu64 " | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f "
	       "| %zu |\n\n",
	       form_names[f], c.conns, c.ok, c.http_err + c.io_err, c.elapsed,
	       (double)c.ok / c.elapsed, kb_mib(rss0), kb_mib(rss1), kb_mib(hwm), db, c.steps_done);
	printf("RSS (MiB) after N uploads: 0: %.1f", kb_mib(rss0));
	for (i = 0; i < c.n_rss; i++)
		printf(", %" PRIu64 ": %.1f", c.rss_at[i], kb_mib(c.rss_kb[i]));
	printf(", end: %.1f\n\n", kb_mib(rss1));
	printf("- correctness: %s %s\n", v.ok ? "ok" : "**FAILED**", v.text.p);
	if (c.http_err + c.io_err > 0)
		printf("- errors: last `%s`\n", c.last_err);
	cell_free(&c);
	exit_status = daemon_stop(&d);
	printf("- bnstatd exit status after SIGTERM: %d\n", exit_status);
	if (opt.keep)
		note("kept %s", d.dir);
	else
		dir_remove(d.dir);
	return v.ok && exit_status == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	struct inproc ip[3];
	size_t n_ip = 0, i;
	int f, rc = 0;
	bool any_daemon = false;

	bench_prog = "bench";
	signal(SIGPIPE, SIG_IGN);
	parse_options(argc, argv);
	layers_init();
	for (f = 0; f < F_COUNT; f++)
		any_daemon = any_daemon || opt.run_form[f];
	if (opt.dump_form >= 0) {
		struct sbuf b = { 0 };

		opt.variants = 1;
		make_variants();
		body_render(&b, (enum form)opt.dump_form, 0, 0, 0);
		return fwrite(b.p, 1, b.len, stdout) == b.len && fflush(stdout) == 0 ? 0 : 1;
	}
	if ((any_daemon || opt.uploads_rss) && access(opt.bnstatd, X_OK) != 0)
		die("bnstatd not found or not executable: %s (use --bnstatd PATH or BNSTATD)",
		    opt.bnstatd);
	note("rendering %u variants of the three bodies", opt.variants);
	make_variants();
	print_header(argc, argv);
	if (opt.uploads_rss > 0)
		return run_rss();

	/* in-process baselines first, while nothing else of ours runs */
	if (opt.run_estimator) {
		note("fvcore estimator in process ...");
		bench_estimator(&ip[n_ip++]);
	}
	if (opt.run_parse) {
		note("json_loadb in process ...");
		bench_parse(&ip[n_ip++], F_JSON);
		bench_parse(&ip[n_ip++], F_B64);
	}
	if (opt.run_sink)
		run_sink_cells();
	for (f = 0; f < F_COUNT; f++)
		if (opt.run_form[f])
			run_daemon_form((enum form)f);

	print_table();
	print_inproc(ip, n_ip);
	print_memory();
	for (i = 0; i < n_rows; i++) {
		if (rows[i].failed || (rows[i].verify.ran && !rows[i].verify.ok))
			rc = 1;
		sb_free(&rows[i].verify.text);
	}
	for (f = 0; f < F_COUNT; f++)
		if (mem[f].ran && mem[f].exit_status != 0)
			rc = 1;
	return rc;
}
