/*
 * query_metrics: the stored runs as the /metrics gauges need them, read in
 * one snapshot and handed to metrics.c, which writes all Prometheus text;
 * and the drift gauges of one (run, domain), which the gauges thread
 * computes from the replies of GET /compare and GET /stats themselves, so
 * that a gauge is what those endpoints answer (docs/DESIGN.md, "Drift
 * gauges").
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bnstat/batch.h"
#include "metrics.h"
#include "query.h"
#include "query_private.h"

struct runs_walk {
	metrics_emit_run_fn emit;
	void *ctx;
};

static int emit_stored_run(void *ctx, const struct store_run_info *info)
{
	struct runs_walk *w = ctx;
	struct metrics_run run = {
		.name = info->name,
		.has_data = info->batches > 0,
		.last_step = (long long)info->step_max,
		.bytes = (long long)info->bytes,
	};

	return w->emit(w->ctx, &run);
}

int query_metrics_runs(void *reader, metrics_emit_run_fn emit, void *ctx, struct bn_error *err)
{
	struct store_reader *r = reader;
	struct runs_walk w = { emit, ctx };
	int rc;

	store_read_begin(r);
	rc = store_runs_last_step(r, emit_stored_run, &w);
	store_read_end(r);
	return rc < 0 ? query_read_failed(err) : 0;
}

/* kl of a compare reply's metrics object o: a number, or NaN for null (not finite). */
static double reply_kl(const json_t *o)
{
	const json_t *kl = json_object_get(o, "kl");

	return json_is_number(kl) ? json_number_value(kl) : NAN;
}

/*
 * The drift gauges from GET /compare's reply: overall kl, and the layer
 * with the highest finite kl (the first in the reply's order on a tie).
 */
static void drift_from_compare(const json_t *reply, struct metrics_drift *out, char *layer,
			       size_t layer_size)
{
	const json_t *layers = json_object_get(reply, "layers"), *v;
	const char *name;

	out->has_drift = true;
	out->kl = reply_kl(json_object_get(reply, "overall"));
	out->worst_layer = NULL;
	json_object_foreach((json_t *)layers, name, v)
	{
		double kl = reply_kl(v);

		if (isfinite(kl) && (out->worst_layer == NULL || kl > out->worst_kl)) {
			snprintf(layer, layer_size, "%s", name);
			out->worst_layer = layer;
			out->worst_kl = kl;
		}
	}
}

/* The mean over the layers of GET /stats's reply of their (non-null) batch_noise. */
static void noise_from_stats(const json_t *reply, struct metrics_drift *out)
{
	const json_t *layers = json_object_get(reply, "layers"), *v;
	const char *name;
	double sum = 0.0;
	size_t n = 0;

	json_object_foreach((json_t *)layers, name, v)
	{
		const json_t *noise = json_object_get(v, "batch_noise");

		if (json_is_number(noise)) {
			sum += json_number_value(noise);
			n++;
		}
	}
	out->has_noise = n > 0;
	out->batch_noise = n > 0 ? sum / (double)n : 0.0;
}

int query_metrics_drift(struct store_reader *r, const char *run, const char *domain,
			struct metrics_drift *out, char *layer, size_t layer_size,
			struct bn_error *err)
{
	struct query_params p = { .window = "auto", .domain = domain };
	int64_t run_id, domain_id, step;
	bool have_ema = false, have_step = false;
	char step_s[32];
	json_t *reply = NULL;
	int rc;

	memset(out, 0, sizeof(*out));
	store_read_begin(r);
	rc = store_run_find(r, run, &run_id);
	if (rc == 0)
		rc = store_domain_find(r, run_id, domain, &domain_id);
	if (rc == 0) {
		rc = store_ema_latest_step(r, run_id, domain_id, &step);
		have_ema = rc == 0;
		if (rc == -ENOENT)
			rc = store_latest_step(r, run_id, domain_id, &step);
		have_step = rc == 0;
		if (rc == -ENOENT)
			rc = 0;
	}
	store_read_end(r);
	if (rc == -ENOENT)
		return bn_error_set(err, 404, BN_E_NOT_FOUND, "run", "no run %s with domain %s",
				    run, domain);
	if (rc < 0)
		return query_read_failed(err);
	if (!have_step)
		return 0;

	/* GET /compare?step=S&window=auto&domain=D and /stats likewise (docs/API.md) */
	snprintf(step_s, sizeof(step_s), "%lld", (long long)step);
	p.step = step_s;
	if (have_ema) {
		rc = query_compare(r, NULL, run, &p, &reply, err);
		if (rc == 0)
			drift_from_compare(reply, out, layer, layer_size);
		json_decref(reply);
		if (rc < 0 && err->status != 404)
			return rc;
	}
	rc = query_stats(r, run, &p, &reply, err);
	if (rc == 0)
		noise_from_stats(reply, out);
	json_decref(reply);
	return rc < 0 && err->status != 404 ? rc : 0;
}

/* One page of the walk: the runs' names, copied. */
struct names_page {
	char (*names)[INGEST_NAME_MAX + 1];
	size_t n;
};

static int add_run_name(void *ctx, const struct store_run_info *info)
{
	struct names_page *pg = ctx;

	snprintf(pg->names[pg->n++], sizeof(pg->names[0]), "%s", info->name);
	return 0;
}

struct domains_walk {
	const char *run;
	query_metrics_pair_fn fn;
	void *ctx;
};

static int emit_domain(void *ctx, const struct store_item *item)
{
	struct domains_walk *w = ctx;

	w->fn(w->ctx, w->run, item->name);
	return 0;
}

int query_metrics_pairs(struct store_reader *r, const char *after, char *last,
			query_metrics_pair_fn fn, void *ctx, struct bn_error *err)
{
	char names[QUERY_METRICS_PAGE][INGEST_NAME_MAX + 1];
	struct names_page pg = { names, 0 };
	int64_t run_id;
	size_t i;
	int rc;

	store_read_begin(r);
	rc = store_runs_page(r, NULL, after, QUERY_METRICS_PAGE, add_run_name, &pg);
	for (i = 0; rc == 0 && i < pg.n; i++) {
		struct domains_walk w = { names[i], fn, ctx };

		rc = store_run_find(r, names[i], &run_id);
		if (rc == -ENOENT) {
			rc = 0; /* not in this snapshot: cannot be, but harmless */
			continue;
		}
		if (rc == 0)
			rc = store_domains_foreach(r, run_id, emit_domain, &w);
	}
	store_read_end(r);
	if (rc < 0)
		return query_read_failed(err);
	if (pg.n > 0)
		snprintf(last, INGEST_NAME_MAX + 1, "%s", names[pg.n - 1]);
	return (int)pg.n;
}
