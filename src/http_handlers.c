/*
 * http_handlers: one handler per endpoint of docs/API.md. A handler reads
 * the request's route, query parameters and body, asks ingest, query or the
 * store's writer, and queues the reply; the connection, the body and the
 * suspension while the writer works are http.c's.
 */
#include "http_private.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "bnstat/ingest.h"
#include "metrics.h"
#include "query.h"

#define MAX_LAYER_PARAMS 256

/* --- helpers ------------------------------------------------------------------------ */

struct layer_params {
	const char *v[MAX_LAYER_PARAMS];
	size_t n;
	bool overflow;
};

static MHD_Result collect_layer_param(void *cls, enum MHD_ValueKind kind, const char *key,
				      const char *value)
{
	struct layer_params *lp = cls;

	if (strcmp(key, "layer") != 0)
		return MHD_YES;
	if (lp->n == MAX_LAYER_PARAMS) {
		lp->overflow = true;
		return MHD_NO;
	}
	lp->v[lp->n++] = value ? value : "";
	return MHD_YES;
}

static const char *arg(struct http_request *rq, const char *key)
{
	return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, key);
}

/* ?format=safetensors, or an Accept header that asks for octet-stream. */
static bool wants_safetensors(struct http_request *rq)
{
	const char *format = arg(rq, "format");
	const char *accept;

	if (format != NULL)
		return strcmp(format, "safetensors") == 0;
	accept = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
	return accept != NULL && strstr(accept, "application/octet-stream") != NULL;
}

/*
 * The query parameters of runs, stats, compare, series and shift. p's strings
 * and p->layers point into lp and the connection: valid for this request.
 */
static int read_query_params(struct http_request *rq, struct layer_params *lp,
			     struct query_params *p, struct bn_error *err)
{
	MHD_get_connection_values(rq->conn, MHD_GET_ARGUMENT_KIND, collect_layer_param, lp);
	if (lp->overflow)
		return bn_error_set(err, 422, BN_E_LIMIT, "layer", "at most %d layer= parameters",
				    MAX_LAYER_PARAMS);
	p->step = arg(rq, "step");
	p->window = arg(rq, "window");
	p->min_batches = arg(rq, "min_batches");
	p->target_se = arg(rq, "target_se");
	p->prior = arg(rq, "prior");
	p->prior_weight = arg(rq, "prior_weight");
	p->domain = arg(rq, "domain");
	p->estimator = arg(rq, "estimator");
	p->ema = arg(rq, "ema");
	p->worker = arg(rq, "worker");
	p->momentum = arg(rq, "momentum");
	p->channel = arg(rq, "channel");
	p->from = arg(rq, "from");
	p->to = arg(rq, "to");
	p->stride = arg(rq, "stride");
	p->points = arg(rq, "points");
	p->source = arg(rq, "source");
	p->target = arg(rq, "target");
	p->prefix = arg(rq, "prefix");
	p->limit = arg(rq, "limit");
	p->after = arg(rq, "after");
	p->precise = arg(rq, "precise");
	p->momenta = arg(rq, "momenta");
	p->layers = lp->v;
	p->n_layers = lp->n;
	return 0;
}

/* Give r back, then answer 200 with doc (stolen) or the query's error. */
static MHD_Result reply_read(struct http_request *rq, struct store_reader *r, int rc, json_t *doc,
			     const struct bn_error *err)
{
	store_reader_put(rq->srv->store, r);
	if (rc < 0)
		return http_reply_error(rq, err);
	return http_reply_json(rq, 200, doc);
}

/* --- writes: through the store's writer ---------------------------------------------- */

/* POST /v1/runs/{run}/batches: decode here, commit on the writer. */
static MHD_Result handle_batches(struct http_request *rq)
{
	struct http_server *srv = rq->srv;
	struct ingest_batch *b = NULL;
	struct bn_error err;
	const char *ctype;
	int rc;

	if (rq->submitted) {
		struct store_result res;

		if (!http_take_result(rq, &res))
			return MHD_YES; /* not ours to answer yet */
		if (res.status != 200)
			return http_reply_error(rq, &res.err);
		metrics_upload(res.duplicate ? "duplicate" : "accepted");
		return http_reply_json(rq, 200,
				       json_pack("{s:b, s:b, s:I}", "accepted", 1, "duplicate",
						 res.duplicate, "layers", (json_int_t)res.layers));
	}

	ctype = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND,
					    MHD_HTTP_HEADER_CONTENT_TYPE);
	/* Anything but the binary form is taken as JSON (curl -d sends a form type). */
	if (ctype != NULL && strncasecmp(ctype, "application/octet-stream", 24) == 0)
		rc = ingest_decode_safetensors(rq->route.run,
					       (const uint8_t *)(rq->body ? rq->body : ""), rq->len,
					       &srv->opt.limits, &b, &err);
	else
		rc = ingest_decode_json(rq->route.run, rq->body ? rq->body : "", rq->len,
					&srv->opt.limits, &b, &err);
	if (rc < 0)
		return http_reply_error(rq, &err);
	http_body_free(rq); /* the batch holds everything decoded */
	return http_submit(rq, b, NULL, HTTP_DELETE_NONE);
}

/*
 * DELETE /v1/runs/{run}: the writer removes the run and everything of it
 * (statistics, EMAs, snapshots) in one transaction. The daemon's counts of
 * the run go too, also when nothing of it was stored (a 404: every upload
 * of it may have been refused).
 */
static MHD_Result handle_run_delete(struct http_request *rq)
{
	struct store_result res;

	if (rq->submitted) {
		if (!http_take_result(rq, &res))
			return MHD_YES;
		if (res.status < 300 || res.status == 404)
			metrics_forget_run(rq->route.run);
		if (res.status >= 300)
			return http_reply_error(rq, &res.err);
		return http_reply_json(rq, 200,
				       json_pack("{s:s, s:b}", "run", rq->route.run, "deleted", 1));
	}
	if (!ingest_name_valid(rq->route.run))
		return http_fail(rq, 422, BN_E_INVALID, "run",
				 "run names are 1 to 128 of [A-Za-z0-9._-]");
	return http_submit(rq, NULL, NULL, HTTP_DELETE_RUN);
}

/*
 * DELETE /v1/runs/{run}/snapshots/{label}: the writer removes the snapshot
 * (docs/API.md, "Deleting a snapshot"); 204 only once that committed, so
 * that the label is free for a new POST and the deletion survives a crash.
 */
static MHD_Result handle_snapshot_delete(struct http_request *rq)
{
	struct store_result res;

	if (rq->submitted) {
		if (!http_take_result(rq, &res))
			return MHD_YES;
		if (res.status >= 300)
			return http_reply_error(rq, &res.err);
		return http_reply_text(rq, 204, NULL, 0, NULL);
	}
	if (!ingest_name_valid(rq->route.run))
		return http_fail(rq, 422, BN_E_INVALID, "run",
				 "run names are 1 to 128 of [A-Za-z0-9._-]");
	if (!ingest_name_valid(rq->route.label))
		return http_fail(rq, 422, BN_E_INVALID, "label",
				 "labels are 1 to 128 of [A-Za-z0-9._-]");
	return http_submit(rq, NULL, NULL, HTTP_DELETE_SNAPSHOT);
}

/*
 * POST /v1/runs/{run}/snapshots: compute on this thread, create through
 * the writer (which settles a race for the same label), answer 201 with
 * the snapshot; a retry answers 200 with the stored one.
 */
static MHD_Result handle_snapshot_create(struct http_request *rq)
{
	struct http_server *srv = rq->srv;
	struct store_snapshot *snap = NULL;
	struct store_reader *r = NULL;
	struct bn_error err;
	json_t *doc = NULL;
	int rc;

	bn_error_clear(&err);
	if (rq->submitted) {
		struct store_result res;
		char label[STORE_LABEL_MAX + 2];

		if (!http_take_result(rq, &res))
			return MHD_YES;
		if (res.status >= 300)
			return http_reply_error(rq, &res.err);
		snprintf(label, sizeof(label), "%s", rq->route.label);
		if (store_reader_get(srv->store, &r, &err) < 0)
			return http_reply_error(rq, &err);
		rc = query_snapshot_get(r, rq->route.run, label, &doc, &err);
		store_reader_put(srv->store, r);
		if (rc < 0)
			return http_reply_error(rq, &err);
		return http_reply_json(rq, (unsigned)res.status, doc);
	}

	if (store_reader_get(srv->store, &r, &err) < 0)
		return http_reply_error(rq, &err);
	rc = query_snapshot_prepare(r, rq->route.run, rq->body ? rq->body : "", rq->len, &snap,
				    &doc, &err);
	store_reader_put(srv->store, r);
	if (rc < 0)
		return http_reply_error(rq, &err);
	if (doc != NULL)
		return http_reply_json(rq, 200, doc);

	snprintf(rq->route.label, sizeof(rq->route.label), "%s", snap->label);
	return http_submit(rq, NULL, snap, HTTP_DELETE_NONE);
}

/*
 * POST /v1/runs/{run}/import: the file is checked here, stored by the
 * writer as a new run in one savepoint (docs/API.md, "Moving a run"); 201
 * once committed.
 */
static MHD_Result handle_import(struct http_request *rq)
{
	struct store_runfile *rf = NULL;
	struct bn_error err;

	if (rq->submitted) {
		struct store_result res;

		if (!http_take_result(rq, &res))
			return MHD_YES;
		if (res.status >= 300)
			return http_reply_error(rq, &res.err);
		return http_reply_json(
			rq, 201, json_pack("{s:s, s:b}", "run", rq->route.run, "imported", 1));
	}
	if (!ingest_name_valid(rq->route.run))
		return http_fail(rq, 422, BN_E_INVALID, "run",
				 "run names are 1 to 128 of [A-Za-z0-9._-]");
	bn_error_clear(&err);
	if (query_import_decode(rq->body ? rq->body : "", rq->len, &rf, &err) < 0)
		return http_reply_error(rq, &err);
	http_body_free(rq);
	return http_submit_import(rq, rf);
}

/* --- reads: on a reader connection of the store --------------------------------------- */

/*
 * GET /healthz: no database read, so that it answers while the readers are
 * busy. 200 while the store accepts writes; 503 with the reason when it
 * cannot (a full disk, a damaged file: docs/API.md, "Health").
 */
static MHD_Result handle_healthz(struct http_request *rq)
{
	struct store *st = rq->srv->store;
	struct store_health h;
	struct bn_error err;
	json_t *doc;

	store_health_get(st, &h);
	doc = json_pack("{s:s, s:b, s:i, s:I}", "status",
			h.state == STORE_WRITABLE ? "ok" : store_state_name(h.state), "writable",
			h.state == STORE_WRITABLE, "schema", store_schema_version(st), "queue",
			(json_int_t)store_queue_depth(st));
	if (doc == NULL)
		return MHD_NO;
	if (h.state == STORE_WRITABLE)
		return http_reply_json(rq, 200, doc);
	store_health_error(st, &err);
	json_object_set_new(doc, "error",
			    json_pack("{s:i, s:s, s:s}", "status", 503, "code", err.code, "message",
				      err.message));
	json_object_set_new(doc, "since_ms", json_integer((json_int_t)h.since_ms));
	rq->retry_after = h.state == STORE_READ_ONLY ? HTTP_RETRY_READ_ONLY : HTTP_RETRY_DAMAGED;
	return http_reply_json(rq, 503, doc);
}

/* GET /metrics: counters, then the gauges only the store and database know. */
static MHD_Result handle_metrics(struct http_request *rq)
{
	struct store *st = rq->srv->store;
	struct store_reader *r = NULL;
	struct metrics_sources src = { 0 };
	struct store_health health;
	struct bn_error err;
	char *text = NULL;
	size_t len = 0;
	FILE *f;
	int rc;

	bn_error_clear(&err);
	if (store_reader_get(st, &r, &err) < 0)
		return http_reply_error(rq, &err);
	f = open_memstream(&text, &len);
	if (f == NULL) {
		store_reader_put(st, r);
		return MHD_NO;
	}
	src.queue_depth = store_queue_depth(st);
	src.database_bytes = store_disk_bytes(st);
	store_health_get(st, &health);
	src.database_state = store_state_name(health.state);
	src.disk_free_known = health.free_known;
	src.disk_free_bytes = health.free_bytes;
	src.disk_free_warn_bytes = health.warn_bytes;
	/* a damaged file: the state is what matters, and the walk may not read */
	src.runs = health.state == STORE_DAMAGED ? NULL : query_metrics_runs;
	src.runs_ctx = r;
	rc = metrics_render(f, &src, &err);
	store_reader_put(st, r);
	fclose(f);
	if (rc < 0) {
		free(text);
		return http_reply_error(rq, &err);
	}
	return http_reply_text(rq, 200, text, len, "text/plain; version=0.0.4; charset=utf-8");
}

/*
 * A JSON read: fill *doc (a new reference) from the borrowed reader r, or
 * return a negative errno with *err filled in. p holds the request's query
 * parameters (all NULL for endpoints that take none).
 */
typedef int (*read_answer_fn)(struct http_request *rq, struct store_reader *r,
			      const struct query_params *p, json_t **doc, struct bn_error *err);

/*
 * Every JSON GET but /metrics and /healthz: borrow a reader, read the query
 * parameters when the endpoint takes them, answer, give the reader back.
 */
static MHD_Result handle_read(struct http_request *rq, read_answer_fn answer, bool with_params)
{
	struct layer_params lp = { .n = 0 };
	struct query_params p = { 0 };
	struct store_reader *r = NULL;
	struct bn_error err;
	json_t *doc = NULL;
	int rc = 0;

	bn_error_clear(&err);
	if (store_reader_get(rq->srv->store, &r, &err) < 0)
		return http_reply_error(rq, &err);
	if (with_params)
		rc = read_query_params(rq, &lp, &p, &err);
	if (rc == 0)
		rc = answer(rq, r, &p, &doc, &err);
	return reply_read(rq, r, rc, doc, &err);
}

/* GET /v1/runs */
static int answer_runs(struct http_request *rq, struct store_reader *r,
		       const struct query_params *p, json_t **doc, struct bn_error *err)
{
	return query_runs(r, p, doc, err);
}

/* GET /v1/runs/{run} */
static int answer_run(struct http_request *rq, struct store_reader *r, const struct query_params *p,
		      json_t **doc, struct bn_error *err)
{
	return query_run(r, rq->route.run, doc, err);
}

/* GET /v1/runs/{run}/stats */
static int answer_stats(struct http_request *rq, struct store_reader *r,
			const struct query_params *p, json_t **doc, struct bn_error *err)
{
	return query_stats(r, rq->route.run, p, doc, err);
}

/* GET /v1/runs/{run}/compare */
static int answer_compare(struct http_request *rq, struct store_reader *r,
			  const struct query_params *p, json_t **doc, struct bn_error *err)
{
	return query_compare(r, rq->srv->replay, rq->route.run, p, doc, err);
}

/* GET /v1/runs/{run}/series */
static int answer_series(struct http_request *rq, struct store_reader *r,
			 const struct query_params *p, json_t **doc, struct bn_error *err)
{
	return query_series(r, rq->srv->replay, rq->route.run, p, doc, err);
}

/* GET /v1/runs/{run}/drift */
static int answer_drift(struct http_request *rq, struct store_reader *r,
			const struct query_params *p, json_t **doc, struct bn_error *err)
{
	return query_drift(r, rq->srv->replay, rq->route.run, p, doc, err);
}

/* GET /v1/runs/{run}/momentum */
static int answer_momentum(struct http_request *rq, struct store_reader *r,
			   const struct query_params *p, json_t **doc, struct bn_error *err)
{
	return query_momentum(r, rq->srv->replay, rq->route.run, p, doc, err);
}

/* GET /v1/runs/{run}/domains */
static int answer_domains(struct http_request *rq, struct store_reader *r,
			  const struct query_params *p, json_t **doc, struct bn_error *err)
{
	return query_domains(r, rq->route.run, doc, err);
}

/* GET /v1/runs/{run}/shift */
static int answer_shift(struct http_request *rq, struct store_reader *r,
			const struct query_params *p, json_t **doc, struct bn_error *err)
{
	return query_shift(r, rq->route.run, p, doc, err);
}

/* GET /v1/runs/{run}/export */
static int answer_export(struct http_request *rq, struct store_reader *r,
			 const struct query_params *p, json_t **doc, struct bn_error *err)
{
	return query_export(r, rq->route.run, rq->srv->opt.max_body, doc, err);
}

/* GET /v1/runs/{run}/snapshots */
static int answer_snapshots(struct http_request *rq, struct store_reader *r,
			    const struct query_params *p, json_t **doc, struct bn_error *err)
{
	return query_snapshots(r, rq->route.run, doc, err);
}

/* GET /v1/runs/{run}/snapshots/{label}: JSON, or a safetensors file. */
static MHD_Result handle_snapshot(struct http_request *rq)
{
	struct store_reader *r = NULL;
	struct bn_error err;
	json_t *doc = NULL;
	int rc;

	bn_error_clear(&err);
	if (store_reader_get(rq->srv->store, &r, &err) < 0)
		return http_reply_error(rq, &err);
	if (wants_safetensors(rq)) {
		const char *dtype = arg(rq, "dtype");
		char *buf;
		size_t len;

		if (dtype != NULL && strcmp(dtype, "f32") != 0 && strcmp(dtype, "f64") != 0) {
			rc = bn_error_set(&err, 422, BN_E_INVALID, "dtype",
					  "dtype must be f32 or f64");
			return reply_read(rq, r, rc, NULL, &err);
		}
		rc = query_snapshot_safetensors(r, rq->route.run, rq->route.label,
						dtype != NULL && strcmp(dtype, "f64") == 0, &buf,
						&len, &err);
		store_reader_put(rq->srv->store, r);
		if (rc < 0)
			return http_reply_error(rq, &err);
		return http_reply_text(rq, 200, buf, len, "application/octet-stream");
	}
	rc = query_snapshot_get(r, rq->route.run, rq->route.label, &doc, &err);
	return reply_read(rq, r, rc, doc, &err);
}

/* --- dispatch ------------------------------------------------------------------------ */

MHD_Result http_handlers_dispatch(struct http_request *rq)
{
	switch (rq->route.endpoint) {
	case HTTP_HEALTHZ:
		return handle_healthz(rq);
	case HTTP_METRICS:
		return handle_metrics(rq);
	case HTTP_RUNS:
		return handle_read(rq, answer_runs, true);
	case HTTP_RUN:
		return handle_read(rq, answer_run, false);
	case HTTP_RUN_DELETE:
		return handle_run_delete(rq);
	case HTTP_BATCHES:
		return handle_batches(rq);
	case HTTP_STATS:
		return handle_read(rq, answer_stats, true);
	case HTTP_COMPARE:
		return handle_read(rq, answer_compare, true);
	case HTTP_SERIES:
		return handle_read(rq, answer_series, true);
	case HTTP_DRIFT:
		return handle_read(rq, answer_drift, true);
	case HTTP_MOMENTUM:
		return handle_read(rq, answer_momentum, true);
	case HTTP_DOMAINS:
		return handle_read(rq, answer_domains, false);
	case HTTP_SHIFT:
		return handle_read(rq, answer_shift, true);
	case HTTP_SNAPSHOTS:
		return handle_read(rq, answer_snapshots, false);
	case HTTP_SNAPSHOT_CREATE:
		return handle_snapshot_create(rq);
	case HTTP_SNAPSHOT:
		return handle_snapshot(rq);
	case HTTP_SNAPSHOT_DELETE:
		return handle_snapshot_delete(rq);
	case HTTP_EXPORT:
		return handle_read(rq, answer_export, false);
	case HTTP_IMPORT:
		return handle_import(rq);
	case HTTP_ROOT:
	case HTTP_UI:
		return http_static_answer(rq);
	case HTTP_NONE:
	default:
		break;
	}
	return http_fail(rq, 404, BN_E_NOT_FOUND, NULL, "no such resource");
}
