/*
 * query_ref: what /compare and /drift measure an EMA against when it is not
 * the precise window (docs/API.md, "Comparing with a snapshot or a
 * worker"): a stored snapshot, its layers read once per request, or
 * another worker's own EMA at the same step. Parsing `precise=`, loading
 * the reference and naming it in the reply; the comparisons themselves stay
 * in query_compare.c and query_drift.c.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bnstat/ingest.h"
#include "query.h"
#include "query_private.h"

static const char snapshot_prefix[] = "snapshot:";
static const char worker_prefix[] = "worker:";

int query_ref_parse(const struct query_params *p, struct query_ref *ref, struct bn_error *err)
{
	const char *s = p->precise, *name;

	ref->kind = QUERY_REF_WINDOW;
	ref->name[0] = '\0';
	ref->snap = NULL;
	if (s == NULL || strcmp(s, "window") == 0)
		return 0;
	if (strncmp(s, snapshot_prefix, sizeof(snapshot_prefix) - 1) == 0) {
		ref->kind = QUERY_REF_SNAPSHOT;
		name = s + sizeof(snapshot_prefix) - 1;
	} else if (strncmp(s, worker_prefix, sizeof(worker_prefix) - 1) == 0) {
		ref->kind = QUERY_REF_WORKER;
		name = s + sizeof(worker_prefix) - 1;
	} else {
		return bn_error_set(err, 400, BN_E_PARAMETER, "precise",
				    "precise must be window, snapshot:LABEL or worker:NAME, "
				    "got \"%.64s\"",
				    s);
	}
	/* labels and workers follow the same pattern (docs/API.md, "Names") */
	if (!ingest_name_valid(name))
		return bn_error_set(err, 400, BN_E_PARAMETER, "precise",
				    "precise=%.16s needs a %s of 1 to 128 of [A-Za-z0-9._-], "
				    "got \"%.64s\"",
				    s, ref->kind == QUERY_REF_SNAPSHOT ? "label" : "worker name",
				    name);
	snprintf(ref->name, sizeof(ref->name), "%s", name);
	/* window and estimator choose a precise window; a reference has none */
	if (p->window != NULL || p->estimator != NULL)
		return bn_error_set(err, 400, BN_E_PARAMETER, p->window ? "window" : "estimator",
				    "%s chooses the precise window: not with precise=%.140s",
				    p->window ? "window" : "estimator", s);
	return 0;
}

int query_ref_load(struct store_reader *r, const char *run, int64_t run_id, const char *domain,
		   int64_t domain_id, struct query_ref *ref, struct bn_error *err)
{
	int rc = 0;

	if (ref->kind == QUERY_REF_SNAPSHOT) {
		rc = store_snapshot_get(r, run_id, ref->name, true, &ref->snap);
		if (rc == -ENOENT)
			return bn_error_set(err, 404, BN_E_NOT_FOUND, "precise",
					    "run %s has no snapshot %s", run, ref->name);
		if (rc == -ENOMEM)
			return query_oom(err);
	} else if (ref->kind == QUERY_REF_WORKER) {
		rc = store_worker_find(r, run_id, domain_id, ref->name);
		if (rc == -ENOENT)
			return bn_error_set(err, 404, BN_E_NOT_FOUND, "precise",
					    "run %s has no worker %s in domain %s", run, ref->name,
					    domain);
	}
	return rc < 0 ? query_read_failed(err) : 0;
}

static int layer_cmp_name(const void *key, const void *elem)
{
	return strcmp(key, ((const struct store_snapshot_layer *)elem)->name);
}

const struct store_snapshot_layer *query_ref_layer(const struct query_ref *ref, const char *name,
						   size_t channels)
{
	const struct store_snapshot_layer *l;

	if (ref->snap == NULL)
		return NULL;
	/* store_snapshot_get() reads the layers ordered by name (bytewise) */
	l = bsearch(name, ref->snap->layers, ref->snap->n_layers, sizeof(*l), layer_cmp_name);
	return l != NULL && l->channels == channels ? l : NULL;
}

int query_ref_step(struct store_reader *r, int64_t run_id, int64_t domain_id, const char *domain,
		   bool has_step, bool ema_step, int64_t step, int64_t *out, struct bn_error *err)
{
	int64_t width;
	int rc;

	/* a worker's EMA is compared: the newest step that has one, when there is one */
	if (!has_step && ema_step && domain_id >= 0 &&
	    store_ema_latest_step(r, run_id, domain_id, &step) == 0)
		has_step = true;
	if (!has_step) {
		rc = store_latest_step(r, run_id, domain_id, &step);
		if (rc == -ENOENT)
			return bn_error_set(err, 404, BN_E_NOT_FOUND, "step",
					    "domain %s has no statistics", domain);
		if (rc < 0)
			return query_read_failed(err);
	}
	/* EMAs beyond the per-step horizon are kept at their bucket's last step */
	if (store_resolution(r, run_id, domain_id, step, &width) < 0)
		return query_read_failed(err);
	if (width > 1 && step % width != 0)
		step += width - step % width;
	*out = step;
	return 0;
}

int query_ref_json(json_t *doc, const struct query_ref *ref)
{
	char name[sizeof(snapshot_prefix) + sizeof(ref->name)];

	if (ref->kind == QUERY_REF_WINDOW)
		return 0;
	snprintf(name, sizeof(name), "%s%s",
		 ref->kind == QUERY_REF_SNAPSHOT ? snapshot_prefix : worker_prefix, ref->name);
	if (json_object_set_new(doc, "precise", json_string(name)) < 0)
		return -ENOMEM;
	if (ref->kind == QUERY_REF_SNAPSHOT &&
	    json_object_set_new(doc, "snapshot", query_snapshot_header_json(ref->snap)) < 0)
		return -ENOMEM;
	return 0;
}

void query_ref_free(struct query_ref *ref)
{
	store_snapshot_free(ref->snap);
	ref->snap = NULL;
}

int query_ema_default_step(struct store_reader *r, struct query_window_req *q, struct bn_error *err)
{
	int64_t run_id, domain_id, step;
	int rc;

	if (q->has_step || store_run_find(r, q->run, &run_id) != 0 ||
	    store_domain_find(r, run_id, q->domain, &domain_id) != 0)
		return 0;
	rc = store_ema_latest_step(r, run_id, domain_id, &step);
	if (rc == -ENOENT)
		return 0;
	if (rc < 0)
		return query_read_failed(err);
	q->has_step = true;
	q->step = step;
	return 0;
}
