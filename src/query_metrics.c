/*
 * query_metrics: the stored runs as the /metrics gauges need them, read in
 * one snapshot and handed to metrics.c, which writes all Prometheus text.
 */
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
