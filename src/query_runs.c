/*
 * query_runs: what a run is made of: GET /v1/runs (the runs' summaries, a
 * page at a time), GET /v1/runs/{run} (one run with its layers, domains and
 * workers) and GET /v1/runs/{run}/domains (docs/API.md, "Runs" and
 * "Domains").
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "query.h"
#include "query_private.h"

static json_t *run_json(const struct store_run_info *info)
{
	json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}", "name", info->name, "created_ms",
			      (json_int_t)info->created_ms, "batches", (json_int_t)info->batches,
			      "layers", (json_int_t)info->layers, "domains",
			      (json_int_t)info->domains, "workers", (json_int_t)info->workers);

	if (o == NULL)
		return NULL;
	if (info->batches > 0)
		json_object_set_new(o, "steps",
				    json_pack("{s:I, s:I}", "min", (json_int_t)info->step_min,
					      "max", (json_int_t)info->step_max));
	else
		json_object_set_new(o, "steps", json_null());
	return o;
}

/* A page being filled: at most limit runs, then one more says there is a next page. */
struct runs_page {
	json_t *runs;
	size_t limit;
	bool more;
};

static int append_run(void *ctx, const struct store_run_info *info)
{
	struct runs_page *pg = ctx;
	json_t *o;

	if (json_array_size(pg->runs) == pg->limit) {
		pg->more = true;
		return 1;
	}
	o = run_json(info);
	if (o == NULL || json_array_append_new(pg->runs, o) < 0)
		return -ENOMEM;
	return 0;
}

/* A prefix or after= of at most a run name's length: 0, or a 422 in *err. */
static int check_bound(const char *name, const char *s, struct bn_error *err)
{
	if (s != NULL && strlen(s) > STORE_RUNS_BOUND_MAX)
		return bn_error_set(err, 422, BN_E_INVALID, name,
				    "parameter %s must have at most %d characters", name,
				    STORE_RUNS_BOUND_MAX);
	return 0;
}

int query_runs(struct store_reader *r, const struct query_params *p, json_t **out,
	       struct bn_error *err)
{
	struct runs_page pg = { NULL, QUERY_RUNS_LIMIT_DEFAULT, false };
	long long limit = QUERY_RUNS_LIMIT_DEFAULT;
	json_t *last;
	int rc;

	*out = NULL;
	if (p->limit != NULL) {
		rc = query_parse_int("limit", p->limit, 1, &limit, err);
		if (rc < 0)
			return rc;
		if (limit > QUERY_RUNS_LIMIT_MAX)
			return bn_error_set(err, 422, BN_E_INVALID, "limit",
					    "parameter limit must be at most %d, got %lld",
					    QUERY_RUNS_LIMIT_MAX, limit);
	}
	rc = check_bound("prefix", p->prefix, err);
	if (rc == 0)
		rc = check_bound("after", p->after, err);
	if (rc < 0)
		return rc;
	pg.limit = (size_t)limit;
	pg.runs = json_array();
	if (pg.runs == NULL)
		return query_oom(err);
	/* one more row than the page: whether a next page exists, without a count */
	rc = store_runs_page(r, p->prefix, p->after, limit + 1, append_run, &pg);
	if (rc < 0) {
		json_decref(pg.runs);
		return rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
	}
	*out = json_pack("{s:o}", "runs", pg.runs);
	if (*out == NULL)
		return query_oom(err);
	last = json_array_get(pg.runs, json_array_size(pg.runs) - 1);
	if (pg.more && json_object_set(*out, "next", json_object_get(last, "name")) < 0) {
		json_decref(*out);
		*out = NULL;
		return query_oom(err);
	}
	return 0;
}

static int set_run(void *ctx, const struct store_run_info *info)
{
	json_t **o = ctx;

	*o = run_json(info);
	if (*o != NULL && json_object_set_new(*o, "bytes", json_integer(info->bytes)) < 0) {
		json_decref(*o);
		*o = NULL;
	}
	return *o ? 0 : -ENOMEM;
}

/* The run's layers in the order they were first uploaded (the model's
 * order, for a client that uploads a model's layers in module order), as
 * the /stats and /compare replies list them (docs/API.md, "Runs"). */
static int append_layers(struct store_reader *r, int64_t run_id, json_t *layers)
{
	struct query_layer *v;
	size_t n, i;
	int rc = query_layers_read(r, run_id, &v, &n);

	for (i = 0; rc == 0 && i < n; i++) {
		json_t *o = json_pack("{s:s, s:I}", "name", v[i].name, "channels",
				      (json_int_t)v[i].channels);

		if (o == NULL || json_array_append_new(layers, o) < 0)
			rc = -ENOMEM;
	}
	query_layers_free(v, n);
	return rc;
}

static int append_domain(void *ctx, const struct store_item *it)
{
	json_t *o = json_pack(
		"{s:s, s:I, s:I, s:o, s:o}", "name", it->name, "batches",
		(json_int_t)it->domain.batches, "steps", (json_int_t)it->domain.steps,
		"bucketed_through",
		it->domain.bucketed ? json_integer(it->domain.bucketed_through) : json_null(),
		"drift_through",
		it->domain.drift && it->domain.drift_through >= 0
			? json_integer(it->domain.drift_through)
			: json_null());

	return o && json_array_append_new(ctx, o) == 0 ? 0 : -ENOMEM;
}

static int append_worker(void *ctx, const struct store_item *it)
{
	json_t *o = json_pack("{s:s, s:I, s:I}", "name", it->name, "batches",
			      (json_int_t)it->worker.batches, "last_step",
			      (json_int_t)it->worker.last_step);

	return o && json_array_append_new(ctx, o) == 0 ? 0 : -ENOMEM;
}

int query_run(struct store_reader *r, const char *run, json_t **out, struct bn_error *err)
{
	json_t *o = NULL, *layers = NULL, *domains = NULL, *workers = NULL;
	int64_t run_id;
	int rc;

	*out = NULL;
	store_read_begin(r);
	rc = query_run_find(r, run, &run_id, err);
	if (rc < 0)
		goto done;
	layers = json_array();
	domains = json_array();
	workers = json_array();
	if (layers == NULL || domains == NULL || workers == NULL) {
		rc = query_oom(err);
		goto done;
	}
	rc = store_run_describe(r, run, set_run, &o);
	if (rc == 0)
		rc = append_layers(r, run_id, layers);
	if (rc == 0)
		rc = store_domains_foreach(r, run_id, append_domain, domains);
	if (rc == 0)
		rc = store_workers_foreach(r, run_id, append_worker, workers);
	if (rc < 0) {
		rc = rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
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

static int append_domain_info(void *ctx, const struct store_item *it)
{
	json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I}", "name", it->name, "layers",
			      (json_int_t)it->domain.layers, "steps", (json_int_t)it->domain.steps,
			      "batches", (json_int_t)it->domain.batches, "elements",
			      (json_int_t)it->domain.elements);

	return o && json_array_append_new(ctx, o) == 0 ? 0 : -ENOMEM;
}

static int walk_domains(struct store_reader *r, int64_t run_id, json_t *list)
{
	return store_domains_foreach(r, run_id, append_domain_info, list);
}

int query_domains(struct store_reader *r, const char *run, json_t **out, struct bn_error *err)
{
	return query_run_list(r, run, "domains", walk_domains, out, err);
}
