/*
 * gauges: the thread that keeps the drift gauges of /metrics current
 * (docs/DESIGN.md, "Drift gauges").
 *
 * The store's writer tells it, after each commit, which (run, domain)
 * pairs took an upload (gauges_changed(), the store's `changed` hook).
 * The thread recomputes those pairs with query_metrics_drift() on a store
 * reader of its own, in passes at most one per interval, so that a pair
 * is recomputed at most once per interval however many uploads it takes,
 * and hands the values to metrics.c, which only prints them at scrape
 * time. The pairs waiting are a bounded set: past GAUGES_PENDING_MAX the
 * next pass recomputes every stored pair instead, as on start.
 */
#ifndef BNSTAT_GAUGES_H
#define BNSTAT_GAUGES_H

#include "bnstat/error.h"
#include "store.h"

struct gauges;

/* Distinct (run, domain) pairs waiting for a pass, at most. */
#define GAUGES_PENDING_MAX 4096

/*
 * A new set of gauges, not started, whose passes are at least interval_ms
 * apart. Returns NULL when out of memory; the caller owns it and releases
 * it with gauges_free().
 */
struct gauges *gauges_new(unsigned interval_ms);

/*
 * Note that (run, domain) (borrowed, copied) changed: the next pass
 * recomputes it. g is a struct gauges *, void so that it fits
 * struct store_options's `changed`. Never blocks on anything but a short
 * lock. Any thread, started or not.
 */
void gauges_changed(void *g, const char *run, const char *domain);

/*
 * Start the thread on store s (borrowed: it must outlive gauges_stop()),
 * with a reader of its own; its first pass recomputes every stored pair.
 * Returns 0 or a negative errno with *err filled in.
 */
int gauges_start(struct gauges *g, struct store *s, struct bn_error *err);

/*
 * Stop the thread: a pass under way ends after the pair it is on. Joins
 * it and gives its reader back to the store. Idempotent; a gauges never
 * started is fine. Any thread but its own.
 */
void gauges_stop(struct gauges *g);

/*
 * What the thread has done so far: passes ended, pairs recomputed, passes
 * begun. Read in that order while the thread counts in the opposite one (a
 * pass begun, its pairs, the pass ended), a snapshot holds at least every
 * pair of the passes it counts as ended, and no pair of a pass it does not
 * count as begun.
 */
struct gauges_stats {
	unsigned long long passes;
	unsigned long long pairs;
	unsigned long long begun;
};

/* Fill *st with g's counts (for the debug log and the tests). Any thread. */
void gauges_stats(struct gauges *g, struct gauges_stats *st);

/* Stop (as gauges_stop()) and free g. NULL is fine. */
void gauges_free(struct gauges *g);

#endif
