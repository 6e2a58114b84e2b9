/*
 * query_private: what the files of the query module share and nothing
 * outside it may use: the parameter checks every answer makes, the error
 * replies, JSON numbers, the precise window (query_window.c) that stats,
 * compare, shift and snapshots merge, and the other references compare and
 * drift take instead of it (query_ref.c).
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

struct query_window_req;

/* The domain parameter that pools every domain of a step. */
#define QUERY_DOMAIN_ALL "*"

/* --- replies (query.c) ----------------------------------------------------- */

/*
 * A new JSON number for v, or a new null when v is not finite (JSON has no
 * infinity; statistics of extreme inputs can overflow). NULL when out of
 * memory.
 */
json_t *query_json_num(double v);

/*
 * A new JSON integer for the whole number v >= 0, or a number when v is too
 * large for a JSON integer to hold exactly (batches_for can be). NULL on OOM.
 */
json_t *query_json_count(double v);

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

/*
 * ema (NULL: worker) of p into *sim and, for sim, p's momentum into
 * *momentum (left as it is otherwise): 0, or a 422 naming `ema` or the
 * momentum's error in *err.
 */
int query_parse_ema(const struct query_params *p, bool *sim, double *momentum,
		    struct bn_error *err);

/*
 * The target_se parameter s (NULL: QUERY_TARGET_SE) in *out: 0, or a 400
 * (not a number) or 422 (not > 0) naming it in *err.
 */
#define QUERY_TARGET_SE 0.01
int query_parse_target_se(const char *s, double *out, struct bn_error *err);

/*
 * Set "batch_noise", "mean_se" and "batches_for" of the layer object o from
 * the merged aggregate a (nulls with fewer than two batches; docs/API.md,
 * "Precision"). Returns 0 or -ENOMEM.
 */
int query_precision_json(json_t *o, const struct stats_agg *a, double target_se);

/*
 * The same from a batch noise already known (have false: none, the nulls),
 * of k batches: a snapshot's stored layer. Returns 0 or -ENOMEM.
 */
int query_precision_fields(json_t *o, bool have, double noise, int64_t k, double target_se);

/* --- the reference of compare and drift (query_ref.c) ------------------------ */

/* What the EMA is compared with: `precise=` (docs/API.md, "Comparison"). */
enum query_ref_kind {
	QUERY_REF_WINDOW,   /* the precise window (the default) */
	QUERY_REF_SNAPSHOT, /* snapshot:LABEL, its stored layers */
	QUERY_REF_WORKER,   /* worker:NAME, that worker's EMA at the same step */
};

struct query_ref {
	enum query_ref_kind kind;
	char name[STORE_LABEL_MAX + 1]; /* the label or the worker */
	struct store_snapshot *snap;	/* a snapshot, once loaded: layers by name */
};

/*
 * Parse p->precise into *ref (zeroed by the caller): absent or "window" is
 * the window; "snapshot:LABEL" and "worker:NAME" name a reference, which
 * leaves no room for `window` or `estimator` (they choose a window). Returns
 * 0, or -EINVAL with a 400 in *err naming `precise` (malformed), `window` or
 * `estimator` (given with a reference).
 */
int query_ref_parse(const struct query_params *p, struct query_ref *ref, struct bn_error *err);

/*
 * Load the reference inside the caller's read transaction: a snapshot's
 * layers (read once per request, whatever its domain), or check that the
 * worker sent batches in domain domain_id of the run (run and domain are
 * the names, for messages). Returns 0, or a negative errno with *err
 * filled in: 404 naming `precise` for an unknown label or worker, 500 when
 * the read fails.
 */
int query_ref_load(struct store_reader *r, const char *run, int64_t run_id, const char *domain,
		   int64_t domain_id, struct query_ref *ref, struct bn_error *err);

/*
 * The snapshot's layer `name` when it has one of `channels` channels, else
 * NULL. Borrowed from ref, valid until query_ref_free().
 */
const struct store_snapshot_layer *query_ref_layer(const struct query_ref *ref, const char *name,
						   size_t channels);

/*
 * Resolve the EMA side's step inside the caller's read transaction: the
 * given one or the latest of the domain (domain_id < 0: any; `domain` its
 * name, for messages), then, over bucketed history, the last step of the
 * entry holding it (where EMAs are kept). Returns 0 with *out set, or a
 * 404 (no data) / 500 in *err.
 */
int query_ref_step(struct store_reader *r, int64_t run_id, int64_t domain_id, const char *domain,
		   bool has_step, bool ema_step, int64_t step, int64_t *out, struct bn_error *err);

/*
 * /compare's default step when a worker EMA is compared (docs/API.md,
 * "Comparison"): when q has no step, set it to the newest step of q's domain
 * with a worker EMA, if the run, the domain and such a step exist (else q
 * is left as it is, for query_window_compute() to answer). Inside the
 * caller's read transaction. 0, or a negative errno with a 500 in *err.
 */
int query_ema_default_step(struct store_reader *r, struct query_window_req *q,
			   struct bn_error *err);

/*
 * Add "precise" ("snapshot:LABEL", "worker:NAME") and, for a snapshot,
 * "snapshot" (its label, step, window, domain, estimator, created) to doc:
 * 0 or -ENOMEM. Nothing for the window.
 */
int query_ref_json(json_t *doc, const struct query_ref *ref);

/* Free what ref holds (ref itself is the caller's). */
void query_ref_free(struct query_ref *ref);

/* A snapshot's parameters without its layers, as its listing shows them (query_snapshot.c). */
json_t *query_snapshot_header_json(const struct store_snapshot *snap);

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
	bool window_auto; /* window=auto: requested_window is what auto chose */
	int64_t min_batches;
};

/* A precise-estimate request, with parameters already parsed. */
struct query_window_req {
	const char *run;
	const char *domain; /* a name or "*" */
	bool has_step;
	int64_t step;
	int64_t window;
	bool window_auto;	   /* window=auto: the smallest window of min_batches */
	int64_t min_batches;	   /* with window_auto */
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
 * Parse the `window` parameter s (NULL: absent, window 1) and its
 * `min_batches` into *window or, for "auto", *window_auto and *min_batches
 * (default QUERY_MIN_BATCHES). Returns 0, or a negative errno with a 400/422
 * naming the parameter in *err (min_batches without window=auto is a 400).
 */
#define QUERY_MIN_BATCHES 100
int query_window_parse_width(const char *s, const char *min_batches, int64_t *window,
			     bool *window_auto, int64_t *min_batches_out, struct bn_error *err);

/*
 * window=auto at one step (docs/API.md, "window=auto"): *window receives
 * the smallest window ending at step holding at least min_batches batches
 * of the domain (domain_id < 0: every domain), whole stored entries, or all
 * the history up to step when it holds fewer (1 when it holds none). Inside
 * the caller's read transaction. Returns 0 or a negative errno.
 */
int query_auto_window(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step,
		      int64_t min_batches, int64_t *window);

/*
 * window=auto at every stored entry of [lo, hi], for the sliding windows of
 * series and drift: built by query_auto_build(), asked with query_auto_low().
 */
struct query_auto {
	int64_t *step, *low; /* [n]: an entry, and its window's exclusive low end */
	size_t n;
	int64_t first_low; /* the low end at lo: the oldest step any window needs */
};

/*
 * Fill *a (zeroed by the caller) for the entries of [lo, hi] of the domain.
 * Inside the caller's read transaction. Returns 0 or a negative errno;
 * a is released with query_auto_free() whatever the outcome.
 */
int query_auto_build(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t lo,
		     int64_t hi, int64_t min_batches, struct query_auto *a);

/*
 * The window of entry `step` is (low, step]: low, or INT64_MIN for a step
 * before lo (a step read only as part of a later step's window).
 */
int64_t query_auto_low(const struct query_auto *a, int64_t step);

/*
 * The exclusive low end of the precise window ending at entry `step`: the
 * table's (autow, window=auto) or step - window. What every sliding window
 * (series, drift, the momentum advisor) pops by.
 */
int64_t query_window_low(const struct query_auto *autow, int64_t window, int64_t step);

void query_auto_free(struct query_auto *a);

/*
 * Set "window", "requested_window" and "resolution" of doc (a JSON object)
 * from a computed window: 0 or -ENOMEM.
 */
int query_window_json(json_t *doc, const struct query_window *w);

/* Free what w holds and leave it empty (w itself is the caller's). */
void query_window_free(struct query_window *w);

/* --- BN-adapt: mixing with a prior domain (query_prior.c) --------------- */

/* prior=DOMAIN&prior_weight=α as parsed; domain NULL: no prior. Borrowed. */
struct query_prior {
	const char *domain;
	double weight; /* α in [0, 1] */
};

/*
 * Parse prior and prior_weight (either may be NULL) into *out. Returns 0,
 * or a negative errno with *err filled in: 400 for prior_weight missing
 * with prior, given without it, or not a number; 422 for α outside [0, 1]
 * or a bad domain name.
 */
int query_prior_parse(const char *prior, const char *weight, struct query_prior *out,
		      struct bn_error *err);

/*
 * Merge the prior domain over the same steps as w, the window of q already
 * computed, ending at step: into pw (zeroed by the caller, every layer of
 * the run, in w's order). Inside the caller's read transaction. Returns 0,
 * or a negative errno with a 404 naming `prior` in *err: not_found for a
 * domain the run does not have, no_data when it has no batch in the window.
 * pw is released with query_window_free() whatever the outcome.
 */
int query_prior_compute(struct store_reader *r, const struct query_window_req *q,
			const struct query_window *w, int64_t step, const struct query_prior *prior,
			struct query_window *pw, struct bn_error *err);

/*
 * Mix the prior's estimate (from its aggregate pa, with est) into the
 * target's mean and var[0..channels): x <- α·x_prior + (1−α)·x (docs/API.md,
 * "Adapting to a target domain"). Returns 0 or -ENOMEM.
 */
int query_prior_mix(const struct query_prior *prior, const struct stats_agg *pa,
		    enum stats_estimator est, size_t channels, double *mean, double *var);

/* Set "prior" and "prior_weight" of doc when there is a prior: 0 or -ENOMEM. */
int query_prior_json(json_t *doc, const struct query_prior *prior);

/* --- the sliding window (query_slide.c) ----------------------------------- */

/*
 * Which entries the precise window ending at an entry holds: a number of
 * steps, (step - window, step], or with autow (borrowed, built for the walk's
 * range by query_auto_build()) each entry's window=auto. What the rule
 * means is decided in query_slide.c alone.
 */
struct query_slide_rule {
	int64_t window;
	const struct query_auto *autow; /* NULL: the number of steps */
};

/* One slot of the window's stacks: an entry, or the merge of a suffix of them. */
struct query_slide_slot {
	int64_t step; /* the (oldest) entry's step */
	int64_t n;    /* elements per channel merged */
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
int query_slide_push(struct query_slide *s, int64_t step, int64_t n, const double *mean,
		     const double *m2);

/*
 * The population estimate (mean, M2/n) of the window ending at the newest
 * entry pushed, into the caller's arrays of `channels` doubles.
 */
void query_slide_estimate(struct query_slide *s, double *mean_out, double *var_out);

#endif
