/*
 * query_prior: BN-adapt, the covariate-shift adaptation of Schneider et
 * al. (2020): a target domain's window statistics mixed per channel with a
 * prior (source) domain's over the same steps, for /stats and snapshots
 * (docs/API.md, "Adapting to a target domain").
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/stats.h"
#include "query.h"
#include "query_private.h"

int query_prior_parse(const char *prior, const char *weight, struct query_prior *out,
		      struct bn_error *err)
{
	double v;

	out->domain = NULL;
	out->weight = 0.0;
	if (prior == NULL) {
		if (weight != NULL)
			return bn_error_set(err, 400, BN_E_PARAMETER, "prior_weight",
					    "prior_weight weighs a prior domain: give prior too");
		return 0;
	}
	if (query_check_domain(prior, err) < 0) {
		if (err != NULL)
			snprintf(err->path, sizeof(err->path), "prior");
		return -EINVAL;
	}
	if (weight == NULL)
		return bn_error_set(
			err, 400, BN_E_MISSING, "prior_weight",
			"prior needs prior_weight, the weight α of the prior in [0, 1]");
	if (query_parse_number("prior_weight", weight, &v, err) < 0)
		return -EINVAL;
	if (!(v >= 0.0 && v <= 1.0))
		return bn_error_set(err, 422, BN_E_INVALID, "prior_weight",
				    "prior_weight is a weight: 0 <= prior_weight <= 1, got %s",
				    weight);
	out->domain = prior;
	out->weight = v;
	return 0;
}

int query_prior_compute(struct store_reader *r, const struct query_window_req *q,
			const struct query_window *w, int64_t step, const struct query_prior *prior,
			struct query_window *pw, struct bn_error *err)
{
	struct query_window_req pq = {
		.run = q->run,
		.domain = prior->domain,
		.has_step = true,
		.step = step,
		.window = w->window,
	};
	int64_t pstep;
	int rc = query_window_compute(r, &pq, pw, &pstep, err);

	if (rc < 0 && err != NULL && err->status == 404) {
		if (strcmp(err->path, "domain") == 0)
			return bn_error_set(err, 404, BN_E_NOT_FOUND, "prior",
					    "run %s has no domain %s (the prior)", q->run,
					    prior->domain);
		return bn_error_set(err, 404, BN_E_NO_DATA, "prior",
				    "the prior domain %s has no batches in steps (%lld, %lld]",
				    prior->domain, (long long)(step - w->window), (long long)step);
	}
	return rc;
}

int query_prior_mix(const struct query_prior *prior, const struct stats_agg *pa,
		    enum stats_estimator est, size_t channels, double *mean, double *var)
{
	double a = prior->weight, *pm = malloc(2 * channels * sizeof(double)), *pv;
	size_t c;

	if (pm == NULL)
		return -ENOMEM;
	pv = pm + channels;
	stats_estimate(pa, est, pm, pv);
	for (c = 0; c < channels; c++) {
		mean[c] = a * pm[c] + (1.0 - a) * mean[c];
		var[c] = a * pv[c] + (1.0 - a) * var[c];
	}
	free(pm);
	return 0;
}

int query_prior_json(json_t *doc, const struct query_prior *prior)
{
	if (prior->domain == NULL)
		return 0;
	if (json_object_set_new(doc, "prior", json_string(prior->domain)) < 0 ||
	    json_object_set_new(doc, "prior_weight", json_real(prior->weight)) < 0)
		return -ENOMEM;
	return 0;
}
