/*
 * bench_query: query latency of bnstatd on a long ResNet-50 run.
 *
 * It fills one run with N steps (default 10,000) of ResNet-50 shaped
 * statistics -- one upload per step from worker rank0, seq 0, with the
 * worker's EMA, from several keep-alive connections that each upload their
 * own contiguous range of steps -- and then times the queries whose cost
 * grows with the length of the run:
 *
 *   - /compare?ema=worker (reads the window and one EMA row per layer),
 *   - /compare?ema=sim: the simulated EMA replays every step of every layer
 *     the first time (cold replay cache), then resumes from the cached
 *     checkpoint (every 64 steps) before the queried step (warm); a second
 *     momentum is a second set of checkpoints; a restart empties the cache,
 *   - /series over the whole run (one channel, every step),
 *   - /drift over the whole run (every layer, worker EMA and simulated EMA),
 *     against the window, a snapshot (precise=snapshot:) and a worker's EMA
 *     (precise=worker:),
 *   - /stats?window=100 as the reference point,
 *   - a late upload (a batch for step N/2 after step N-1 is in), which makes
 *     the checkpoints from N/2 on stale: the next sim compare replays from
 *     the checkpoint before N/2.
 *
 * Answers that must be equal are compared byte for byte (warm vs cold, and
 * the full replay after the restart vs the partial replay after the late
 * upload), so the benchmark also checks that the cache is exact.
 *
 * The client is a minimal HTTP/1.1 keep-alive client on raw sockets, only
 * to 127.0.0.1. Every loop is bounded by a count and a deadline. The report
 * is Markdown on stdout (ready for docs/PERFORMANCE.md); progress goes to
 * stderr. See "Query benchmark" in tests/bench/README.md.
 *
 * This file is the main flow (the sequence of queries and the report's
 * head); the parts are the bench_query_*.c files (bench_query.h). Build
 * it with `make tests/bench/bench_query`.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/utsname.h>

#include "bench_proc.h"
#include "bench_query.h"
#include "bench_util.h"

/* ------------------------------------------------------------------------ */
/* the report */

static void machine_line(void)
{
	char line[512], model[256];
	double mem_gib = 0;
	struct utsname u;
	FILE *f;

	cpu_model(model, sizeof(model));
	f = fopen("/proc/meminfo", "re");
	if (f != NULL) {
		while (fgets(line, sizeof(line), f))
			if (strncmp(line, "MemTotal:", 9) == 0)
				mem_gib = strtod(line + 9, NULL) / 1048576.0;
		fclose(f);
	}
	if (uname(&u) != 0)
		snprintf(u.release, sizeof(u.release), "?");
	printf("- machine: %ld CPUs online (nproc), %s, %.1f GiB RAM, Linux %s\n",
	       sysconf(_SC_NPROCESSORS_ONLN), model, mem_gib, u.release);
}

static void command_line(int argc, char **argv)
{
	int i;

	printf("- command: `");
	for (i = 0; i < argc; i++)
		printf("%s%s", i ? " " : "", argv[i]);
	printf("`\n");
}

/*
 * POST a snapshot of the run's latest step (window 1) under `label` on the
 * query connection; one kept from an earlier run (--no-fill) answers 200.
 */
static void snapshot_create(const char *label)
{
	struct http_resp r = { 0 };
	char path[600], body[200];
	int n = snprintf(body, sizeof(body), "{\"label\":\"%s\"}", label);
	int rc;

	snprintf(path, sizeof(path), "%s/snapshots", run_path);
	qconn.port = port_now();
	rc = http_do(&qconn, "POST", path, "application/json", body, (size_t)n, &r, opt.timeout);
	if (rc < 0)
		die("POST %s: %s", path, strerror(-rc));
	if (r.status != 201 && r.status != 200)
		die("POST %s: HTTP %d %.500s", path, r.status, r.body.p ? r.body.p : "");
	note("snapshot %s of the latest step: HTTP %d", label, r.status);
	free(r.body.p);
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
	char version[512], q[512];
	struct result *r, *cold01, *cold001, *late01 = NULL;
	double start_s, restart_s = -1, stop_s = -1, rss = -1, hwm = -1, rss_restart = -1,
			hwm_restart = -1;
	double final_db = -1;
	int64_t latest, older, late_step;
	bool spawned;
	unsigned mism = 0, checked = 0;
	size_t i;

	bench_prog = "bench_query";
	die_cleanup = cleanup; /* die() stops the daemon and removes the temporary files */
	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_args(argc, argv);
	layers_init();
	population_init();
	spawned = opt.url == NULL;
	snprintf(run_path, sizeof(run_path), "/v1/runs/%s", opt.run);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);

	fillres.estimate = (double)opt.steps * bytes_per_step(true);
	if (spawned) {
		if (access(opt.bnstatd, X_OK) != 0)
			die("cannot run bnstatd at %s (use --bnstatd PATH or $BNSTATD)",
			    opt.bnstatd);
		setup_paths();
		if (!opt.no_fill)
			check_disk(fillres.estimate);
		daemon_version(version, sizeof(version));
		start_s = now_s();
		daemon_start();
		note("bnstatd pid %d listening on 127.0.0.1:%u (db %s, started in %.2f s)",
		     (int)daemon_pid, daemon_port, db_path, now_s() - start_s);
	} else {
		snprintf(version, sizeof(version), "running at %s", opt.url);
		note("using the bnstatd at %s (no disk check: the database is not ours to see)",
		     opt.url);
	}

	if (!opt.no_fill) {
		fill();
		if (spawned) {
			char wal[PATH_MAX + 8];

			snprintf(wal, sizeof(wal), "%s-wal", db_path);
			fillres.db_main = file_bytes(db_path);
			fillres.db_wal = file_bytes(wal);
		}
		note("fill: %llu uploads in %.1f s = %.1f uploads/s; database %.2f GB + WAL %.2f "
		     "GB",
		     fillres.uploads, fillres.seconds, (double)fillres.uploads / fillres.seconds,
		     fillres.db_main / 1e9, fillres.db_wal / 1e9);
	}
	latest = run_latest_step();
	if (opt.no_fill)
		opt.steps = (unsigned long long)latest + 1;
	else if (latest != (int64_t)opt.steps - 1)
		note("the run's last step is %" PRId64 ", not %llu: it had data before", latest,
		     opt.steps - 1);
	older = latest / 4;
	late_step = latest / 2;
	if (older <= 0 || older >= latest)
		older = latest > 0 ? latest - 1 : 0;

	/* 1. the worker EMA; 5. stats as the reference */
	measure("compare?ema=worker&window=100", "n/a", opt.reps, NULL);
	measure("stats?window=100", "n/a", opt.reps, NULL);

	/* 2. the simulated EMA, momentum 0.1: cold, warm, older step */
	cold01 = measure("compare?ema=sim&momentum=0.1&window=100", "cold (first query)", 1, NULL);
	measure("compare?ema=sim&momentum=0.1&window=100", "warm", opt.reps, cold01->body);
	snprintf(q, sizeof(q), "compare?ema=sim&momentum=0.1&window=100&step=%" PRId64, older);
	measure(q, "warm", opt.reps, NULL);

	/* 3. a second momentum */
	cold001 =
		measure("compare?ema=sim&momentum=0.01&window=100", "cold (new momentum)", 1, NULL);
	measure("compare?ema=sim&momentum=0.01&window=100", "warm", opt.reps, cold001->body);
	daemon_rss(&rss, &hwm);

	/* 4. series over the whole run */
	measure("series?layer=layer4.2.bn3&channel=7", "n/a (replays 1 channel)", opt.reps, NULL);
	measure("series?layer=layer4.2.bn3&channel=7&points=500", "n/a (replays 1 channel)",
		opt.reps, NULL);
	measure("series?layer=bn1&channel=7", "n/a (replays 1 channel)", opt.reps, NULL);

	/*
	 * 4'. drift: every layer's metrics over the whole run; by default from
	 * the metrics the writer keeps per entry (once it has caught up with
	 * the fill), and the same answer computed from the arrays
	 * (window=auto&min_batches=1 selects the same rows), interleaved
	 */
	{
		double waited = wait_drift_kept(latest, 1800);

		if (waited < 0)
			note("the drift metrics were not kept through step %" PRId64
			     " within 1800 s",
			     latest - 1);
		else
			note("drift metrics kept through step %" PRId64 " %.1f s after the fill",
			     latest - 1, waited);
	}
	for (unsigned rep = 0; rep < opt.reps; rep++) {
		measure("drift?points=500", "kept per entry", 1, NULL);
		measure("drift?points=500&window=auto&min_batches=1", "computed (same answer)", 1,
			NULL);
	}
	measure("drift?points=500&ema=sim&momentum=0.1", "warm", opt.reps, NULL);
	/* 4''. drift against a snapshot (read once, no window) and against a worker's EMA */
	snapshot_create("bench-drift");
	measure("drift?points=500&precise=snapshot:bench-drift", "n/a", opt.reps, NULL);
	measure("drift?points=500&precise=worker:rank0&worker=rank0", "n/a", opt.reps, NULL);

	/* 6. a late upload into step N/2, then the simulated EMA again */
	if (!opt.no_late) {
		float *v = xmalloc(2 * n_channels * sizeof(float));
		struct sbuf body = { 0 }, hdr = { 0 };
		/* a new identity on every run of the benchmark, so that it is never a duplicate */
		struct batch x = { "late", late_step, (int64_t)time(NULL), v, v + n_channels,
				   NULL,   NULL };
		char label[128];

		gen_step(1, late_step, v, v + n_channels);
		body_of(used_form, &body, &hdr, &x);
		snprintf(label, sizeof(label), "POST batches (late: step %" PRId64 ", worker late)",
			 late_step);
		measure_upload(label, "invalidates >= step", &body);
		late01 = measure("compare?ema=sim&momentum=0.1&window=100", "after the late upload",
				 1, NULL);
		measure("compare?ema=sim&momentum=0.1&window=100", "warm", opt.reps, late01->body);
		free(v);
		free(body.p);
		free(hdr.p);
	}

	/* 2'. after a restart: the cache is empty; the full replay must agree */
	if (spawned && !opt.no_restart) {
		double t0 = now_s();

		http_conn_close(&qconn);
		daemon_stop(120);
		stop_s = now_s() - t0;
		t0 = now_s();
		daemon_start();
		restart_s = now_s() - t0;
		note("restarted bnstatd: stop %.2f s, start %.2f s (pid %d, port %u)", stop_s,
		     restart_s, (int)daemon_pid, daemon_port);
		r = measure("compare?ema=sim&momentum=0.1&window=100", "cold (after restart)", 1,
			    late01 ? late01->body : cold01->body);
		measure("compare?ema=sim&momentum=0.1&window=100", "warm", opt.reps, r->body);
		daemon_rss(&rss_restart, &hwm_restart);
	}
	http_conn_close(&qconn);

	for (i = 0; i < n_results; i++) {
		if (results[i].checked) {
			checked++;
			mism += results[i].mismatches;
		}
	}
	if (spawned) {
		char wal[PATH_MAX + 8];

		daemon_stop(120);
		snprintf(wal, sizeof(wal), "%s-wal", db_path);
		final_db = file_bytes(db_path) + file_bytes(wal);
	}

	/* the report */
	printf("### Query latency: %llu steps of ResNet-50 (bench_query)\n\n", opt.steps);
	machine_line();
	printf("- bnstatd: `%s`", version);
	if (spawned) {
		printf(", spawned with `--listen 127.0.0.1:0");
		if (opt.replay_cache_mb)
			printf(" --replay-cache-mb %u", opt.replay_cache_mb);
		for (i = 0; i < opt.n_daemon_args; i++)
			printf(" %s", opt.daemon_args[i]);
		printf("` (other options default)");
	}
	printf("\n");
	command_line(argc, argv);
	printf("- run `%s`: %llu steps (0..%" PRId64 ") x %zu BatchNorm layers (%zu channels), one "
	       "upload a step (worker rank0, seq 0, count 32*H*W, with ema_mean/ema_var = "
	       "PyTorch's "
	       "momentum-0.1 EMA of the batches)%s\n",
	       opt.run, opt.steps, latest, (size_t)N_LAYERS, n_channels,
	       opt.no_fill ? " -- as an earlier bench_query filled it (--no-fill)" : "");
	if (fillres.done) {
		printf("- fill: %llu uploads as %s, %u connections (contiguous ranges of steps, "
		       "keep-alive): %.1f s, **%.1f uploads/s** (%.1f MB/s of bodies)",
		       fillres.uploads, form_note, opt.conns, fillres.seconds,
		       (double)fillres.uploads / fillres.seconds,
		       fillres.body_mb / fillres.seconds);
		if (fillres.dups)
			printf("; %llu duplicates", fillres.dups);
		if (fillres.retries)
			printf("; %llu retries after 503", fillres.retries);
		printf("\n");
		if (spawned)
			printf("- database after the fill: **%.2f GB** (main file %.2f GB + WAL "
			       "%.2f GB) = "
			       "%.0f KB a step (estimate %.0f KB: 7 arrays of doubles a channel, 5 "
			       "for the "
			       "statistics and 2 for the worker EMA); %.2f GB after the clean "
			       "shutdown\n",
			       (fillres.db_main + fillres.db_wal) / 1e9, fillres.db_main / 1e9,
			       fillres.db_wal / 1e9,
			       (fillres.db_main + fillres.db_wal) / (double)opt.steps / 1e3,
			       fillres.estimate / (double)opt.steps / 1e3, final_db / 1e9);
	} else if (spawned) {
		printf("- no fill (--no-fill); database %.2f GB\n", final_db / 1e9);
	}
	printf("- queries: wall clock from writing the request to reading the whole answer, one "
	       "keep-alive connection, one request at a time; warm rows repeat %u times. The step "
	       "is the "
	       "latest (%" PRId64 ") unless given; the older step is %" PRId64 "",
	       opt.reps, latest, older);
	if (!opt.no_late)
		printf("; the late upload goes to step %" PRId64 "", late_step);
	printf(".\n");
	if (rss >= 0)
		printf("- bnstatd memory after both momenta were replayed: RSS %.0f MiB (peak %.0f "
		       "MiB)",
		       rss, hwm);
	if (rss_restart >= 0)
		printf("; after the restart and one momentum: RSS %.0f MiB", rss_restart);
	if (rss >= 0)
		printf("\n");
	if (restart_s >= 0)
		printf("- restart: SIGTERM to exit %.2f s, start to listening %.2f s\n", stop_s,
		       restart_s);
	printf("- exactness: %u rows compared byte for byte with the answer they must equal (warm "
	       "= "
	       "cold%s): %s\n",
	       checked,
	       restart_s >= 0 && !opt.no_late ? "; after the restart, the full replay = the replay "
						"resumed after the late upload"
					      : "",
	       mism == 0 ? "all equal" : "**SOME DIFFER**");
	print_table();
	printf("\n");

	cleanup();
	return mism == 0 ? 0 : 1;
}
