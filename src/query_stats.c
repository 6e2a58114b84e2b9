/*
 * query_stats: GET /v1/runs/{run}/stats, the precise statistics of every
 * layer over a window, with the estimator asked for, their precision, and
 * optionally mixed with a prior domain's (BN-adapt) (docs/API.md, "Precise
 * statistics", "Precision", "Adapting to a target domain").
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bnstat/stats.h"
#include "query.h"
#include "query_private.h"

/* One layer's reply: counts, batch sizes, the estimate and its precision. */
static json_t *layer_stats_json(const struct query_layer_acc *l, const struct query_layer_acc *pl,
				const struct query_prior *prior, enum stats_estimator est,
				double target_se)
{
	json_t *o;
	double *mean, *var;

	mean = malloc(2 * l->channels * sizeof(double));
	if (mean == NULL)
		return NULL;
	var = mean + l->channels;
	stats_estimate(&l->agg, est, mean, var);
	if (pl != NULL && query_prior_mix(prior, &pl->agg, est, l->channels, mean, var) < 0) {
		free(mean);
		return NULL;
	}
	o = json_pack("{s:I, s:I, s:I, s:o, s:o, s:{s:I, s:o, s:I}}", "channels",
		      (json_int_t)l->channels, "count", (json_int_t)l->agg.n, "batches",
		      (json_int_t)l->agg.k, "mean", query_json_doubles(mean, l->channels), "var",
		      query_json_doubles(var, l->channels), "batch_size", "min",
		      (json_int_t)l->agg.nbs_min, "mean",
		      query_json_num((double)l->agg.n / (double)l->agg.k), "max",
		      (json_int_t)l->agg.nbs_max);
	free(mean);
	if (o == NULL)
		return NULL;
	if (query_precision_json(o, &l->agg, target_se) < 0 ||
	    (pl != NULL &&
	     (json_object_set_new(o, "prior_count", json_integer(pl->agg.n)) < 0 ||
	      json_object_set_new(o, "prior_batches", json_integer(pl->agg.k)) < 0))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

int query_stats(struct store_reader *r, const char *run, const struct query_params *p, json_t **out,
		struct bn_error *err)
{
	struct query_window w = { 0 }, pw = { 0 };
	struct query_window_req q = { .run = run };
	struct query_prior prior;
	enum stats_estimator est = STATS_EST_POPULATION;
	json_t *layers = NULL;
	double target_se;
	int64_t step = 0;
	size_t j;
	int rc;

	*out = NULL;
	if (query_parse_estimator(p->estimator, &est, err) < 0 ||
	    query_window_parse(p, &q, err) < 0 ||
	    query_parse_target_se(p->target_se, &target_se, err) < 0 ||
	    query_prior_parse(p->prior, p->prior_weight, &prior, err) < 0)
		return -EINVAL;

	store_read_begin(r);
	rc = query_window_compute(r, &q, &w, &step, err);
	if (rc == 0 && prior.domain != NULL)
		rc = query_prior_compute(r, &q, &w, step, &prior, &pw, err);
	if (rc < 0)
		goto done;
	layers = json_object();
	if (layers == NULL) {
		rc = query_oom(err);
		goto done;
	}
	for (j = 0; j < w.n; j++) {
		const struct query_layer_acc *pl = prior.domain ? &pw.layers[j] : NULL;
		json_t *o;

		if (!w.layers[j].wanted || w.layers[j].agg.k == 0 || (pl != NULL && pl->agg.k == 0))
			continue;
		o = layer_stats_json(&w.layers[j], pl, &prior, est, target_se);
		if (o == NULL || json_object_set_new(layers, w.layers[j].name, o) < 0) {
			rc = query_oom(err);
			goto done;
		}
	}
	*out = json_pack("{s:s, s:s, s:I, s:I, s:s, s:f, s:O}", "run", run, "domain", q.domain,
			 "step", (json_int_t)step, "window", (json_int_t)q.window, "estimator",
			 query_estimator_name(est), "target_se", target_se, "layers", layers);
	rc = *out && query_window_json(*out, &w) == 0 && query_prior_json(*out, &prior) == 0
		     ? 0
		     : query_oom(err);
done:
	store_read_end(r);
	json_decref(layers);
	query_window_free(&w);
	query_window_free(&pw);
	return rc;
}
