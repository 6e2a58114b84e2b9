/*
 * query_metrics: the database-side gauges of GET /metrics (runs stored,
 * each run's last step) in Prometheus text format. The process-side
 * metrics are metrics.c's.
 */
#include <stdio.h>

#include "query.h"
#include "query_private.h"

/*
 * The metrics block below is written as it will read in metrics.c, where the
 * Prometheus text is to live: it names this helper read_failed.
 */
static int read_failed(struct bn_error *err)
{
	return query_read_failed(err);
}

/* --- metrics ---------------------------------------------------------------------------- */

struct metrics_runs {
	FILE *f;
	long long runs;
};

static int count_run(void *ctx, const struct store_run_info *info)
{
	((struct metrics_runs *)ctx)->runs++;
	return 0;
}

static int print_last_step(void *ctx, const struct store_run_info *info)
{
	struct metrics_runs *m = ctx;

	if (info->batches > 0)
		fprintf(m->f, "bnstat_run_last_step{run=\"%s\"} %lld\n", info->name,
			(long long)info->step_max);
	return 0;
}

int query_metrics(struct store_reader *r, FILE *f, struct bn_error *err)
{
	struct metrics_runs m = { .f = f };
	int rc;

	store_read_begin(r);
	rc = store_runs_last_step(r, count_run, &m);
	if (rc == 0) {
		fprintf(f,
			"# HELP bnstat_runs Runs stored.\n# TYPE bnstat_runs gauge\n"
			"bnstat_runs %lld\n",
			m.runs);
		fputs("# HELP bnstat_run_last_step The highest step with statistics, per run.\n"
		      "# TYPE bnstat_run_last_step gauge\n",
		      f);
		rc = store_runs_last_step(r, print_last_step, &m);
	}
	store_read_end(r);
	return rc < 0 ? read_failed(err) : 0;
}
