/*
 * query_snapshot: snapshots, the frozen precise estimates of
 * docs/API.md "Snapshots": reading a POST body and computing the estimate
 * it asks for (stored by the writer, not here), reading one back as JSON or
 * as a safetensors file for load_state_dict(), and listing them.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "bnstat/ingest.h"
#include "bnstat/stats.h"
#include "query.h"
#include "query_private.h"
#include "safetensors_write.h"

static void iso8601_utc(int64_t ms, char *buf, size_t size)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	size_t n;

	gmtime_r(&t, &tm);
	n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, size - n, ".%03dZ", (int)(ms % 1000));
}

static json_t *snapshot_json(const struct store_snapshot *snap, bool with_layers)
{
	char created[40];
	json_t *o, *layers;
	size_t i;

	iso8601_utc(snap->created_ms, created, sizeof(created));
	o = json_pack(
		"{s:s, s:I, s:I, s:o, s:I, s:s, s:s, s:f, s:s}", "label", snap->label, "step",
		(json_int_t)snap->step, "window", (json_int_t)snap->window, "requested_window",
		snap->min_batches > 0 ? json_string("auto") : json_integer(snap->requested_window),
		"resolution", (json_int_t)snap->resolution, "domain", snap->domain, "estimator",
		snap->estimator, "target_se", snap->target_se, "created", created);
	if (o != NULL && snap->min_batches > 0 &&
	    json_object_set_new(o, "min_batches", json_integer(snap->min_batches)) < 0)
		goto fail;
	if (o != NULL && snap->prior[0] != '\0' &&
	    (json_object_set_new(o, "prior", json_string(snap->prior)) < 0 ||
	     json_object_set_new(o, "prior_weight", json_real(snap->prior_weight)) < 0))
		goto fail;
	if (o == NULL || !with_layers)
		return o;
	layers = json_object();
	if (layers == NULL || json_object_set_new(o, "layers", layers) < 0) {
		json_decref(o);
		return NULL;
	}
	for (i = 0; i < snap->n_layers; i++) {
		const struct store_snapshot_layer *l = &snap->layers[i];
		json_t *lo =
			json_pack("{s:I, s:I, s:I, s:o, s:o}", "channels", (json_int_t)l->channels,
				  "count", (json_int_t)l->count, "batches", (json_int_t)l->batches,
				  "mean", query_json_doubles(l->mean, l->channels), "var",
				  query_json_doubles(l->var, l->channels));

		if (lo == NULL || json_object_set_new(layers, l->name, lo) < 0 ||
		    query_precision_fields(lo, l->has_noise, l->batch_noise, l->batches,
					   snap->target_se) < 0)
			goto fail;
	}
	return o;
fail:
	json_decref(o);
	return NULL;
}

/* Read the JSON body of a snapshot request into *snap (parameters only). */
static int snapshot_body_parse(const char *body, size_t len, struct store_snapshot *snap,
			       struct bn_error *err)
{
	json_error_t jerr;
	json_t *doc, *v;
	const char *key;
	json_int_t min_batches = 0;
	bool have_weight = false;
	int rc = -EINVAL;

	doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (doc == NULL)
		return bn_error_set(err, 400, BN_E_MALFORMED, NULL,
				    "the body is not JSON: %s (line %d, column %d)", jerr.text,
				    jerr.line, jerr.column);
	if (!json_is_object(doc)) {
		bn_error_set(err, 400, BN_E_TYPE, NULL, "the body must be a JSON object");
		goto done;
	}
	json_object_foreach(doc, key, v)
	{
		if (strcmp(key, "label") == 0) {
			if (!json_is_string(v)) {
				bn_error_set(err, 400, BN_E_TYPE, "label",
					     "label must be a string");
				goto done;
			}
			if (!ingest_name_valid(json_string_value(v))) {
				bn_error_set(err, 422, BN_E_INVALID, "label",
					     "labels are 1 to 128 of [A-Za-z0-9._-]");
				goto done;
			}
			snprintf(snap->label, sizeof(snap->label), "%s", json_string_value(v));
		} else if (strcmp(key, "window") == 0 && json_is_string(v)) {
			if (strcmp(json_string_value(v), "auto") != 0) {
				bn_error_set(err, 422, BN_E_INVALID, key,
					     "window must be an integer or \"auto\"");
				goto done;
			}
			if (snap->min_batches == 0)
				snap->min_batches = QUERY_MIN_BATCHES;
			snap->explicit_fields |= STORE_SNAP_WINDOW;
		} else if (strcmp(key, "min_batches") == 0) {
			if (!json_is_integer(v) || json_integer_value(v) < 1) {
				bn_error_set(err, json_is_number(v) ? 422 : 400,
					     json_is_number(v) ? BN_E_INVALID : BN_E_TYPE, key,
					     "min_batches must be an integer >= 1");
				goto done;
			}
			min_batches = json_integer_value(v);
		} else if (strcmp(key, "prior") == 0) {
			if (!json_is_string(v)) {
				bn_error_set(err, 400, BN_E_TYPE, key, "prior must be a string");
				goto done;
			}
			if (query_check_domain(json_string_value(v), err) < 0) {
				snprintf(err->path, sizeof(err->path), "prior");
				goto done;
			}
			snprintf(snap->prior, sizeof(snap->prior), "%s", json_string_value(v));
			snap->explicit_fields |= STORE_SNAP_PRIOR;
		} else if (strcmp(key, "prior_weight") == 0 || strcmp(key, "target_se") == 0) {
			bool is_weight = key[0] == 'p';
			double x;

			if (!json_is_number(v)) {
				bn_error_set(err, 400, BN_E_TYPE, key, "%s must be a number", key);
				goto done;
			}
			x = json_number_value(v);
			if (is_weight ? !(x >= 0.0 && x <= 1.0) : !(x > 0.0)) {
				bn_error_set(err, 422, BN_E_INVALID, key,
					     is_weight ? "prior_weight must be in [0, 1]"
						       : "target_se must be > 0");
				goto done;
			}
			if (is_weight) {
				snap->prior_weight = x;
				have_weight = true;
			} else {
				snap->target_se = x;
				snap->explicit_fields |= STORE_SNAP_TARGET_SE;
			}
		} else if (strcmp(key, "step") == 0 || strcmp(key, "window") == 0) {
			bool is_step = key[0] == 's';
			json_int_t n;

			if (json_is_real(v)) {
				bn_error_set(err, 422, BN_E_INVALID, key, "%s must be an integer",
					     key);
				goto done;
			}
			if (!json_is_integer(v)) {
				bn_error_set(err, 400, BN_E_TYPE, key, "%s must be an integer",
					     key);
				goto done;
			}
			n = json_integer_value(v);
			if (n < (is_step ? 0 : 1)) {
				bn_error_set(err, 422, BN_E_INVALID, key, "%s must be at least %d",
					     key, is_step ? 0 : 1);
				goto done;
			}
			if (is_step) {
				snap->step = n;
				snap->explicit_fields |= STORE_SNAP_STEP;
			} else {
				snap->window = n;
				snap->explicit_fields |= STORE_SNAP_WINDOW;
			}
		} else if (strcmp(key, "domain") == 0 || strcmp(key, "estimator") == 0) {
			bool is_domain = key[0] == 'd';
			enum stats_estimator est;

			if (!json_is_string(v)) {
				bn_error_set(err, 400, BN_E_TYPE, key, "%s must be a string", key);
				goto done;
			}
			if (is_domain) {
				if (query_check_domain(json_string_value(v), err) < 0)
					goto done;
				snprintf(snap->domain, sizeof(snap->domain), "%s",
					 json_string_value(v));
				snap->explicit_fields |= STORE_SNAP_DOMAIN;
			} else {
				if (query_parse_estimator(json_string_value(v), &est, err) < 0)
					goto done;
				snprintf(snap->estimator, sizeof(snap->estimator), "%s",
					 query_estimator_name(est));
				snap->explicit_fields |= STORE_SNAP_ESTIMATOR;
			}
		} else {
			bn_error_set(
				err, 422, BN_E_INVALID, key,
				"unknown field %.64s (expected label, step, window, min_batches, "
				"domain, estimator, prior, prior_weight, target_se)",
				key);
			goto done;
		}
	}
	if (snap->label[0] == '\0') {
		bn_error_set(err, 400, BN_E_MISSING, "label", "a snapshot needs a label");
		goto done;
	}
	if (min_batches > 0) {
		if (snap->min_batches == 0) {
			bn_error_set(err, 422, BN_E_INVALID, "min_batches",
				     "min_batches is the budget of window \"auto\"; give it");
			goto done;
		}
		snap->min_batches = min_batches;
	}
	if (snap->prior[0] != '\0' && !have_weight) {
		bn_error_set(err, 400, BN_E_MISSING, "prior_weight",
			     "prior needs prior_weight, the weight of the prior in [0, 1]");
		goto done;
	}
	if (snap->prior[0] == '\0' && have_weight) {
		bn_error_set(err, 422, BN_E_INVALID, "prior_weight",
			     "prior_weight weighs a prior domain: give prior too");
		goto done;
	}
	rc = 0;
done:
	json_decref(doc);
	return rc;
}

/* Turn the merged window into the layers of a snapshot. */
static int snapshot_fill(struct store_snapshot *snap, const struct query_window *w,
			 const struct query_window *pw, const struct query_prior *prior,
			 enum stats_estimator est)
{
	size_t j;

	snap->layers = calloc(w->n ? w->n : 1, sizeof(*snap->layers));
	if (snap->layers == NULL)
		return -ENOMEM;
	for (j = 0; j < w->n; j++) {
		const struct query_layer_acc *a = &w->layers[j];
		struct store_snapshot_layer *l = &snap->layers[snap->n_layers];

		if (!a->wanted || a->agg.k == 0 || (pw != NULL && pw->layers[j].agg.k == 0))
			continue;
		l->name = strdup(a->name);
		l->mean = malloc(2 * a->channels * sizeof(double));
		if (l->name == NULL || l->mean == NULL) {
			free(l->name);
			free(l->mean);
			l->name = NULL;
			l->mean = NULL;
			return -ENOMEM;
		}
		snap->n_layers++;
		l->channels = a->channels;
		l->var = l->mean + a->channels;
		l->count = a->agg.n;
		l->batches = a->agg.k;
		l->has_noise = stats_batch_noise(&a->agg, &l->batch_noise) == 0;
		stats_estimate(&a->agg, est, l->mean, l->var);
		if (pw != NULL && query_prior_mix(prior, &pw->layers[j].agg, est, a->channels,
						  l->mean, l->var) < 0)
			return -ENOMEM;
	}
	return 0;
}

int query_snapshot_prepare(struct store_reader *r, const char *run, const char *body, size_t len,
			   struct store_snapshot **create, json_t **existing, struct bn_error *err)
{
	struct store_snapshot *snap, *have = NULL;
	struct query_window w = { 0 }, pw = { 0 };
	struct query_window_req q = { .run = run };
	struct query_prior prior = { 0 };
	enum stats_estimator est = STATS_EST_POPULATION;
	int64_t run_id;
	int rc;

	*create = NULL;
	*existing = NULL;
	snap = calloc(1, sizeof(*snap));
	if (snap == NULL)
		return query_oom(err);
	snprintf(snap->run, sizeof(snap->run), "%s", run);
	snap->window = 1;
	snprintf(snap->domain, sizeof(snap->domain), "default");
	snprintf(snap->estimator, sizeof(snap->estimator), "population");
	snap->target_se = QUERY_TARGET_SE;
	rc = snapshot_body_parse(body, len, snap, err);
	if (rc < 0)
		goto fail;
	snap->requested_step = snap->step;
	snap->requested_window = snap->window;

	store_read_begin(r);
	rc = query_run_find(r, run, &run_id, err);
	if (rc < 0)
		goto done;
	rc = store_snapshot_get(r, run_id, snap->label, false, &have);
	if (rc == 0) {
		if (!store_snapshot_matches(snap, have)) {
			rc = bn_error_set(
				err, 409, BN_E_CONFLICT, "label",
				"snapshot %s exists with other parameters (step %lld, window %lld, "
				"domain %s, estimator %s)",
				snap->label, (long long)have->step, (long long)have->window,
				have->domain, have->estimator);
			goto done;
		}
		store_snapshot_free(have);
		have = NULL;
		rc = store_snapshot_get(r, run_id, snap->label, true, &have);
		if (rc < 0) {
			rc = query_read_failed(err);
			goto done;
		}
		*existing = snapshot_json(have, true);
		rc = *existing ? 0 : query_oom(err);
		goto done;
	} else if (rc != -ENOENT) {
		rc = query_read_failed(err);
		goto done;
	}

	q.domain = snap->domain;
	q.has_step = (snap->explicit_fields & STORE_SNAP_STEP) != 0;
	q.step = snap->step;
	q.window = snap->window;
	q.window_auto = snap->min_batches > 0;
	q.min_batches = snap->min_batches;
	query_parse_estimator(snap->estimator, &est, NULL);
	rc = query_window_compute(r, &q, &w, &snap->step, err);
	if (rc == 0) {
		/* over bucketed history the window used may be wider than asked */
		if (!q.has_step)
			snap->requested_step = snap->step; /* the latest: never widened */
		snap->window = w.window;
		snap->resolution = w.resolution;
		if (q.window_auto)
			snap->requested_window = w.requested_window;
	}
	if (rc == 0 && snap->prior[0] != '\0') {
		prior.domain = snap->prior;
		prior.weight = snap->prior_weight;
		rc = query_prior_compute(r, &q, &w, snap->step, &prior, &pw, err);
	}
	if (rc == 0 && snapshot_fill(snap, &w, prior.domain ? &pw : NULL, &prior, est) < 0)
		rc = query_oom(err);
done:
	store_read_end(r);
	store_snapshot_free(have);
	query_window_free(&w);
	query_window_free(&pw);
	if (rc == 0 && *existing == NULL) {
		*create = snap;
		return 0;
	}
fail:
	store_snapshot_free(snap);
	return rc;
}

/* Read a snapshot with its layers; 404 in *err when there is none. */
static int snapshot_load(struct store_reader *r, const char *run, const char *label,
			 struct store_snapshot **out, struct bn_error *err)
{
	int64_t run_id;
	int rc;

	store_read_begin(r);
	rc = query_run_find(r, run, &run_id, err);
	if (rc == 0) {
		rc = store_snapshot_get(r, run_id, label, true, out);
		if (rc == -ENOENT)
			rc = bn_error_set(err, 404, BN_E_NOT_FOUND, "label",
					  "run %s has no snapshot %s", run, label);
		else if (rc < 0)
			rc = query_read_failed(err);
	}
	store_read_end(r);
	return rc;
}

int query_snapshot_get(struct store_reader *r, const char *run, const char *label, json_t **out,
		       struct bn_error *err)
{
	struct store_snapshot *snap = NULL;
	int rc;

	*out = NULL;
	rc = snapshot_load(r, run, label, &snap, err);
	if (rc < 0)
		return rc;
	*out = snapshot_json(snap, true);
	store_snapshot_free(snap);
	return *out ? 0 : query_oom(err);
}

int query_snapshot_safetensors(struct store_reader *r, const char *run, const char *label, bool f64,
			       char **buf, size_t *len, struct bn_error *err)
{
	struct store_snapshot *snap = NULL;
	struct safetensors_tensor *tensors = NULL;
	char(*names)[INGEST_LAYER_NAME_MAX + 32] = NULL, step[32], window[32];
	uint64_t *shapes = NULL;
	size_t i, k;
	int rc;

	*buf = NULL;
	rc = snapshot_load(r, run, label, &snap, err);
	if (rc < 0)
		return rc;
	snprintf(step, sizeof(step), "%lld", (long long)snap->step);
	snprintf(window, sizeof(window), "%lld", (long long)snap->window);
	{
		const struct safetensors_meta meta[] = {
			{ "run", run },
			{ "label", snap->label },
			{ "step", step },
			{ "window", window },
			{ "domain", snap->domain },
			{ "estimator", snap->estimator },
		};
		size_t n = 2 * snap->n_layers;

		tensors = calloc(n ? n : 1, sizeof(*tensors));
		names = calloc(n ? n : 1, sizeof(*names));
		shapes = calloc(snap->n_layers ? snap->n_layers : 1, sizeof(*shapes));
		if (tensors == NULL || names == NULL || shapes == NULL) {
			rc = query_oom(err);
			goto done;
		}
		for (i = 0; i < snap->n_layers; i++) {
			const struct store_snapshot_layer *l = &snap->layers[i];

			shapes[i] = l->channels;
			for (k = 0; k < 2; k++) {
				struct safetensors_tensor *t = &tensors[2 * i + k];

				snprintf(names[2 * i + k], sizeof(names[0]), "%s.%s", l->name,
					 k ? "running_var" : "running_mean");
				t->name = names[2 * i + k];
				t->dtype = f64 ? SAFETENSORS_F64 : SAFETENSORS_F32;
				t->shape = &shapes[i];
				t->rank = 1;
				t->f = k ? l->var : l->mean;
			}
		}
		if (safetensors_write(tensors, n, meta, sizeof(meta) / sizeof(meta[0]), buf, len) <
		    0)
			rc = query_oom(err);
	}
done:
	free(tensors);
	free(names);
	free(shapes);
	store_snapshot_free(snap);
	return rc;
}

static int append_snapshot(void *ctx, const struct store_snapshot *snap)
{
	json_t *o = snapshot_json(snap, false);

	return o && json_array_append_new(ctx, o) == 0 ? 0 : -ENOMEM;
}

static int walk_snapshots(struct store_reader *r, int64_t run_id, json_t *list)
{
	return store_snapshots_foreach(r, run_id, append_snapshot, list);
}

int query_snapshots(struct store_reader *r, const char *run, json_t **out, struct bn_error *err)
{
	return query_run_list(r, run, "snapshots", walk_snapshots, out, err);
}

json_t *query_snapshot_header_json(const struct store_snapshot *snap)
{
	return snapshot_json(snap, false);
}
