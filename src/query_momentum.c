/*
 * query_momentum: GET /v1/runs/{run}/momentum, the momentum advisor
 * (docs/API.md, "Momentum advisor"): for each momentum asked for, the mean
 * over the range's entries (evenly subsampled to at most `points`) of the
 * kl of /compare between the EMA simulated at that momentum and the
 * precise window ending at each of them, per layer and overall.
 *
 * It streams: one walk over the range's rows in step order (every layer's
 * rows of a step together, as they were written) replays every momentum
 * of every layer at once (replay_layers_momenta) and slides each layer's
 * precise window along the same rows (query_slide.c), so memory holds a
 * few arrays of the channels per momentum and the windows' entries, never
 * the range's steps; only the sums per sampled entry are kept.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/stats.h"
#include "query.h"
#include "query_private.h"
#include "replay.h"

/* At most this many momenta in one question. */
#define MOMENTUM_MAX 16
#define MOMENTUM_POINTS 200

static const char momenta_default[] = "0.3,0.1,0.03,0.01,0.003,0.001";

/* What is summed per layer. */
struct mom_layer {
	double kl[MOMENTUM_MAX]; /* sum over the sampled entries the layer has */
	size_t count;
};

struct advisor {
	struct store_reader *r;
	struct replay_cache *cache;
	int64_t run_id, domain_id;
	double momenta[MOMENTUM_MAX];
	size_t k;
	struct query_slide_rule rule;
	struct query_auto autow; /* window=auto: each sampled entry's window */
	int64_t min_batches;
	/* the entries of the range: how many, then the sampled ones */
	size_t n_entries, points, seen;
	int64_t *step, *width; /* [n]: the sampled entries */
	size_t n, cap;
	struct query_layer *layer; /* [n_layers], by id */
	struct mom_layer *layers;  /* [n_layers] */
	size_t n_layers;
	double *step_kl;	    /* [n][k]: sum over the layers at each sampled entry */
	size_t *step_layers;	    /* [n] */
	double bound[MOMENTUM_MAX]; /* the largest sim_error_bound over what was averaged */
};

/*
 * The momenta of s (NULL: the default list) into a: a comma list of
 * numbers, each in (0, 1], none twice. 400 for one that is not a number,
 * 422 for one out of range, listed twice, or too many.
 */
static int parse_momenta(const char *s, struct advisor *a, struct bn_error *err)
{
	char item[64];
	const char *p = s ? s : momenta_default;
	size_t i;

	a->k = 0;
	for (;;) {
		size_t len = strcspn(p, ",");
		double v;

		if (len >= sizeof(item))
			return bn_error_set(err, 400, BN_E_PARAMETER, "momenta",
					    "parameter momenta must be a comma list of numbers");
		memcpy(item, p, len);
		item[len] = '\0';
		if (query_parse_number("momenta", item, &v, err) < 0)
			return -EINVAL;
		if (!(v > 0.0 && v <= 1.0))
			return bn_error_set(err, 422, BN_E_INVALID, "momenta",
					    "each momentum is PyTorch's: 0 < momentum <= 1 (Keras "
					    "decay 0.99 is momentum 0.01), got %s",
					    item);
		for (i = 0; i < a->k; i++)
			if (a->momenta[i] == v)
				return bn_error_set(err, 422, BN_E_INVALID, "momenta",
						    "momentum %s is listed twice", item);
		if (a->k == MOMENTUM_MAX)
			return bn_error_set(err, 422, BN_E_INVALID, "momenta", "at most %d momenta",
					    MOMENTUM_MAX);
		a->momenta[a->k++] = v;
		p += strcspn(p, ",");
		if (*p == '\0')
			return 0;
		p++;
	}
}

static int count_entry(void *ctx, int64_t step, int64_t width)
{
	struct advisor *a = ctx;

	(void)step;
	(void)width;
	a->n_entries++;
	return 0;
}

/*
 * Keep the entries the subsample takes: all when they are at most
 * `points`, else the i-th for i = floor(j * (n - 1) / (points - 1)),
 * j = 0 .. points - 1 (evenly spread, the first and the last kept).
 */
static int keep_entry(void *ctx, int64_t step, int64_t width)
{
	struct advisor *a = ctx;
	size_t i = a->seen++, n = a->n_entries, p = a->points;
	bool keep;

	if (n <= p)
		keep = true;
	else if (p == 1)
		keep = i == n - 1;
	else
		keep = a->n < p && i == (size_t)((unsigned long long)a->n * (n - 1) / (p - 1));
	if (!keep)
		return 0;
	if (a->n == a->cap)
		return -ENOMEM; /* cannot happen: cap is min(n, points) */
	a->step[a->n] = step;
	a->width[a->n] = width;
	a->n++;
	return 0;
}

/* One layer in the walk. */
struct layer_walk {
	struct query_slide slide;
	size_t next; /* the next sampled entry */
};

/* The walk over every layer. */
struct walk_all {
	struct advisor *a;
	struct layer_walk *lw; /* [n_layers] */
	double *pmean, *pvar;  /* [widest layer] the precise window at a sampled entry */
};

static int layer_step(void *ctx, size_t li, const struct replay_step *st)
{
	struct walk_all *wa = ctx;
	struct advisor *a = wa->a;
	struct layer_walk *w = &wa->lw[li];
	struct mom_layer *l = &a->layers[li];
	size_t c = a->layer[li].channels, i;
	int rc;

	while (w->next < a->n && a->step[w->next] < st->step)
		w->next++; /* a sampled entry without this layer */
	if (w->next == a->n)
		return 0;
	if (query_slide_wanted(&w->slide, st->step, a->step[w->next])) {
		rc = query_slide_push(&w->slide, st->step, st->n, st->mean, st->m2);
		if (rc < 0)
			return rc;
	}
	if (a->step[w->next] != st->step)
		return 0;
	query_slide_estimate(&w->slide, wa->pmean, wa->pvar);
	for (i = 0; i < a->k; i++) {
		struct stats_cmp cmp;

		/* the kl of /compare: the EMA as the estimate, the window as the reference */
		stats_compare(c, st->ema_mean[i], st->ema_var[i], wa->pmean, wa->pvar, &cmp);
		l->kl[i] += cmp.kl;
		a->step_kl[w->next * a->k + i] += cmp.kl;
		if (st->bound[i] > a->bound[i])
			a->bound[i] = st->bound[i];
	}
	l->count++;
	a->step_layers[w->next]++;
	w->next++;
	return 0;
}

static int advisor_run(struct advisor *a)
{
	struct walk_all wa = { .a = a };
	int64_t first = a->step[0], *ids = NULL;
	size_t *channels = NULL, li, ready = 0, widest = 1;
	int rc = -ENOMEM;

	wa.lw = calloc(a->n_layers, sizeof(*wa.lw));
	ids = malloc(a->n_layers * sizeof(*ids));
	channels = malloc(a->n_layers * sizeof(*channels));
	if (wa.lw == NULL || ids == NULL || channels == NULL)
		goto done;
	for (li = 0; li < a->n_layers; li++, ready++) {
		ids[li] = a->layer[li].id;
		channels[li] = a->layer[li].channels;
		if (channels[li] > widest)
			widest = channels[li];
		if (query_slide_init(&wa.lw[li].slide, channels[li], &a->rule) < 0)
			goto done;
	}
	wa.pmean = malloc(2 * widest * sizeof(double));
	if (wa.pmean == NULL)
		goto done;
	wa.pvar = wa.pmean + widest;
	/*
	 * The states from the first sampled entry on; the rows from the oldest
	 * step its window may hold (first - window cannot overflow: first >= 0).
	 */
	rc = replay_layers_momenta(a->cache, a->r, a->run_id, a->domain_id, a->n_layers, ids,
				   channels, a->momenta, a->k, first - 1,
				   a->rule.autow ? a->autow.first_low : first - a->rule.window,
				   a->step[a->n - 1], layer_step, &wa);
done:
	for (li = 0; li < ready; li++)
		query_slide_free(&wa.lw[li].slide);
	free(wa.lw);
	free(wa.pmean);
	free(ids);
	free(channels);
	return rc;
}

static json_t *advisor_json(const struct advisor *a, const char *run, const char *domain)
{
	json_t *doc = json_pack("{s:s, s:s, s:s, s:o, s:I, s:I}", "run", run, "domain", domain,
				"estimator", "population", "window",
				a->rule.autow ? json_string("auto") : json_integer(a->rule.window),
				"points", (json_int_t)a->points, "steps", (json_int_t)a->n);
	json_t *steps = json_array(), *res = json_array(), *order = json_array(),
	       *list = json_array();
	double best_kl = NAN;
	size_t i, j, li, best = 0;

	if (doc == NULL || steps == NULL || res == NULL || order == NULL || list == NULL)
		goto fail;
	if (a->rule.autow &&
	    json_object_set_new(doc, "min_batches", json_integer(a->min_batches)) < 0)
		goto fail;
	for (j = 0; j < a->n; j++)
		if (json_array_append_new(steps, json_integer(a->step[j])) < 0 ||
		    json_array_append_new(res, json_integer(a->width[j])) < 0)
			goto fail;
	for (li = 0; li < a->n_layers; li++)
		if (a->layers[li].count > 0 &&
		    json_array_append_new(order, json_string(a->layer[li].name)) < 0)
			goto fail;
	for (i = 0; i < a->k; i++) {
		double sum = 0.0, kl;
		size_t cnt = 0;
		json_t *layers = json_object(), *m;

		/* overall: the mean over the entries of /compare's overall (mean over layers) */
		for (j = 0; j < a->n; j++)
			if (a->step_layers[j] > 0) {
				sum += a->step_kl[j * a->k + i] / (double)a->step_layers[j];
				cnt++;
			}
		kl = cnt ? sum / (double)cnt : NAN;
		if (!isnan(kl) && (isnan(best_kl) || kl < best_kl)) {
			best_kl = kl;
			best = i;
		}
		m = json_pack("{s:f, s:f, s:o, s:o, s:f}", "momentum", a->momenta[i],
			      "effective_window", 1.0 / a->momenta[i], "kl", query_json_num(kl),
			      "layers", layers, "sim_error_bound", a->bound[i]);
		if (m == NULL || json_array_append_new(list, m) < 0)
			goto fail;
		for (li = 0; li < a->n_layers; li++) {
			const struct mom_layer *l = &a->layers[li];

			if (l->count > 0 &&
			    json_object_set_new(layers, a->layer[li].name,
						query_json_num(l->kl[i] / (double)l->count)) < 0)
				goto fail;
		}
	}
	json_object_set_new(doc, "step", steps);
	json_object_set_new(doc, "resolution", res);
	json_object_set_new(doc, "layer_order", order);
	json_object_set_new(doc, "momenta", list);
	json_object_set_new(doc, "best",
			    isnan(best_kl) ? json_null() : json_real(a->momenta[best]));
	return doc;
fail:
	json_decref(doc);
	json_decref(steps);
	json_decref(res);
	json_decref(order);
	json_decref(list);
	return NULL;
}

int query_momentum(struct store_reader *r, struct replay_cache *cache, const char *run,
		   const struct query_params *p, json_t **out, struct bn_error *err)
{
	struct advisor a = { .r = r, .cache = cache, .domain_id = -1 };
	struct query_window_req q = { .run = run };
	struct query_params pw = *p;
	long long from, to, points;
	int64_t latest;
	int rc;

	*out = NULL;
	/* the advisor's window defaults to auto (docs/API.md, "Momentum advisor") */
	if (pw.window == NULL)
		pw.window = "auto";
	if (query_parse_opt_int("from", p->from, 0, 0, &from, err) < 0 ||
	    query_parse_opt_int("to", p->to, 0, -1, &to, err) < 0 ||
	    query_parse_opt_int("points", p->points, 1, MOMENTUM_POINTS, &points, err) < 0 ||
	    query_window_parse(&pw, &q, err) < 0 || parse_momenta(p->momenta, &a, err) < 0)
		return -EINVAL;
	if (p->to != NULL && from > to)
		return bn_error_set(err, 422, BN_E_INVALID, "from",
				    "from (%lld) is after to (%lld)", from, to);
	a.rule.window = q.window;
	a.min_batches = q.min_batches;
	a.points = (size_t)points;

	store_read_begin(r);
	rc = query_run_domain_find(r, run, q.domain, &a.run_id, &a.domain_id, err);
	if (rc < 0)
		goto done;
	if (p->to == NULL) {
		rc = store_latest_step(r, a.run_id, a.domain_id, &latest);
		to = rc == 0 ? latest : -1;
	}
	rc = store_entries_foreach(r, a.run_id, a.domain_id, from, to, count_entry, &a);
	if (rc == 0) {
		a.cap = a.n_entries < a.points ? a.n_entries : a.points;
		a.step = malloc((a.cap + 1) * sizeof(*a.step));
		a.width = malloc((a.cap + 1) * sizeof(*a.width));
		a.step_kl = calloc((a.cap + 1) * a.k, sizeof(*a.step_kl));
		a.step_layers = calloc(a.cap + 1, sizeof(*a.step_layers));
		rc = a.step && a.width && a.step_kl && a.step_layers ? 0 : -ENOMEM;
	}
	if (rc == 0)
		rc = store_entries_foreach(r, a.run_id, a.domain_id, from, to, keep_entry, &a);
	if (rc == 0)
		rc = query_layers_read(r, a.run_id, &a.layer, &a.n_layers);
	if (rc == 0 && (a.layers = calloc(a.n_layers + 1, sizeof(*a.layers))) == NULL)
		rc = -ENOMEM;
	if (rc < 0) {
		rc = rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
		goto done;
	}
	if (a.n == 0) {
		rc = bn_error_set(err, 404, BN_E_NOT_FOUND, NULL,
				  "run %s has no data in steps [%lld, %lld] of domain %s", run,
				  from, to, q.domain);
		goto done;
	}
	if (q.window_auto) {
		rc = query_auto_build(r, a.run_id, a.domain_id, a.step[0], a.step[a.n - 1],
				      q.min_batches, &a.autow);
		if (rc < 0) {
			rc = rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
			goto done;
		}
		a.rule.autow = &a.autow;
	}
	rc = a.n_layers > 0 ? advisor_run(&a) : 0;
	if (rc < 0) {
		rc = rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
		goto done;
	}
	*out = advisor_json(&a, run, q.domain);
	rc = *out ? 0 : query_oom(err);
done:
	store_read_end(r);
	query_layers_free(a.layer, a.n_layers);
	free(a.layers);
	free(a.step);
	free(a.width);
	free(a.step_kl);
	free(a.step_layers);
	query_auto_free(&a.autow);
	return rc;
}
