/*
 * metrics: the daemon's counters, rendered in Prometheus text format.
 *
 * Counters are process-wide atomics, updated from any thread; rendering
 * reads them without stopping anyone. What lives in the database (runs,
 * last steps, the file size) is added by query_metrics() at scrape time.
 */
#ifndef BNSTAT_METRICS_H
#define BNSTAT_METRICS_H

#include <stddef.h>
#include <stdio.h>

/* An upload's outcome: "accepted", "duplicate", or an error code (BN_E_*). */
void metrics_upload(const char *outcome);

/* Request body bytes received. */
void metrics_bytes(size_t n);

/* One group commit of `batches` jobs that took `seconds` (ok: committed). */
void metrics_commit(double seconds, size_t batches, int ok);

/* Append the counters and histograms to f in Prometheus text format. */
void metrics_render(FILE *f);

#endif
