/*
 * query: GET answers. Reads per-step aggregates through the store, merges
 * them with the stats module in a fixed order (step, layer, domain) so that
 * the same question always gets the same bits, and builds the JSON reply.
 */
#include "query.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/ingest.h"
#include "bnstat/stats.h"

#define DOMAIN_ALL "*"

int query_parse_int(const char *name, const char *s, long long min,
		    long long *out, struct bn_error *err)
{
	char *end;
	long long v;

	errno = 0;
	if (s == NULL || *s == '\0' || *s == '+' || *s == ' ')
		goto bad;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0')
		goto bad;
	if (v < min)
		return bn_error_set(err, 422, BN_E_INVALID, name,
				    "parameter %s must be at least %lld, got %lld", name, min, v);
	*out = v;
	return 0;
bad:
	return bn_error_set(err, 400, BN_E_PARAMETER, name,
			    "parameter %s must be an integer, got \"%s\"", name, s ? s : "");
}

static json_t *json_doubles(const double *v, size_t n)
{
	json_t *a = json_array();
	size_t i;

	if (a == NULL)
		return NULL;
	for (i = 0; i < n; i++) {
		if (json_array_append_new(a, json_real(v[i])) < 0) {
			json_decref(a);
			return NULL;
		}
	}
	return a;
}

static int oom(struct bn_error *err)
{
	return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
}

static int read_failed(struct bn_error *err)
{
	return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "the database could not be read");
}

static int find_run(struct store_reader *r, const char *run, int64_t *run_id,
		    struct bn_error *err)
{
	int rc;

	if (!ingest_name_valid(run))
		return bn_error_set(err, 422, BN_E_INVALID, "run",
				    "run names are 1 to 128 of [A-Za-z0-9._-]");
	rc = store_run_find(r, run, run_id);
	if (rc == -ENOENT)
		return bn_error_set(err, 404, BN_E_NOT_FOUND, "run", "no run named %s", run);
	return rc < 0 ? read_failed(err) : 0;
}

/* --- runs ---------------------------------------------------------------- */

static json_t *run_json(const struct store_run_info *info)
{
	json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}", "name", info->name,
			      "created_ms", (json_int_t)info->created_ms,
			      "batches", (json_int_t)info->batches,
			      "layers", (json_int_t)info->layers,
			      "domains", (json_int_t)info->domains,
			      "workers", (json_int_t)info->workers);

	if (o == NULL)
		return NULL;
	if (info->batches > 0)
		json_object_set_new(o, "steps", json_pack("{s:I, s:I}",
				    "min", (json_int_t)info->step_min,
				    "max", (json_int_t)info->step_max));
	else
		json_object_set_new(o, "steps", json_null());
	return o;
}

static int append_run(void *ctx, const struct store_run_info *info)
{
	json_t *o = run_json(info);

	if (o == NULL || json_array_append_new(ctx, o) < 0)
		return -ENOMEM;
	return 0;
}

int query_runs(struct store_reader *r, json_t **out, struct bn_error *err)
{
	json_t *runs = json_array();
	int rc;

	if (runs == NULL)
		return oom(err);
	rc = store_runs_foreach(r, append_run, runs);
	if (rc < 0) {
		json_decref(runs);
		return rc == -ENOMEM ? oom(err) : read_failed(err);
	}
	*out = json_pack("{s:o}", "runs", runs);
	return *out ? 0 : oom(err);
}

static int set_run(void *ctx, const struct store_run_info *info)
{
	json_t **o = ctx;

	*o = run_json(info);
	return *o ? 0 : -ENOMEM;
}

static int append_layer(void *ctx, const struct store_item *it)
{
	json_t *o = json_pack("{s:s, s:I}", "name", it->name, "channels", (json_int_t)it->a);

	return o && json_array_append_new(ctx, o) == 0 ? 0 : -ENOMEM;
}

static int append_domain(void *ctx, const struct store_item *it)
{
	json_t *o = json_pack("{s:s, s:I, s:I}", "name", it->name, "batches", (json_int_t)it->a,
			      "steps", (json_int_t)it->b);

	return o && json_array_append_new(ctx, o) == 0 ? 0 : -ENOMEM;
}

static int append_worker(void *ctx, const struct store_item *it)
{
	json_t *o = json_pack("{s:s, s:I, s:I}", "name", it->name, "batches", (json_int_t)it->a,
			      "last_step", (json_int_t)it->b);

	return o && json_array_append_new(ctx, o) == 0 ? 0 : -ENOMEM;
}

int query_run(struct store_reader *r, const char *run, json_t **out,
	      struct bn_error *err)
{
	json_t *o = NULL, *layers = NULL, *domains = NULL, *workers = NULL;
	int64_t run_id;
	int rc;

	*out = NULL;
	store_read_begin(r);
	rc = find_run(r, run, &run_id, err);
	if (rc < 0)
		goto done;
	layers = json_array();
	domains = json_array();
	workers = json_array();
	if (layers == NULL || domains == NULL || workers == NULL) {
		rc = oom(err);
		goto done;
	}
	rc = store_run_describe(r, run, set_run, &o);
	if (rc == 0)
		rc = store_layers_foreach(r, run_id, append_layer, layers);
	if (rc == 0)
		rc = store_domains_foreach(r, run_id, append_domain, domains);
	if (rc == 0)
		rc = store_workers_foreach(r, run_id, append_worker, workers);
	if (rc < 0) {
		rc = rc == -ENOMEM ? oom(err) : read_failed(err);
		goto done;
	}
	json_object_set(o, "layers", layers);
	json_object_set(o, "domains", domains);
	json_object_set(o, "workers", workers);
	*out = o;
	o = NULL;
done:
	store_read_end(r);
	json_decref(o);
	json_decref(layers);
	json_decref(domains);
	json_decref(workers);
	return rc;
}

/* --- stats ------------------------------------------------------------------ */

/* One layer being merged over a window. */
struct layer_acc {
	int64_t id;
	char *name;
	size_t channels;
	bool wanted; /* named by a layer= filter, or no filter */
	struct stats_agg agg;
};

struct window {
	struct layer_acc *layers; /* sorted by id */
	size_t n;
};

static int acc_cmp_id(const void *a, const void *b)
{
	const struct layer_acc *x = a, *y = b;

	return (x->id > y->id) - (x->id < y->id);
}

static int collect_layer(void *ctx, const struct store_item *it)
{
	struct window *w = ctx;
	struct layer_acc *p = realloc(w->layers, (w->n + 1) * sizeof(*p));

	if (p == NULL)
		return -ENOMEM;
	w->layers = p;
	p = &w->layers[w->n];
	memset(p, 0, sizeof(*p));
	p->id = it->id;
	p->channels = (size_t)it->a;
	p->name = strdup(it->name);
	if (p->name == NULL)
		return -ENOMEM;
	w->n++;
	return 0;
}

static void window_free(struct window *w)
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

static int merge_row(void *ctx, const struct store_agg_row *row)
{
	struct window *w = ctx;
	struct layer_acc key = { .id = row->layer_id };
	struct layer_acc *l = bsearch(&key, w->layers, w->n, sizeof(key), acc_cmp_id);

	if (l == NULL || l->channels != row->agg->channels)
		return -EIO;
	if (l->agg.mean == NULL && stats_agg_init(&l->agg, l->channels) < 0)
		return -ENOMEM;
	stats_agg_merge(&l->agg, row->agg);
	return 0;
}

static json_t *layer_stats_json(const struct layer_acc *l, enum stats_estimator est)
{
	json_t *o;
	double *mean, *var;
	double noise;

	mean = malloc(2 * l->channels * sizeof(double));
	if (mean == NULL)
		return NULL;
	var = mean + l->channels;
	stats_estimate(&l->agg, est, mean, var);
	o = json_pack("{s:I, s:I, s:I, s:o, s:o, s:{s:I, s:f, s:I}}",
		      "channels", (json_int_t)l->channels,
		      "count", (json_int_t)l->agg.n,
		      "batches", (json_int_t)l->agg.k,
		      "mean", json_doubles(mean, l->channels),
		      "var", json_doubles(var, l->channels),
		      "batch_size", "min", (json_int_t)l->agg.nbs_min,
		      "mean", (double)l->agg.n / (double)l->agg.k,
		      "max", (json_int_t)l->agg.nbs_max);
	free(mean);
	if (o == NULL)
		return NULL;
	if (stats_batch_noise(&l->agg, &noise) == 0)
		json_object_set_new(o, "batch_noise", json_real(noise));
	else
		json_object_set_new(o, "batch_noise", json_null());
	return o;
}

int query_stats(struct store_reader *r, const char *run,
		const struct query_stats_params *p, json_t **out,
		struct bn_error *err)
{
	struct window w = { 0 };
	json_t *layers = NULL;
	const char *domain = p->domain ? p->domain : "default";
	enum stats_estimator est = STATS_EST_POPULATION;
	int64_t run_id, domain_id = -1, step;
	int64_t *ids = NULL;
	long long v, window = 1;
	size_t i, j, n_ids = 0;
	int rc;

	*out = NULL;
	if (p->estimator != NULL) {
		if (strcmp(p->estimator, "population") == 0)
			est = STATS_EST_POPULATION;
		else if (strcmp(p->estimator, "mean_of_batch_var") == 0)
			est = STATS_EST_MEAN_OF_BATCH_VAR;
		else
			return bn_error_set(err, 422, BN_E_INVALID, "estimator",
					    "estimator must be \"population\" or \"mean_of_batch_var\"");
	}
	if (p->window != NULL && query_parse_int("window", p->window, 1, &window, err) < 0)
		return -EINVAL;
	if (p->step != NULL && query_parse_int("step", p->step, 0, &v, err) < 0)
		return -EINVAL;
	if (strcmp(domain, DOMAIN_ALL) != 0 && !ingest_name_valid(domain))
		return bn_error_set(err, 422, BN_E_INVALID, "domain",
				    "domain names are 1 to 128 of [A-Za-z0-9._-], or * for all");

	store_read_begin(r);
	rc = find_run(r, run, &run_id, err);
	if (rc < 0)
		goto done;
	if (strcmp(domain, DOMAIN_ALL) != 0) {
		rc = store_domain_find(r, run_id, domain, &domain_id);
		if (rc == -ENOENT) {
			rc = bn_error_set(err, 404, BN_E_NOT_FOUND, "domain",
					  "run %s has no domain %s", run, domain);
			goto done;
		} else if (rc < 0) {
			rc = read_failed(err);
			goto done;
		}
	}
	if (p->step != NULL) {
		step = v;
	} else {
		rc = store_latest_step(r, run_id, domain_id, &step);
		if (rc == -ENOENT) {
			rc = bn_error_set(err, 404, BN_E_NOT_FOUND, NULL,
					  "run %s has no statistics in domain %s", run, domain);
			goto done;
		} else if (rc < 0) {
			rc = read_failed(err);
			goto done;
		}
	}

	rc = store_layers_foreach(r, run_id, collect_layer, &w);
	if (rc < 0) {
		rc = rc == -ENOMEM ? oom(err) : read_failed(err);
		goto done;
	}
	qsort(w.layers, w.n, sizeof(*w.layers), acc_cmp_id);
	if (p->n_layers > 0) {
		ids = calloc(p->n_layers, sizeof(*ids));
		if (ids == NULL) {
			rc = oom(err);
			goto done;
		}
		for (i = 0; i < p->n_layers; i++) {
			for (j = 0; j < w.n && strcmp(w.layers[j].name, p->layers[i]) != 0; j++)
				;
			if (j == w.n) {
				rc = bn_error_set(err, 404, BN_E_NOT_FOUND, "layer",
						  "run %s has no layer %s", run, p->layers[i]);
				goto done;
			}
			if (!w.layers[j].wanted)
				ids[n_ids++] = w.layers[j].id;
			w.layers[j].wanted = true;
		}
	} else {
		for (j = 0; j < w.n; j++)
			w.layers[j].wanted = true;
	}

	rc = store_aggs_foreach(r, run_id, domain_id, step - window, step, ids, n_ids ? n_ids : 0,
				merge_row, &w);
	if (rc < 0) {
		rc = rc == -ENOMEM ? oom(err) : read_failed(err);
		goto done;
	}

	layers = json_object();
	if (layers == NULL) {
		rc = oom(err);
		goto done;
	}
	for (j = 0; j < w.n; j++) {
		json_t *o;

		if (!w.layers[j].wanted)
			continue;
		if (w.layers[j].agg.k == 0) {
			if (p->n_layers == 0)
				continue;
			rc = bn_error_set(err, 404, BN_E_NOT_FOUND, "layer",
					  "layer %s has no data in steps (%lld, %lld] of domain %s",
					  w.layers[j].name, (long long)(step - window),
					  (long long)step, domain);
			goto done;
		}
		o = layer_stats_json(&w.layers[j], est);
		if (o == NULL || json_object_set_new(layers, w.layers[j].name, o) < 0) {
			rc = oom(err);
			goto done;
		}
	}
	if (json_object_size(layers) == 0) {
		rc = bn_error_set(err, 404, BN_E_NOT_FOUND, "step",
				  "run %s has no data in steps (%lld, %lld] of domain %s", run,
				  (long long)(step - window), (long long)step, domain);
		goto done;
	}
	*out = json_pack("{s:s, s:s, s:I, s:I, s:s, s:O}", "run", run, "domain", domain,
			 "step", (json_int_t)step, "window", (json_int_t)window,
			 "estimator", est == STATS_EST_POPULATION ? "population" : "mean_of_batch_var",
			 "layers", layers);
	rc = *out ? 0 : oom(err);
done:
	store_read_end(r);
	json_decref(layers);
	free(ids);
	window_free(&w);
	return rc;
}
