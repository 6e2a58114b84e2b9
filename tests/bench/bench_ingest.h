/*
 * bench_ingest.h: the parts of the ingest benchmark (bench.c) and what
 * they share: the options, the rendered workload, the sink, the spawned
 * daemon, the cells of the load generator, the checks and the report.
 * Private to the bench program.
 */
#ifndef BENCH_INGEST_H
#define BENCH_INGEST_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <limits.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "bench_model.h"
#include "bench_sbuf.h"

#define MAX_CONNS 1024
#define RBUF_SIZE 16384
#define REQ_HEAD_MAX 1024
#define STATUS_MAX 600

/* ---- options (bench_ingest_options.c) ---- */

enum form { F_ST, F_B64, F_JSON, F_COUNT };

/* "safetensors", "b64", "json" */
extern const char *const form_names[F_COUNT];

struct options {
	const char *bnstatd;
	double seconds;
	bool seconds_given;
	uint64_t uploads;     /* per cell, 0 = bounded by time only */
	uint64_t uploads_rss; /* --uploads-rss mode when > 0 */
	unsigned conns[16];
	size_t n_conns;
	bool run_sink, run_form[F_COUNT], run_estimator, run_parse;
	unsigned threads;
	unsigned batches_per_step;
	bool ema; /* each upload carries the worker's EMA of every layer */
	unsigned client_threads;
	unsigned variants;
	double timeout;
	const char *tmpdir;
	bool keep;
	const char *daemon_args[64];
	size_t n_daemon_args;
	int dump_form; /* --dump-body: -1 or a form */
};

extern struct options opt;

/* The usage text, on f. */
void usage(FILE *f, const char *argv0);

/* Fill opt from the defaults, the environment and argv; exit(0) after --help, die() on errors. */
void parse_options(int argc, char **argv);

/* ---- the workload (bench_ingest_workload.c) ---- */

/*
 * A variant: one set of per-channel batch statistics for every layer, and
 * its three bodies' layer parts rendered once. Uploads pick a variant from
 * (worker, step, seq), so consecutive uploads differ and the in-process
 * baselines see the same numbers.
 */
struct variant {
	float *mean, *var;   /* [n_channels] */
	float *ema_mean, *ema_var; /* [n_channels], with --ema */
	struct sbuf json;    /* "layers":{...}}  (closes the root object) */
	struct sbuf b64;     /* the same with {"dtype":"f32","b64":...} arrays */
	struct sbuf st_data; /* safetensors data buffer */
};

/* opt.variants of them, made by make_variants() */
extern struct variant *variants;

/* Which variant the upload (worker, step, seq) sends. */
unsigned variant_of(unsigned worker, int64_t step, unsigned seq);

/* Render opt.variants variants and the safetensors tensor table. Once, from main. */
void make_variants(void);

/*
 * One upload as HTTP: the request line, headers and the body's small
 * per-upload head go into head[]; the big parts are borrowed from the
 * variant (iov[1..]).
 */
struct request {
	char head[REQ_HEAD_MAX];
	struct iovec iov[5];
	int iovcnt;
	size_t body_len;
};

/*
 * Fill *r with the upload of (worker, step, seq) in form to run on port.
 * r borrows the variant's buffers: it stays valid as long as variants.
 */
void request_build(struct request *r, enum form form, const char *run, unsigned port,
		   unsigned worker, int64_t step, unsigned seq);

/* The whole body of that upload into *out (replacing its contents). */
void body_render(struct sbuf *out, enum form form, unsigned worker, int64_t step, unsigned seq);

/* ---- the sink (bench_ingest_sink.c) ---- */

/* A bare libmicrohttpd server with bnstatd's configuration. */
struct sink {
	struct MHD_Daemon *mhd; /* opaque here */
	unsigned port;
	pid_t tids[256]; /* MHD's threads, for their CPU time */
	size_t n_tids;
};

/* Start the sink on 127.0.0.1:0 with opt.threads threads; die() on failure. */
void sink_start(struct sink *s);

/* Stop it. */
void sink_stop(struct sink *s);

/* CPU seconds of the sink's threads so far. */
double sink_cpu_s(const struct sink *s);

/* ---- the daemon (bench_ingest_daemon.c) ---- */

/* A spawned bnstatd on a fresh temporary directory (dir, with db and log in it). */
struct daemon {
	pid_t pid;
	unsigned port;
	bool exited; /* on its own, before we stopped it */
	int status;  /* its wait status once exited */
	char dir[PATH_MAX], db[PATH_MAX + 16], log[PATH_MAX + 16];
};

/*
 * Spawn opt.bnstatd on a fresh directory under opt.tmpdir and wait for it
 * to listen. 0, or -1 (with a note and its log tail) when it did not start.
 */
int daemon_start(struct daemon *d);

/* Did the daemon exit on its own (crash, killed)? Reaps it and says how in why[size]. */
bool daemon_gone(struct daemon *d, char *why, size_t size);

/* utime + stime of the daemon in clock ticks; -1 when unknown. */
long long daemon_cpu_ticks(const struct daemon *d);

/* SIGTERM, then SIGKILL after 20 s. Returns the wait status or -1. */
int daemon_stop(struct daemon *d);

/* MiB of the regular files in dir whose names start with prefix. */
double dir_mib(const char *dir, const char *prefix);

/* Remove dir and the files in it. */
void dir_remove(const char *dir);

/* ---- cells of the load generator (bench_ingest_load.c) ---- */

enum target { T_SINK, T_DAEMON };

enum ack { ACK_NONE = 0, ACK_OK = 1, ACK_UNKNOWN = 2 };

struct cell;

enum conn_state { C_IDLE, C_SEND, C_RECV };

struct conn {
	int fd;
	unsigned worker;
	enum conn_state state;
	unsigned seq;
	int64_t step;
	struct request req;
	int iov_i;
	double t_start;
	char rbuf[RBUF_SIZE];
	size_t rlen;
};

struct client {
	struct cell *cell;
	pthread_t thread;
	struct conn *conns;
	size_t n;
	int ep;
	/* results, read by the serial thread at barriers and by main at the end */
	uint64_t done, ok, dup, http_err, io_err, bytes;
	double *lat; /* ms, of every completed response */
	size_t n_lat, cap_lat;
	unsigned status[STATUS_MAX];
	char last_err[256];
	double cpu_s;
};

struct cell {
	enum target target;
	enum form form;
	unsigned conns, k;
	char run[64];
	unsigned port;
	const struct sink *sink;
	const struct daemon *daemon;
	double seconds;
	uint64_t max_uploads;

	struct client *clients;
	size_t n_clients;
	pthread_barrier_t bar;
	bool stop, broken;
	double t0, t1;
	double cpu0, cpu1; /* server CPU seconds at the start and the end */
	size_t steps_done, steps_cap;
	uint8_t *ack; /* [step][worker][seq] enum ack */

	/* --uploads-rss: RSS sampled every rss_every uploads */
	uint64_t rss_every, rss_next;
	long rss_kb[64];
	uint64_t rss_at[64];
	size_t n_rss;

	/* totals after the run */
	uint64_t done, ok, dup, http_err, io_err, bytes;
	unsigned status[STATUS_MAX];
	char last_err[256];
	double elapsed, p50, p99, server_cpu_s, client_cpu_s;
};

/* The acknowledgement of (step, worker, seq) in c. */
uint8_t *ack_at(struct cell *c, size_t step, unsigned worker, unsigned seq);

/* A cell of target t with body f at conns connections to port, from the options. */
void cell_setup(struct cell *c, enum target t, enum form f, unsigned conns, unsigned port);

/* Run the cell to its end (time, count or breakage) and compute its totals. */
void cell_run(struct cell *c);

/* Free what cell_run() allocated (the totals stay). */
void cell_free(struct cell *c);

/* ---- correctness (bench_ingest_verify.c) ---- */

struct verify {
	bool ran, ok;
	struct sbuf text; /* one Markdown line */
};

/*
 * Ask the daemon of cell c for the first, middle and last step and check
 * them against what it acknowledged; the verdict goes to *v (v->text is
 * appended to; the caller frees it).
 */
void verify_cell(struct cell *c, struct verify *v);

/* ---- in process (bench_ingest_inproc.c) ---- */

struct inproc {
	const char *what;
	double per_s, mb_s, us_each;
	size_t iters;
};

/* fvcore's estimator update over the variants, about one second. */
void bench_estimator(struct inproc *r);

/* json_loadb of the form's body as bnstatd's ingest calls it, about one second. */
void bench_parse(struct inproc *r, enum form form);

/* ---- the report (bench_ingest_report.c) ---- */

struct row {
	enum target target;
	enum form form;
	unsigned conns;
	bool unsupported, failed;
	char why[256];
	struct cell cell;
	struct verify verify;
};

struct form_mem {
	bool ran;
	long rss_start, rss_end, hwm;
	double db_mib;
	size_t steps;
	int exit_status;
};

extern struct row *rows;
extern size_t n_rows;
extern struct form_mem mem[F_COUNT];

/* A new row at the end of rows (zeroed but for t, f, conns); valid until the next row_add. */
struct row *row_add(enum target t, enum form f, unsigned conns);

/* The report's head: machine, versions, command line, workload. */
void print_header(int argc, char **argv);

/* The table of the HTTP cells and their errors. */
void print_table(void);

/* The in-process rows and the json_loadb ratios. */
void print_inproc(const struct inproc *ip, size_t n);

/* Memory and storage of bnstatd per form, and the correctness lines. */
void print_memory(void);

/* kB as MiB; NAN when kb < 0. */
double kb_mib(long kb);

#endif /* BENCH_INGEST_H */
