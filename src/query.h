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

#include <stddef.h>

#include <jansson.h>

#include "bnstat/error.h"
#include "store.h"

/* Parameters of GET /v1/runs/{run}/stats, as sent (NULL: not given). */
struct query_stats_params {
	const char *step;
	const char *window;
	const char *domain;
	const char *estimator;
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
int query_run(struct store_reader *r, const char *run, json_t **out,
	      struct bn_error *err);

/* GET /v1/runs/{run}/stats: precise statistics (SPEC section 4). */
int query_stats(struct store_reader *r, const char *run,
		const struct query_stats_params *p, json_t **out,
		struct bn_error *err);

/*
 * Parse a non-negative decimal integer parameter `name`: 0 and *out, or a
 * 422 in *err. Shared by every parameter that holds a step or a count.
 */
int query_parse_int(const char *name, const char *s, long long min,
		    long long *out, struct bn_error *err);

#endif
