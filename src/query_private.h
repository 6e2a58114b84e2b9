/*
 * query_private: what the files of the query module share and nothing
 * outside it may use: the parameter checks every answer makes, the error
 * replies, JSON numbers, and the precise window (query_window.c) that stats,
 * compare, shift and snapshots merge.
 *
 * Every function here runs on the calling HTTP thread with the caller's
 * store reader; none keeps a pointer to its arguments after returning.
 */
#ifndef BNSTAT_QUERY_PRIVATE_H
#define BNSTAT_QUERY_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "bnstat/error.h"
#include "bnstat/stats.h"
#include "query.h"
#include "store.h"

/* The domain parameter that pools every domain of a step. */
#define QUERY_DOMAIN_ALL "*"

/* --- replies (query.c) ----------------------------------------------------- */

/*
 * A new JSON number for v, or a new null when v is not finite (JSON has no
 * infinity; statistics of extreme inputs can overflow). NULL when out of
 * memory.
 */
json_t *query_json_num(double v);

/* A new JSON array of v[0..n) as query_json_num() writes them; NULL on OOM. */
json_t *query_json_doubles(const double *v, size_t n);

/* Fill *err with a 500 "out of memory" and return its negative errno. */
int query_oom(struct bn_error *err);

/* Fill *err with a 500 "the database could not be read" and return its errno. */
int query_read_failed(struct bn_error *err);

/*
 * The id of run `run` in *run_id, inside the caller's read transaction.
 * Returns 0, or a negative errno with *err filled in: 422 for a name that
 * cannot be a run's, 404 for no such run, 500 when the read fails.
 */
int query_run_find(struct store_reader *r, const char *run, int64_t *run_id, struct bn_error *err);

/*
 * The ids of run `run` and of its domain `domain` ("*": all, *domain_id
 * then -1), inside the caller's read transaction. Returns 0, or a negative
 * errno with *err filled in as query_run_find() does, and 404 naming
 * "domain" for a domain the run does not have.
 */
int query_run_domain_find(struct store_reader *r, const char *run, const char *domain,
			  int64_t *run_id, int64_t *domain_id, struct bn_error *err);

/* A layer of a run, as query_layers_read() lists them. */
struct query_layer {
	int64_t id;
	char *name;
	size_t channels;
};

/*
 * The layers of run_id in *out (a new array of *n the caller frees with
 * query_layers_free()), sorted by id: the order they were first uploaded.
 * Inside the caller's read transaction. Returns 0, -ENOMEM or -EIO (*out
 * is then NULL).
 */
int query_layers_read(struct store_reader *r, int64_t run_id, struct query_layer **out, size_t *n);

/* Free what query_layers_read() returned; NULL is fine. */
void query_layers_free(struct query_layer *v, size_t n);

/*
 * {"run": run, key: [...]}: the shape of every per-run listing, with the
 * list filled by walk(r, run_id, list) inside one read transaction (walk
 * appends new references to the borrowed list and returns 0, -ENOMEM or
 * another negative errno). On success *out is a new reference owned by the
 * caller; otherwise *out is NULL and *err is filled in.
 */
int query_run_list(struct store_reader *r, const char *run, const char *key,
		   int (*walk)(struct store_reader *, int64_t, json_t *), json_t **out,
		   struct bn_error *err);

/* --- parameters (query.c) -------------------------------------------------- */

/*
 * An optional integer parameter: dflt when s is NULL, else as
 * query_parse_int() parses it (s borrowed).
 */
int query_parse_opt_int(const char *name, const char *s, long long min, long long dflt,
			long long *out, struct bn_error *err);

/*
 * The estimator named by s (NULL: population) in *est; 0, or a 422 in *err
 * (err may be NULL for a name already checked).
 */
int query_parse_estimator(const char *s, enum stats_estimator *est, struct bn_error *err);

/* The name of est as replies spell it (a static string). */
const char *query_estimator_name(enum stats_estimator est);

/* 0 when domain is a valid domain name or "*", else a 422 in *err. */
int query_check_domain(const char *domain, struct bn_error *err);

/*
 * The EMA momentum s (NULL: 0.1) in *out: 0, or a 400 (not a number) or 422
 * (outside (0, 1]) in *err.
 */
int query_parse_momentum(const char *s, double *out, struct bn_error *err);

/* --- the precise window (query_window.c) ----------------------------------- */

/* One layer being merged over a window. */
struct query_layer_acc {
	int64_t id;
	char *name;
	size_t channels;
	bool wanted; /* named by a layer= filter, or no filter */
	struct stats_agg agg;
};

/* The run's layers merged over a window; owned by whoever declared it. */
struct query_window {
	struct query_layer_acc *layers; /* sorted by id */
	size_t n;
	int64_t run_id, domain_id; /* as resolved by query_window_compute (domain -1: all) */
	/* the window used (whole stored entries), the one asked for, and the width
	 * in steps of the entry at its oldest end (docs/API.md, "History") */
	int64_t window, requested_window, resolution;
};

/* A precise-estimate request, with parameters already parsed. */
struct query_window_req {
	const char *run;
	const char *domain; /* a name or "*" */
	bool has_step;
	int64_t step;
	int64_t window;
	const char *const *layers; /* filter, n_layers names; none: every layer */
	size_t n_layers;
};

/*
 * Parse step, window and domain (default "default") of p into *q; q keeps
 * borrowed pointers into p. Returns 0, or a negative errno with a 400/422 in
 * *err.
 */
int query_window_parse(const struct query_params *p, struct query_window_req *q,
		       struct bn_error *err);

/*
 * Merge every stored aggregate of the window (step - window, step] into w
 * (zeroed by the caller; one accumulator per layer of the run, those
 * without data keep k == 0) and resolve the step into *step_out (the
 * latest of the domain when q has none). Over bucketed history the window
 * is first widened to the whole entries covering it: *step_out is then the
 * last step of that cover and w->window its width. Inside the caller's read
 * transaction. Returns 0, or a negative errno with *err filled in: 404 when
 * the run, the domain or a requested layer is unknown, or the window holds
 * no data (for a requested layer, or at all). w must be released with
 * query_window_free() whatever the outcome.
 */
int query_window_compute(struct store_reader *r, const struct query_window_req *q,
			 struct query_window *w, int64_t *step_out, struct bn_error *err);

/*
 * Set "window", "requested_window" and "resolution" of doc (a JSON object)
 * from a computed window: 0 or -ENOMEM.
 */
int query_window_json(json_t *doc, const struct query_window *w);

/* Free what w holds and leave it empty (w itself is the caller's). */
void query_window_free(struct query_window *w);

/* --- the sliding window (query_slide.c) ----------------------------------- */

/*
 * Which entries the precise window ending at an entry holds: today a
 * number of steps, (step - window, step]. What the rule means is decided
 * in query_slide.c alone.
 */
struct query_slide_rule {
	int64_t window;
};

/* One slot of the window's stacks: an entry, or the merge of a suffix of them. */
struct query_slide_slot {
	int64_t step;	 /* the (oldest) entry's step */
	int64_t batches; /* that entry's own batches */
	int64_t n;	 /* elements per channel merged */
	double *mean, *m2;
};

/*
 * The precise window of one layer slid along a walk over its entries in
 * step order (a two-stack queue; see query_slide.c). Declared by the
 * caller, set up by query_slide_init() and released by query_slide_free();
 * it holds the window's entries only, whatever the length of the walk.
 */
struct query_slide {
	size_t channels;
	struct query_slide_rule rule;
	struct query_slide_slot *back, *front; /* the stacks: oldest at back[0], front's top */
	size_t n_back, back_cap, n_front, front_cap;
	size_t back_merged; /* back[0..back_merged) are merged into back_sum */
	struct query_slide_slot back_sum;
	int64_t batches; /* in the window */
};

/* An empty window of `channels` channels under rule (copied): 0 or -ENOMEM. */
int query_slide_init(struct query_slide *s, size_t channels, const struct query_slide_rule *rule);

/* Free what s holds (s itself is the caller's). */
void query_slide_free(struct query_slide *s);

/*
 * Can an entry at `step` be in the window ending at the later entry `at`?
 * A walk that only asks for the windows of some entries need not push the
 * others.
 */
bool query_slide_wanted(const struct query_slide *s, int64_t step, int64_t at);

/*
 * Push the next entry (a step later than every one pushed: its pooled n,
 * batches, mean and M2 of `channels` doubles, copied) and drop those that
 * left the window ending at it. 0 or -ENOMEM.
 */
int query_slide_push(struct query_slide *s, int64_t step, int64_t n, int64_t batches,
		     const double *mean, const double *m2);

/*
 * The population estimate (mean, M2/n) of the window ending at the newest
 * entry pushed, into the caller's arrays of `channels` doubles.
 */
void query_slide_estimate(struct query_slide *s, double *mean_out, double *var_out);

#endif
