/*
 * query: the answers to GET requests, built from what store reads.
 *
 * Each function takes the request's parameters as the raw strings the
 * client sent (NULL when absent), validates them, reads through one store
 * reader in one read transaction, merges with the stats module and returns
 * a new JSON document. Parameter errors name the parameter in err->path.
 */
#ifndef BNSTAT_QUERY_H
#define BNSTAT_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#include "bnstat/error.h"
#include "store.h"

struct replay_cache;

/* Query parameters of a GET, as sent (NULL: not given). */
struct query_params {
	const char *step;
	const char *window;
	const char *domain;
	const char *estimator;
	const char *ema; /* compare: worker | sim */
	const char *worker;
	const char *momentum;
	const char *channel; /* series */
	const char *from;
	const char *to;
	const char *stride;
	const char *points;
	const char *source; /* shift */
	const char *target;
	const char *const *layers; /* every `layer=` given, in order */
	size_t n_layers;
};

/*
 * GET /v1/runs: {"runs": [{name, created, batches, steps:{min,max}, ...}]}.
 * On success *out is a new reference owned by the caller. Returns 0 or a
 * negative errno with *err filled in.
 */
int query_runs(struct store_reader *r, json_t **out, struct bn_error *err);

/* GET /v1/runs/{run}: the run with its layers, domains and workers. */
int query_run(struct store_reader *r, const char *run, json_t **out, struct bn_error *err);

/* GET /v1/runs/{run}/stats: precise statistics (SPEC section 4). */
int query_stats(struct store_reader *r, const char *run, const struct query_params *p, json_t **out,
		struct bn_error *err);

/*
 * GET /v1/runs/{run}/compare: EMA (the workers' own, or simulated with a
 * momentum through cache) against the precise statistics, per layer and
 * overall (SPEC section 4).
 */
int query_compare(struct store_reader *r, struct replay_cache *cache, const char *run,
		  const struct query_params *p, json_t **out, struct bn_error *err);

/*
 * GET /v1/runs/{run}/series: one channel of one layer over a step range:
 * batch, precise (window), worker EMA and simulated EMA, as parallel arrays.
 */
int query_series(struct store_reader *r, struct replay_cache *cache, const char *run,
		 const struct query_params *p, json_t **out, struct bn_error *err);

/* GET /v1/runs/{run}/domains: per domain layers, steps, batches, elements. */
int query_domains(struct store_reader *r, const char *run, json_t **out, struct bn_error *err);

/*
 * GET /v1/runs/{run}/shift: the comparison metrics between the precise
 * statistics of domain `source` (as the estimate) and `target` (as the
 * reference) at one step and window.
 */
int query_shift(struct store_reader *r, const char *run, const struct query_params *p, json_t **out,
		struct bn_error *err);

/*
 * POST /v1/runs/{run}/snapshots with body[0..len). Validates the request
 * and, in one read transaction, either
 *  - finds the label already taken: with equal explicit fields *existing is
 *    the stored snapshot's JSON (answer 200), otherwise a 409 in *err;
 *  - or computes the precise estimate and returns it in *create (owned by
 *    the caller, normally handed to store_submit_snapshot()).
 * Returns 0 with exactly one of *create and *existing set, or a negative
 * errno with *err filled in (400, 404, 409, 422).
 */
int query_snapshot_prepare(struct store_reader *r, const char *run, const char *body, size_t len,
			   struct store_snapshot **create, json_t **existing, struct bn_error *err);

/* GET /v1/runs/{run}/snapshots/{label}: the snapshot as JSON (404 if none). */
int query_snapshot_get(struct store_reader *r, const char *run, const char *label, json_t **out,
		       struct bn_error *err);

/*
 * The same snapshot as a safetensors file of {layer}.running_mean and
 * {layer}.running_var, F32 (or F64 when f64), for load_state_dict().
 * On success *buf (malloc'd, owned by the caller) holds *len bytes.
 */
int query_snapshot_safetensors(struct store_reader *r, const char *run, const char *label, bool f64,
			       char **buf, size_t *len, struct bn_error *err);

/* GET /v1/runs/{run}/snapshots: {"snapshots": [...]} without statistics. */
int query_snapshots(struct store_reader *r, const char *run, json_t **out, struct bn_error *err);

/*
 * GET /metrics: the database-side gauges (runs, each run's last step) in
 * Prometheus text format, appended to f.
 */
int query_metrics(struct store_reader *r, FILE *f, struct bn_error *err);

/*
 * Parse a non-negative decimal integer parameter `name`: 0 and *out, or a
 * 422 in *err. Shared by every parameter that holds a step or a count.
 */
int query_parse_int(const char *name, const char *s, long long min, long long *out,
		    struct bn_error *err);

#endif
