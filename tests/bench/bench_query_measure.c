/*
 * bench_query_measure.c: the timed requests of the query benchmark, one at
 * a time on one keep-alive connection (wall clock from writing the
 * request to reading the whole answer, the daemon's CPU around it), and
 * the table of them.
 */
#include "bench_query.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_stats.h"
#include "bench_util.h"

struct result results[MAX_RESULTS];
size_t n_results;
struct http_conn qconn = { .fd = -1 };

/* The next row of results, zeroed but for its labels. */
static struct result *result_new(const char *query, const char *cache)
{
	struct result *res;

	if (n_results == MAX_RESULTS)
		die("too many results");
	res = &results[n_results++];
	memset(res, 0, sizeof(*res));
	snprintf(res->query, sizeof(res->query), "%s", query);
	snprintf(res->cache, sizeof(res->cache), "%s", cache);
	return res;
}

/*
 * Send GET <run_path>/<query> reps times on the query connection; record
 * the wall clock of each (request written to answer read). If expect is
 * given, every answer is compared with it byte for byte.
 */
struct result *measure(const char *query, const char *cache, unsigned reps, const char *expect)
{
	struct result *res;
	struct http_resp r = { 0 };
	double ms[MAX_REPS], cpu[MAX_REPS];
	char path[512];
	unsigned i, n_cpu = 0;

	res = result_new(query, cache);
	snprintf(path, sizeof(path), "%s/%s", run_path, query);
	qconn.port = port_now();
	for (i = 0; i < reps; i++) {
		double c0 = daemon_cpu_ms(), t0 = now_s(), t1, c1;
		int rc = http_do(&qconn, "GET", path, NULL, NULL, 0, &r, opt.timeout);

		t1 = now_s();
		c1 = daemon_cpu_ms();
		if (rc < 0)
			die("GET %s: %s", path, strerror(-rc));
		ms[i] = (t1 - t0) * 1e3;
		if (c0 >= 0 && c1 >= 0)
			cpu[n_cpu++] = c1 - c0;
		res->status = r.status;
		res->bytes = r.body.len;
		if (expect != NULL) {
			res->checked = true;
			if (strcmp(expect, r.body.p) != 0)
				res->mismatches++;
		}
		if (r.status != 200) {
			note("GET %s: HTTP %d %.500s", path, r.status, r.body.p);
			i++;
			break;
		}
	}
	res->n = i;
	res->med = stats_median(ms, res->n); /* sorts ms */
	res->min = ms[0];
	res->max = ms[res->n - 1];
	res->cpu_med = n_cpu > 0 ? stats_median(cpu, n_cpu) : -1;
	res->body = xstrdup(r.body.p ? r.body.p : "");
	note("%-60s %-22s n=%u median %.1f ms (min %.1f, max %.1f) %zu bytes%s", query, cache,
	     res->n, res->med, res->min, res->max, res->bytes,
	     res->checked ? (res->mismatches ? "  ANSWER DIFFERS" : "  same answer") : "");
	free(r.body.p);
	return res;
}

/* A POST timed like a query (the late upload). */
struct result *measure_upload(const char *label, const char *cache, const struct sbuf *body)
{
	struct result *res;
	struct http_resp r = { 0 };
	struct http_conn c = { .fd = -1, .port = port_now() };
	double c0, t0, t1, c1;
	bool dup = false;
	unsigned long long retries = 0;
	int rc;

	res = result_new(label, cache);
	if (http_conn_open(&c) < 0)
		die("connect to 127.0.0.1:%u failed", c.port);
	c0 = daemon_cpu_ms();
	t0 = now_s();
	rc = upload(&c, &r, used_form, body, &dup, &retries);
	t1 = now_s();
	c1 = daemon_cpu_ms();
	if (rc != 0)
		die("the late upload failed: %d %s", rc,
		    rc > 0 && r.body.p ? r.body.p : strerror(-rc));
	if (dup)
		note("the late upload was a duplicate (already stored): nothing changes");
	res->n = 1;
	res->min = res->med = res->max = (t1 - t0) * 1e3;
	res->cpu_med = c0 >= 0 && c1 >= 0 ? c1 - c0 : -1;
	res->status = r.status;
	res->bytes = r.body.len;
	res->body = xstrdup(r.body.p ? r.body.p : "");
	note("%-60s %-22s %.1f ms", label, cache, res->med);
	http_conn_close(&c);
	free(c.in.p);
	free(r.body.p);
	return res;
}

/* The run's highest step, from GET /v1/runs/<run>. */
int64_t run_latest_step(void)
{
	struct http_resp r = { 0 };
	const char *p;
	int64_t max;
	int rc;

	qconn.port = port_now();
	rc = http_do(&qconn, "GET", run_path, NULL, NULL, 0, &r, opt.timeout);
	if (rc < 0)
		die("GET %s: %s", run_path, strerror(-rc));
	if (r.status != 200)
		die("GET %s: HTTP %d %.500s", run_path, r.status, r.body.p);
	p = strstr(r.body.p, "\"steps\":");
	p = p ? strstr(p, "\"max\":") : NULL;
	if (p == NULL)
		die("GET %s: no steps.max in %.300s", run_path, r.body.p);
	max = strtoll(p + 6, NULL, 10);
	free(r.body.p);
	return max;
}

/*
 * Wait until the writer has kept the drift metrics of every entry below
 * `latest` (drift_through of GET /v1/runs/{run}): the seconds it took, or
 * -1 after `deadline` seconds.
 */
double wait_drift_kept(int64_t latest, double deadline)
{
	double t0 = now_s();

	for (;;) {
		struct http_resp r = { 0 };
		const char *p;
		int rc;

		qconn.port = port_now();
		rc = http_do(&qconn, "GET", run_path, NULL, NULL, 0, &r, opt.timeout);
		if (rc < 0)
			die("GET %s: %s", run_path, strerror(-rc));
		p = r.status == 200 ? strstr(r.body.p, "\"drift_through\":") : NULL;
		if (p != NULL && strtoll(p + 16, NULL, 10) >= latest - 1) {
			free(r.body.p);
			return now_s() - t0;
		}
		free(r.body.p);
		if (now_s() - t0 > deadline)
			return -1;
		usleep(200 * 1000);
	}
}

void print_table(void)
{
	size_t i;

	printf("\n| # | query (`/v1/runs/{run}/...`) | replay cache | n | min ms | median ms | max "
	       "ms "
	       "| server CPU ms (median) | response bytes |\n");
	printf("|---|---|---|--:|--:|--:|--:|--:|--:|\n");
	for (i = 0; i < n_results; i++) {
		const struct result *r = &results[i];
		char cpu[32];

		if (r->cpu_med >= 0)
			snprintf(cpu, sizeof(cpu), "%.0f", r->cpu_med);
		else
			snprintf(cpu, sizeof(cpu), "n/a");
		printf("| %zu | `%s`%s | %s | %u | %.1f | %.1f | %.1f | %s | %zu%s |\n", i + 1,
		       r->query, r->status == 200 ? "" : " **(error)**", r->cache, r->n, r->min,
		       r->med, r->max, cpu, r->bytes, r->status == 200 ? "" : "");
	}
}
