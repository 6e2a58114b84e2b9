/*
 * query_window: the precise window every estimate is made of. Resolves a
 * request's step (given, or the latest of the domain), window and domain
 * into the steps (step - window, step], and merges each layer's per-step
 * aggregates over them in one fixed order (step, layer, domain), so that
 * the same question always gets the same bits (docs/API.md, "Precise
 * statistics").
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/stats.h"
#include "query.h"
#include "query_private.h"

static int acc_cmp_id(const void *a, const void *b)
{
	const struct query_layer_acc *x = a, *y = b;

	return (x->id > y->id) - (x->id < y->id);
}

static int collect_layer(void *ctx, const struct store_item *it)
{
	struct query_window *w = ctx;
	struct query_layer_acc *p = realloc(w->layers, (w->n + 1) * sizeof(*p));

	if (p == NULL)
		return -ENOMEM;
	w->layers = p;
	p = &w->layers[w->n];
	memset(p, 0, sizeof(*p));
	p->id = it->id;
	p->channels = (size_t)it->layer.channels;
	p->name = strdup(it->name);
	if (p->name == NULL)
		return -ENOMEM;
	w->n++;
	return 0;
}

void query_window_free(struct query_window *w)
{
	size_t i;

	for (i = 0; i < w->n; i++) {
		free(w->layers[i].name);
		stats_agg_free(&w->layers[i].agg);
	}
	free(w->layers);
	w->layers = NULL;
	w->n = 0;
}

/* x rounded down (floor_to) or up (ceil_to) to a multiple of w > 0. */
static int64_t floor_to(int64_t x, int64_t w)
{
	int64_t q = x / w;

	return (x % w != 0 && x < 0 ? q - 1 : q) * w;
}

static int64_t ceil_to(int64_t x, int64_t w)
{
	int64_t q = x / w;

	return (x % w != 0 && x > 0 ? q + 1 : q) * w;
}

int query_window_json(json_t *doc, const struct query_window *w)
{
	if (json_object_set_new(doc, "window", json_integer(w->window)) < 0 ||
	    json_object_set_new(doc, "requested_window", json_integer(w->requested_window)) < 0 ||
	    json_object_set_new(doc, "resolution", json_integer(w->resolution)) < 0)
		return -ENOMEM;
	return 0;
}

static int merge_row(void *ctx, const struct store_agg_row *row)
{
	struct query_window *w = ctx;
	struct query_layer_acc key = { .id = row->layer_id };
	struct query_layer_acc *l = bsearch(&key, w->layers, w->n, sizeof(key), acc_cmp_id);

	if (l == NULL || l->channels != row->agg->channels)
		return -EIO;
	if (l->agg.mean == NULL && stats_agg_init(&l->agg, l->channels) < 0)
		return -ENOMEM;
	stats_agg_merge(&l->agg, row->agg);
	return 0;
}

/*
 * Merge every per-step aggregate of the window into w (one accumulator per
 * layer of the run; those without data keep k == 0) and resolve the step.
 * Inside the caller's read transaction. 404 when the window holds no data
 * or a requested layer has none.
 */
int query_window_compute(struct store_reader *r, const struct query_window_req *q,
			 struct query_window *w, int64_t *step_out, struct bn_error *err)
{
	int64_t run_id, domain_id = -1, step = q->step, lo, width_hi;
	int64_t *ids = NULL;
	size_t i, j, n_ids = 0, with_data = 0;
	int rc;

	rc = query_run_find(r, q->run, &run_id, err);
	if (rc < 0)
		return rc;
	w->run_id = run_id;
	w->domain_id = -1;
	if (strcmp(q->domain, QUERY_DOMAIN_ALL) != 0) {
		rc = store_domain_find(r, run_id, q->domain, &domain_id);
		if (rc == -ENOENT)
			return bn_error_set(err, 404, BN_E_NOT_FOUND, "domain",
					    "run %s has no domain %s", q->run, q->domain);
		if (rc < 0)
			return query_read_failed(err);
		w->domain_id = domain_id;
	}
	if (!q->has_step) {
		rc = store_latest_step(r, run_id, domain_id, &step);
		if (rc == -ENOENT)
			return bn_error_set(err, 404, BN_E_NOT_FOUND, NULL,
					    "run %s has no statistics in domain %s", q->run,
					    q->domain);
		if (rc < 0)
			return query_read_failed(err);
	}

	rc = store_layers_foreach(r, run_id, collect_layer, w);
	if (rc < 0)
		return rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
	qsort(w->layers, w->n, sizeof(*w->layers), acc_cmp_id);
	if (q->n_layers > 0) {
		ids = calloc(q->n_layers, sizeof(*ids));
		if (ids == NULL)
			return query_oom(err);
		for (i = 0; i < q->n_layers; i++) {
			for (j = 0; j < w->n && strcmp(w->layers[j].name, q->layers[i]) != 0; j++)
				;
			if (j == w->n) {
				free(ids);
				return bn_error_set(err, 404, BN_E_NOT_FOUND, "layer",
						    "run %s has no layer %s", q->run, q->layers[i]);
			}
			if (!w->layers[j].wanted)
				ids[n_ids++] = w->layers[j].id;
			w->layers[j].wanted = true;
		}
	} else {
		for (j = 0; j < w->n; j++)
			w->layers[j].wanted = true;
	}

	/*
	 * Over bucketed history, widen the window to the whole entries that
	 * cover it (docs/API.md, "History"). step - window cannot overflow:
	 * step >= 0 and window >= 1.
	 */
	lo = step - q->window;
	if (store_resolution(r, run_id, domain_id, lo + 1, &w->resolution) < 0 ||
	    store_resolution(r, run_id, domain_id, step, &width_hi) < 0) {
		free(ids);
		return query_read_failed(err);
	}
	lo = floor_to(lo, w->resolution);
	step = ceil_to(step, width_hi);
	w->window = step - lo;
	w->requested_window = q->window;
	*step_out = step;
	rc = store_aggs_foreach(r, run_id, domain_id, lo, step, ids, n_ids, merge_row, w);
	free(ids);
	if (rc < 0)
		return rc == -ENOMEM ? query_oom(err) : query_read_failed(err);

	for (j = 0; j < w->n; j++) {
		if (!w->layers[j].wanted)
			continue;
		if (w->layers[j].agg.k > 0) {
			with_data++;
		} else if (q->n_layers > 0) {
			return bn_error_set(
				err, 404, BN_E_NOT_FOUND, "layer",
				"layer %s has no data in steps (%lld, %lld] of domain %s",
				w->layers[j].name, (long long)lo, (long long)step, q->domain);
		}
	}
	if (with_data == 0)
		return bn_error_set(err, 404, BN_E_NOT_FOUND, "step",
				    "run %s has no data in steps (%lld, %lld] of domain %s", q->run,
				    (long long)lo, (long long)step, q->domain);
	return 0;
}

/* Parse step, window and domain (with its default) into *q. */
int query_window_parse(const struct query_params *p, struct query_window_req *q,
		       struct bn_error *err)
{
	long long v;

	q->domain = p->domain ? p->domain : "default";
	q->window = 1;
	q->has_step = false;
	q->layers = p->layers;
	q->n_layers = p->n_layers;
	if (p->window != NULL) {
		if (query_parse_int("window", p->window, 1, &v, err) < 0)
			return -EINVAL;
		q->window = v;
	}
	if (p->step != NULL) {
		if (query_parse_int("step", p->step, 0, &v, err) < 0)
			return -EINVAL;
		q->has_step = true;
		q->step = v;
	}
	return query_check_domain(q->domain, err);
}
