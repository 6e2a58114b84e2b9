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
 * counts. Called when the run is deleted. Any thread.
 */
void metrics_forget_run(const char *run);

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
};

/*
 * Append the whole /metrics text to f (borrowed; the caller flushes and
 * closes it): the counters and histograms (with the refusals of
 * non-finite values per run, in run order), then the gauges of *src. Run
 * names are escaped as label values. Returns 0, or the walk's negative
 * errno with *err filled in (the text is then incomplete: do not serve it).
 * Any thread may call it.
 */
int metrics_render(FILE *f, const struct metrics_sources *src, struct bn_error *err);

#endif
