/*
 * query: the answers to GET requests (and the snapshot POST), built from
 * what store reads; docs/API.md describes every reply.
 *
 * Each function takes the request's parameters as the raw strings the
 * client sent (NULL when absent), validates them, reads through one store
 * reader in one read transaction, merges with the stats module and returns
 * a new JSON document. Parameter errors name the parameter in err->path.
 *
 * Conventions of every function below, as in jansson's reference:
 *  - r is borrowed, used only during the call, by the one thread that holds
 *    it (an HTTP thread with a reader from store_reader_get()); the read
 *    transaction is opened and closed inside the call.
 *  - Strings and struct query_params are borrowed for the call; nothing
 *    keeps a pointer to them after returning.
 *  - On success, *out is a NEW reference the caller owns and must
 *    json_decref(); on failure *out is NULL, *err is filled in (HTTP status,
 *    code, path, message) and a negative errno is returned.
 *  - cache (compare, series) is borrowed and may be shared by threads: the
 *    replay module locks it.
 */
#ifndef BNSTAT_QUERY_H
#define BNSTAT_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#include "bnstat/error.h"
#include "metrics.h"
#include "store.h"

struct replay_cache;

/* Query parameters of a GET, as sent (NULL: not given); all borrowed. */
struct query_params {
	const char *step;
	const char *window;
	const char *min_batches; /* with window=auto */
	const char *target_se;	 /* precision: batches_for's goal */
	const char *prior;	 /* stats: BN-adapt's source domain */
	const char *prior_weight;
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
	const char *prefix; /* runs */
	const char *limit;
	const char *after;
	const char *momenta;	   /* momentum: a comma list */
	const char *const *layers; /* every `layer=` given, in order */
	size_t n_layers;

	const char *precise; /* compare, drift: window | snapshot:LABEL | worker:NAME */
};

/* GET /v1/runs: runs per page without limit=, and at most (docs/API.md, "Runs"). */
#define QUERY_RUNS_LIMIT_DEFAULT 1000
#define QUERY_RUNS_LIMIT_MAX 10000

/*
 * GET /v1/runs?prefix=&limit=&after=: {"runs": [{name, created_ms,
 * batches, layers, domains, workers, steps:{min,max} or null}], "next"}
 * (docs/API.md, "Runs"): by name, at most p->limit runs whose names start
 * with p->prefix (literally) and come after p->after; "next", only when
 * more runs follow, is the last name of the page, the after= of the next.
 * Only prefix, limit and after of p are read. *out: new reference.
 * Returns 0 or a negative errno (400/422 naming the parameter, 500).
 */
int query_runs(struct store_reader *r, const struct query_params *p, json_t **out,
	       struct bn_error *err);

/*
 * GET /v1/runs/{run}: the run's summary as in query_runs() plus its
 * layers, domains and workers (docs/API.md, "Runs"). *out: new reference.
 * Returns 0 or a negative errno (422 bad name, 404 unknown run, 500).
 */
int query_run(struct store_reader *r, const char *run, json_t **out, struct bn_error *err);

/*
 * GET /v1/runs/{run}/stats: the precise statistics of each layer over the
 * window (step - window, step] of a domain, with the estimator asked for
 * (docs/API.md, "Precise statistics"). *out: new reference. Returns 0 or a
 * negative errno (400/422 for a bad parameter, 404 for an unknown run,
 * domain or layer or a window without data, 500).
 */
int query_stats(struct store_reader *r, const char *run, const struct query_params *p, json_t **out,
		struct bn_error *err);

/*
 * GET /v1/runs/{run}/compare: the EMA (the workers' own, or simulated with
 * a momentum through cache) against the precise statistics, per layer and
 * overall (docs/API.md, "Comparison"). *out: new reference. Returns 0 or a
 * negative errno (400/422 bad parameter, 404 no such run, domain, layer,
 * data or worker EMA, 500).
 */
int query_compare(struct store_reader *r, struct replay_cache *cache, const char *run,
		  const struct query_params *p, json_t **out, struct bn_error *err);

/*
 * GET /v1/runs/{run}/drift: per layer, the comparison metrics of an EMA
 * (worker or simulated through cache) against the precise window at every
 * stored entry with data in [from, to], merged to at most `points` points
 * by their maximum (docs/API.md, "Drift"). *out: new reference. Returns 0
 * or a negative errno (400/422 bad parameter, 404 unknown run or domain,
 * 500).
 */
int query_drift(struct store_reader *r, struct replay_cache *cache, const char *run,
		const struct query_params *p, json_t **out, struct bn_error *err);

/*
 * GET /v1/runs/{run}/momentum: for each momentum of `momenta`, the mean
 * kl between the EMA simulated at it (through cache) and the precise
 * window, over the entries of [from, to] subsampled to at most `points`,
 * per layer and overall, and the best momentum (docs/API.md, "Momentum
 * advisor"). *out: new reference. Returns 0 or a negative errno (400/422
 * bad parameter, 404 unknown run or domain or no data in the range, 500).
 */
int query_momentum(struct store_reader *r, struct replay_cache *cache, const char *run,
		   const struct query_params *p, json_t **out, struct bn_error *err);

/*
 * GET /v1/runs/{run}/series: one channel of one layer over a step range:
 * batch, precise (window), worker EMA and simulated EMA (through cache), as
 * parallel arrays (docs/API.md, "Series"). *out: new reference. Returns 0
 * or a negative errno (400/422 bad parameter, 404 unknown run, domain or
 * layer, 500).
 */
int query_series(struct store_reader *r, struct replay_cache *cache, const char *run,
		 const struct query_params *p, json_t **out, struct bn_error *err);

/*
 * GET /v1/runs/{run}/domains: {"run", "domains": [{name, layers, steps,
 * batches, elements}]} (docs/API.md, "Domains"). *out: new reference.
 * Returns 0 or a negative errno (422, 404 unknown run, 500).
 */
int query_domains(struct store_reader *r, const char *run, json_t **out, struct bn_error *err);

/*
 * GET /v1/runs/{run}/shift: the comparison metrics between the precise
 * statistics of domain `source` (as the estimate) and `target` (as the
 * reference) at one step and window; without step=, the latest step both
 * reached (docs/API.md, "Domains"). *out: new reference. Returns 0 or a
 * negative errno (400 missing source/target, 422, 404, 500).
 */
int query_shift(struct store_reader *r, const char *run, const struct query_params *p, json_t **out,
		struct bn_error *err);

/*
 * POST /v1/runs/{run}/snapshots with body[0..len) (borrowed). Validates the
 * request and, in one read transaction, either
 *  - finds the label already taken: with equal explicit fields *existing is
 *    the stored snapshot's JSON (a new reference; answer 200), otherwise a
 *    409 in *err;
 *  - or computes the precise estimate and returns it in *create (owned by
 *    the caller, normally handed to store_submit_snapshot(), else released
 *    with store_snapshot_free()).
 * Returns 0 with exactly one of *create and *existing set, or a negative
 * errno with both NULL and *err filled in (400, 404, 409, 422, 500).
 */
int query_snapshot_prepare(struct store_reader *r, const char *run, const char *body, size_t len,
			   struct store_snapshot **create, json_t **existing, struct bn_error *err);

/*
 * GET /v1/runs/{run}/snapshots/{label}: the snapshot with its layers as
 * JSON (docs/API.md, "Snapshots"). *out: new reference. Returns 0 or a
 * negative errno (422 bad run name, 404 unknown run or label, 500).
 */
int query_snapshot_get(struct store_reader *r, const char *run, const char *label, json_t **out,
		       struct bn_error *err);

/*
 * The same snapshot as a safetensors file of {layer}.running_mean and
 * {layer}.running_var, F32 (or F64 when f64), for load_state_dict(), with
 * run, label, step, window, domain and estimator in __metadata__.
 * On success *buf (malloc'd, owned by the caller, released with free())
 * holds *len bytes; on failure *buf is NULL. Errors as query_snapshot_get().
 */
int query_snapshot_safetensors(struct store_reader *r, const char *run, const char *label, bool f64,
			       char **buf, size_t *len, struct bn_error *err);

/*
 * GET /v1/runs/{run}/snapshots: {"run", "snapshots": [...]}, each without
 * its statistics. *out: new reference. Returns 0 or a negative errno (422,
 * 404 unknown run, 500).
 */
int query_snapshots(struct store_reader *r, const char *run, json_t **out, struct bn_error *err);

/*
 * GET /metrics: walk the stored runs for metrics_render() (the runs member
 * of struct metrics_sources): reader is the borrowed struct store_reader *,
 * read in one snapshot; emit(ctx, run) is called once per run, by name,
 * with a run that is valid during that call only. Returns 0, emit's
 * negative errno, or a negative errno with a 500 in *err.
 */
int query_metrics_runs(void *reader, metrics_emit_run_fn emit, void *ctx, struct bn_error *err);

/*
 * The drift gauges of (run, domain) into *out (docs/OPERATIONS.md,
 * "Monitoring"): at S, the newest step of the domain with a worker EMA,
 * the overall kl and the worst layer's kl of GET /compare?step=S&
 * window=auto (its default worker: the first by name at S), and the mean
 * over layers of batch_noise of GET /stats?step=S&window=auto; without
 * any worker EMA, S is the latest step and there is no drift. Each query
 * reads in its own transaction. out->worst_layer points into layer[size]
 * (the caller's). Returns 0 (the flags of *out say what holds; neither:
 * the pair has no gauges), -ENOENT with a 404 when the run or domain does
 * not exist, or a negative errno with a 500 in *err.
 */
int query_metrics_drift(struct store_reader *r, const char *run, const char *domain,
			struct metrics_drift *out, char *layer, size_t size, struct bn_error *err);

/* Runs a page of query_metrics_pairs() takes. */
#define QUERY_METRICS_PAGE 32

/* Called with one (run, domain), both borrowed for the call. */
typedef void (*query_metrics_pair_fn)(void *ctx, const char *run, const char *domain);

/*
 * One page of the walk over every stored (run, domain): for at most
 * QUERY_METRICS_PAGE runs after `after` by name (NULL or "": from the
 * first), fn(ctx, run, domain) for each of their domains, in one read
 * snapshot; fn must not use r. The last run's name goes to
 * last[INGEST_NAME_MAX + 1], the after= of the next page. Returns the
 * number of runs in the page (0: the walk is over), or a negative errno
 * with a 500 in *err.
 */
int query_metrics_pairs(struct store_reader *r, const char *after, char *last,
			query_metrics_pair_fn fn, void *ctx, struct bn_error *err);

/*
 * Parse the decimal integer parameter `name` (s borrowed; may be NULL).
 * Returns 0 with the value in *out. Otherwise *out is untouched and a
 * negative errno returned with *err filled in: 400 (BN_E_PARAMETER) when s
 * is absent, empty, starts with "+" or a space, has anything after the
 * digits or does not fit a long long; 422 (BN_E_INVALID) when it is an
 * integer below min. Shared by every parameter that holds a step or a
 * count.
 */
/*
 * Parse query parameter name's value s as a number: optional '-', digits,
 * optional '.' digits, optional e/E, sign and digits (docs/API.md, "Query
 * parameters"), finite. Returns 0 with *out set, or -EINVAL with a 400
 * invalid_parameter error of the same shape as query_parse_int()'s in *err.
 * s is borrowed.
 */
int query_parse_number(const char *name, const char *s, double *out, struct bn_error *err);

int query_parse_int(const char *name, const char *s, long long min, long long *out,
		    struct bn_error *err);

/*
 * GET /v1/runs/{run}/export: the run file of the run (docs/API.md, "Moving
 * a run"), read in one read snapshot; 413 when it would take more than
 * max_bytes (it is built in memory, and an import takes at most max-body).
 */
int query_export(struct store_reader *r, const char *run, size_t max_bytes, json_t **out,
		 struct bn_error *err);

/*
 * The body of POST /v1/runs/{run}/import checked against the run file's
 * format: 0 and a new *out (the caller's; store_runfile_free()), or 400 /
 * 422 in *err. Whether its rows hold together is the writer's to check.
 */
int query_import_decode(const char *body, size_t len, struct store_runfile **out,
			struct bn_error *err);

#endif
