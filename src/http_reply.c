/*
 * http_reply: writing a request's reply: the headers every reply of ours
 * carries (nosniff, Retry-After on a 503, Allow on a 405, the Bearer
 * challenge on a 401), text and JSON bodies, and the JSON error of
 * docs/API.md, "Errors", with its log line and, for an upload refused for
 * a non-finite value, its count and details.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <microhttpd.h>

#include "bnstat/ingest.h"
#include "http_private.h"
#include "log.h"
#include "metrics.h"

MHD_Result http_queue(struct http_request *rq, unsigned status, struct MHD_Response *resp)
{
	MHD_Result ret;

	/* no reply of ours is to be read as another type than it says */
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	if (status == 503)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER,
					rq->retry_after ? rq->retry_after : "1");
	if (status == 405 && rq->route.allowed != NULL)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, rq->route.allowed);
	if (status == 401 && rq->unauthorized)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
					"Bearer realm=\"bnstat\"");
	http_guard_phase(rq->srv->guard, rq->gconn, HTTP_PHASE_HANDLING);
	ret = MHD_queue_response(rq->conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

MHD_Result http_reply_text(struct http_request *rq, unsigned status, char *text, size_t len,
			   const char *content_type)
{
	struct MHD_Response *resp;

	resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (resp == NULL) {
		free(text);
		return MHD_NO;
	}
	if (content_type != NULL)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	return http_queue(rq, status, resp);
}

MHD_Result http_reply_json(struct http_request *rq, unsigned status, json_t *doc)
{
	char *text = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(17));
	size_t len;

	json_decref(doc);
	if (text == NULL)
		return MHD_NO;
	len = strlen(text);
	text[len] = '\0';
	return http_reply_text(rq, status, text, len, "application/json");
}

/* 1, 10, 100, ...: the counts at which a repeated refusal is logged again. */
static bool power_of_ten(unsigned long long n)
{
	while (n >= 10 && n % 10 == 0)
		n /= 10;
	return n == 1;
}

/*
 * An upload refused for a non-finite value (docs/API.md, "Non-finite
 * values"): counted for the run, described in the reply's "nonfinite"
 * member of e, and logged at warn level the 1st, 10th, 100th, ... time
 * for the same run and layer, so that a worker stuck on NaN writes a
 * handful of lines, not one per step.
 */
static void refused_nonfinite(struct http_request *rq, const struct bn_error *err, json_t *e)
{
	const struct bn_error_nonfinite *d = &err->nonfinite;
	unsigned long long n = metrics_refused_nonfinite(rq->route.run, d->layer);

	json_object_set_new(e, "nonfinite",
			    json_pack("{s:s, s:I, s:s, s:s, s:I}", "worker", d->worker, "step",
				      (json_int_t)d->step, "layer", d->layer, "field", d->field,
				      "channel", (json_int_t)d->channel));
	if (power_of_ten(n))
		log_warn("upload_nonfinite",
			 "run=%s worker=%s step=%lld layer=%s field=%s channel=%lld refused=%llu "
			 "path=\"%s\" message=\"%s\"",
			 rq->route.run, d->worker, d->step, d->layer, d->field, d->channel, n,
			 err->path, err->message);
}

MHD_Result http_reply_error(struct http_request *rq, const struct bn_error *err)
{
	int status = err->status ? err->status : 500;
	/* a refused name may hold anything: log it only when it is a valid one */
	const char *run = ingest_name_valid(rq->route.run) ? rq->route.run : "-";
	json_t *e = json_pack("{s:i, s:s, s:s}", "status", status, "code",
			      err->code[0] ? err->code : BN_E_INTERNAL, "message", err->message);
	bool quiet = false;

	if (e == NULL)
		return MHD_NO;
	/*
	 * A store that cannot be written is retried later than a full queue
	 * (docs/API.md); its state change was logged once, so each refusal is
	 * only a debug line (a full disk may hold the log too).
	 */
	if (strcmp(err->code, BN_E_READ_ONLY) == 0 || strcmp(err->code, BN_E_DAMAGED) == 0) {
		quiet = true;
		rq->retry_after = strcmp(err->code, BN_E_READ_ONLY) == 0 ? HTTP_RETRY_READ_ONLY
									 : HTTP_RETRY_DAMAGED;
	}
	if (err->path[0] != '\0')
		json_object_set_new(e, "path", json_string(err->path));
	if (rq->route.endpoint == HTTP_BATCHES)
		metrics_upload(err->code[0] ? err->code : BN_E_INTERNAL);
	/* ingest checked the run name before any value */
	if (rq->route.endpoint == HTTP_BATCHES && err->nonfinite.set)
		refused_nonfinite(rq, err, e);
	else if (quiet)
		log_debug("request_refused", "route=%s run=%s status=%d code=%s", rq->route.name,
			  run, status, err->code);
	else if (status >= 500)
		log_error("request_failed", "route=%s run=%s status=%d message=\"%s\"",
			  rq->route.name, run, status, err->message);
	else
		log_info("request_rejected", "route=%s run=%s status=%d code=%s path=\"%s\"",
			 rq->route.name, run, status, err->code, err->path);
	return http_reply_json(rq, (unsigned)status, json_pack("{s:o}", "error", e));
}

MHD_Result http_fail(struct http_request *rq, int status, const char *code, const char *path,
		     const char *msg)
{
	struct bn_error err;

	bn_error_set(&err, status, code, path, "%s", msg);
	return http_reply_error(rq, &err);
}
