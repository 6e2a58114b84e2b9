/*
 * metrics: the daemon's counters, rendered in Prometheus text format.
 *
 * Counters are process-wide atomics, updated from any thread; rendering
 * reads them without stopping anyone. This is the only writer of the
 * Prometheus text: what other modules know (the writer's queue, the
 * database's size, the stored runs) reaches it through struct
 * metrics_sources at scrape time, so no other module formats a sample.
 */
#ifndef BNSTAT_METRICS_H
#define BNSTAT_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "bnstat/error.h"

/* An upload's outcome: "accepted", "duplicate", or an error code (BN_E_*). */
void metrics_upload(const char *outcome);

/* Request body bytes received. */
void metrics_bytes(size_t n);

/* One group commit of `batches` jobs that took `seconds` (ok: committed). */
void metrics_commit(double seconds, size_t batches, int ok);

/*
 * The refusals of uploads for a NaN or infinite value, counted per run
 * since the daemon started (docs/OPERATIONS.md, "Monitoring"): at most
 * METRICS_NONFINITE_RUNS runs have a series of their own, the refusals of
 * any further run count under the run label METRICS_NONFINITE_OTHER (not
 * a valid run name) until a run is forgotten. Each (run, layer) is counted
 * too, for the callers' logs, in at most METRICS_NONFINITE_LAYERS entries,
 * past which all further pairs share one count.
 */
#define METRICS_NONFINITE_RUNS 1024
#define METRICS_NONFINITE_LAYERS 4096
#define METRICS_NONFINITE_OTHER "(other)"

/*
 * Count one upload of run `run` refused for a non-finite value in layer
 * `layer` (both borrowed; run a valid name). Returns how many refusals
 * that (run, layer) has had so far, this one included (1 for the first):
 * the callers log the first and then only some, so that a worker stuck on
 * NaN cannot flood the log. Any thread; takes a lock, never blocks on I/O.
 */
unsigned long long metrics_refused_nonfinite(const char *run, const char *layer);

/*
 * Forget what the daemon counted of run `run` (borrowed): its
 * bnstat_refused_nonfinite_total series disappears, and so do its layers'
 * counts and its drift gauges (below). Called when the run is deleted.
 * Any thread.
 */
void metrics_forget_run(const char *run);

/*
 * The drift gauges of one (run, domain), the latest state computed for it
 * (docs/OPERATIONS.md, "Monitoring"; docs/DESIGN.md, "Drift gauges"):
 * bnstat_ema_drift_kl, bnstat_ema_drift_worst_kl and bnstat_batch_noise.
 * A value that is not finite is served as NaN (or +Inf, -Inf).
 */
struct metrics_drift {
	bool has_drift;		 /* a worker EMA was compared: kl holds */
	double kl;		 /* the overall kl of the comparison */
	const char *worst_layer; /* NULL: no layer's kl is finite; else borrowed for the call */
	double worst_kl;
	bool has_noise; /* batch_noise holds */
	double batch_noise;
};

/*
 * At most this many (run, domain) pairs have drift gauges; past it
 * metrics_drift_set() refuses new pairs until some are cleared.
 */
#define METRICS_DRIFT_PAIRS 16384

/*
 * The number of runs forgotten so far (metrics_forget_run()). Read it
 * before computing a pair's gauges, and hand it to metrics_drift_set():
 * a run forgotten meanwhile may be the pair's, whose values must not come
 * back. Any thread.
 */
unsigned long long metrics_drift_epoch(void);

/*
 * Replace the gauges of (run, domain) (both borrowed, valid names) by *d,
 * copied: a pair with neither drift nor noise has no series. epoch is
 * what metrics_drift_epoch() said before the values were computed.
 * Returns 0; -EAGAIN when a run was forgotten since epoch (nothing is
 * set: compute again); -ENOSPC for a new pair past METRICS_DRIFT_PAIRS;
 * -ENOMEM. Any thread.
 */
int metrics_drift_set(const char *run, const char *domain, unsigned long long epoch,
		      const struct metrics_drift *d);

/* Remove the gauges of (run, domain) (borrowed), if it has any. Any thread. */
void metrics_drift_clear(const char *run, const char *domain);

/* One stored run, as a walk of struct metrics_sources reports it. */
struct metrics_run {
	const char *name; /* borrowed: valid during the call of emit only */
	bool has_data;	  /* a batch with statistics was stored */
	long long last_step;
	long long bytes; /* of its stored arrays */
};

/*
 * Called by a walk once per run, in the walk's order. ctx is the one the
 * walk was given. Returns 0, or a negative errno to stop the walk (which
 * then returns it).
 */
typedef int (*metrics_emit_run_fn)(void *ctx, const struct metrics_run *run);

/*
 * What the process counters do not know, read by the caller at scrape time.
 * runs (may be NULL: no run gauges) walks the stored runs with the borrowed
 * runs_ctx, calling emit(emit_ctx, run) for each, in one consistent read;
 * it returns 0, or a negative errno with *err filled in.
 */
struct metrics_sources {
	size_t queue_depth;		   /* uploads waiting for the writer */
	unsigned long long database_bytes; /* the database's files on disk */
	int (*runs)(void *runs_ctx, metrics_emit_run_fn emit, void *emit_ctx, struct bn_error *err);
	void *runs_ctx;
	/* "writable", "read_only" or "damaged" (store_state_name()); NULL: not rendered */
	const char *database_state;
	bool disk_free_known;			 /* disk_free_bytes could be read */
	unsigned long long disk_free_bytes;	 /* free on the database's file system */
	unsigned long long disk_free_warn_bytes; /* the log warns below it (0: never) */
};

/*
 * Append the whole /metrics text to f (borrowed; the caller flushes and
 * closes it): the counters and histograms (with the refusals of
 * non-finite values per run, in run order), the drift gauges (by run,
 * then domain), then the gauges of *src. Names are escaped as label
 * values. Returns 0, or the walk's negative
 * errno with *err filled in (the text is then incomplete: do not serve it).
 * Any thread may call it.
 */
int metrics_render(FILE *f, const struct metrics_sources *src, struct bn_error *err);

#endif
