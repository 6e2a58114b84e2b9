/*
 * bench_query.h: the parts of the query benchmark (bench_query.c) and
 * what they share: the options, the generated statistics and their
 * bodies, the spawned daemon, the fill and the timed queries. Private to
 * the bench_query program.
 */
#ifndef BENCH_QUERY_H
#define BENCH_QUERY_H

#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bench_http.h"
#include "bench_model.h"
#include "bench_sbuf.h"

#define MAX_CONNS 64
#define MAX_REPS 1000
#define MAX_RESULTS 64
#define MAX_DAEMON_ARGS 32

/* ---- options (bench_query_options.c) ---- */

enum form { FORM_AUTO, FORM_JSON, FORM_SAFETENSORS };

struct query_options {
	const char *bnstatd;
	const char *url;
	const char *run;
	const char *tmpdir;
	const char *db;
	const char *daemon_args[MAX_DAEMON_ARGS];
	size_t n_daemon_args;
	unsigned long long steps;
	unsigned conns;
	unsigned reps;
	unsigned replay_cache_mb; /* 0: the daemon's default */
	double timeout;		  /* per request, s */
	double fill_timeout;	  /* whole fill, s */
	enum form form;
	bool keep, no_fill, no_late, no_restart;
};

extern struct query_options opt;

/* The port of --url, when given. */
extern unsigned url_port;

/* Fill opt from the defaults, the environment and argv; exit(0) after --help, die() on errors. */
void parse_args(int argc, char **argv);

/* ---- the statistics and their bodies (bench_query_workload.c) ---- */

/* Draw the per-channel populations (from a fixed seed). Once, after layers_init(). */
void population_init(void);

/*
 * The batch statistics of `step` in stream `stream` (0: the training run,
 * others: extra batches such as the late upload) into mean and var
 * [n_channels], f32, computed from the step alone.
 */
void gen_step(uint64_t stream, int64_t step, float *mean, float *var);

/* ema [2 * n_channels] (means, then variances) as PyTorch starts it: 0 and 1. */
void ema_init(double *ema);

/* PyTorch's update of running_mean / running_var with this batch. */
void ema_apply(double *ema, const float *mean, const float *var);

/* The EMA state as the f32 arrays a worker reports. */
void ema_to_f32(const double *ema, float *em, float *ev);

/* One batch: the arrays are flat over all channels; ema may be NULL. */
struct batch {
	const char *worker;
	int64_t step;
	int64_t seq;
	const float *mean, *var, *ema_mean, *ema_var;
};

/* The batch as JSON with base64 f32 arrays into *b (replacing its contents). */
void body_json(struct sbuf *b, const struct batch *x);

/*
 * The batch as a safetensors body into *b (replacing its contents); hdr is
 * scratch space for the JSON header. Both are the caller's.
 */
void body_safetensors(struct sbuf *b, struct sbuf *hdr, const struct batch *x);

/* The body of x in form f (json or safetensors). */
void body_of(enum form f, struct sbuf *b, struct sbuf *hdr, const struct batch *x);

/* The Content-Type of form f. */
const char *ctype_of(enum form f);

/* ---- the daemon and its files (bench_query_daemon.c) ---- */

extern char db_path[PATH_MAX];
extern volatile pid_t daemon_pid;
extern unsigned daemon_port;

/* Choose the database and log paths (a temporary directory unless --db). */
void setup_paths(void);

/* Spawn bnstatd on db_path and wait for it to listen; die() when it does not. */
void daemon_start(void);

/* Stop the daemon (SIGKILL after limit_s). Returns its wait status or -1. */
int daemon_stop(double limit_s);

/* Stop the daemon and remove the temporary files; once (also from die()). */
void cleanup(void);

/* SIGINT/SIGTERM/SIGHUP: kill the daemon, remove the files, die of sig. */
void on_signal(int sig);

/* utime + stime of the daemon in ms; -1 when unknown. */
double daemon_cpu_ms(void);

/* VmRSS and VmHWM of the daemon in MiB (-1 when unknown). */
void daemon_rss(double *rss, double *hwm);

/* The first line of `bnstatd --version` into out[size]. */
void daemon_version(char *out, size_t size);

/* The size of the file at path in bytes; 0 when there is none. */
double file_bytes(const char *path);

/* What one step costs on disk, estimated; with the worker EMA rows when with_ema. */
double bytes_per_step(bool with_ema);

/* die() unless twice estimate bytes are free where db_path goes. */
void check_disk(double estimate);

/* The daemon's port: --url's or the spawned one's. */
unsigned port_now(void);

/* ---- the fill (bench_query_fill.c) ---- */

/* "/v1/runs/<run>" */
extern char run_path[256];

/* The form the fill found the server to take, and how the report says it. */
extern enum form used_form;
extern char form_note[512];

struct fill_result {
	bool done;
	unsigned long long uploads, dups, retries;
	double seconds, prep_seconds, body_mb;
	double db_main, db_wal, estimate;
};

extern struct fill_result fillres;

/*
 * POST body b (form f) to the run's batches on c; retries 503 (bounded).
 * 0 on 2xx (*duplicate says whether the batch was stored before), else
 * the status or -errno. *retries counts the 503s.
 */
int upload(struct http_conn *c, struct http_resp *r, enum form f, const struct sbuf *b,
	   bool *duplicate, unsigned long long *retries);

/* Upload steps 0..steps-1 from opt.conns connections; die() when it fails. */
void fill(void);

/* ---- the timed queries (bench_query_measure.c) ---- */

struct result {
	char query[200];
	char cache[48];
	unsigned n;
	double min, med, max; /* ms */
	double cpu_med;	      /* server CPU ms, median; <0 unknown */
	size_t bytes;
	int status;
	unsigned mismatches; /* answers that differ from the expected body */
	bool checked;
	char *body; /* the last answer */
};

extern struct result results[MAX_RESULTS];
extern size_t n_results;

/* The connection the queries go on. */
extern struct http_conn qconn;

/*
 * GET <run_path>/<query> reps times; the row is labelled cache. With
 * expect, every answer is compared with it byte for byte. Returns the
 * row (borrowed, valid until the program ends).
 */
struct result *measure(const char *query, const char *cache, unsigned reps, const char *expect);

/* A POST of body timed like a query (the late upload). */
struct result *measure_upload(const char *label, const char *cache, const struct sbuf *body);

/* The run's highest step, from GET /v1/runs/<run>. */
int64_t run_latest_step(void);
double wait_drift_kept(int64_t latest, double deadline);

/* The table of all results, on stdout. */
void print_table(void);

#endif /* BENCH_QUERY_H */
