/*
 * check_store_read: the store's read side on its own — describing runs, a
 * page of them at a time, the layers, domains and workers of a run, one
 * layer across steps with its arrays read a slice at a time, the late-write
 * log, snapshots and deleting a run or a snapshot — against small runs
 * whose every count is known.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "bnstat/ingest.h"
#include "store.h"
#include "store_testutil.h"
#include "check_main.h"

static char dir[256];
static char dbpath[300];

static void setup(void)
{
	tu_tmpdir_make(dir, sizeof(dir), dbpath, sizeof(dbpath), "check_store_read");
}

static void teardown(void)
{
	tu_tmpdir_remove(dir);
}

/*
 * Run r1: layer bn (2 channels) at step 1 in domain "default" from w0 (with
 * an EMA, seq 3) and w1, layer c2 (1 channel) from w1 at step 1, and bn at
 * step 2 in domain "b" from w0 (with an EMA).
 */
static struct store *fill(void)
{
	struct store *s = tu_open(dbpath);

	ck_assert_int_eq(tu_put(s, "{\"worker\":\"w0\",\"step\":1,\"seq\":3,\"layers\":{"
				   "\"bn\":{\"count\":4,\"mean\":[1,2],\"var\":[2,4],"
				   "\"ema_mean\":[0.1,0.2],\"ema_var\":[0.9,0.8]}}}")
				 .status,
			 200);
	ck_assert_int_eq(tu_put(s, "{\"worker\":\"w1\",\"step\":1,\"seq\":0,\"layers\":{"
				   "\"bn\":{\"count\":6,\"mean\":[3,4],\"var\":[1,1]},"
				   "\"c2\":{\"count\":2,\"mean\":[5],\"var\":[1]}}}")
				 .status,
			 200);
	ck_assert_int_eq(tu_put(s, "{\"worker\":\"w0\",\"step\":2,\"seq\":0,\"domain\":\"b\","
				   "\"layers\":{\"bn\":{\"count\":4,\"mean\":[1,1],\"var\":[1,1],"
				   "\"ema_mean\":[0.3,0.4],\"ema_var\":[0.7,0.6]}}}")
				 .status,
			 200);
	return s;
}

/* Items seen by a walk, copied out (the walk's are borrowed). */
struct items {
	int n;
	int stop_at; /* return 7 at this item (1-based), 0: never */
	char name[4][32];
	struct store_item item[4];
};

static int collect_item(void *ctx, const struct store_item *it)
{
	struct items *c = ctx;

	ck_assert_int_lt(c->n, 4);
	snprintf(c->name[c->n], sizeof(c->name[c->n]), "%s", it->name);
	c->item[c->n] = *it;
	c->item[c->n].name = NULL;
	c->n++;
	return c->n == c->stop_at ? 7 : 0;
}

START_TEST(test_layers_domains_workers)
{
	struct store *s = fill();
	struct store_reader *r;
	struct bn_error err;
	struct items c;
	int64_t run_id;

	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &run_id), 0);

	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(store_layers_foreach(r, run_id, collect_item, &c), 0);
	ck_assert_int_eq(c.n, 2);
	ck_assert_str_eq(c.name[0], "bn");
	ck_assert_int_eq(c.item[0].layer.channels, 2);
	ck_assert_int_gt(c.item[0].id, 0);
	ck_assert_str_eq(c.name[1], "c2");
	ck_assert_int_eq(c.item[1].layer.channels, 1);

	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(store_domains_foreach(r, run_id, collect_item, &c), 0);
	ck_assert_int_eq(c.n, 2);
	ck_assert_str_eq(c.name[0], "b");
	ck_assert_int_eq(c.item[0].domain.batches, 1);
	ck_assert_int_eq(c.item[0].domain.steps, 1);
	ck_assert_int_eq(c.item[0].domain.layers, 1);
	ck_assert_int_eq(c.item[0].domain.elements, 4);
	ck_assert_str_eq(c.name[1], "default");
	ck_assert_int_eq(c.item[1].domain.batches, 2);
	ck_assert_int_eq(c.item[1].domain.steps, 1);
	ck_assert_int_eq(c.item[1].domain.layers, 2);
	ck_assert_int_eq(c.item[1].domain.elements, 12); /* bn 4 + 6, c2 2 */

	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(store_workers_foreach(r, run_id, collect_item, &c), 0);
	ck_assert_int_eq(c.n, 2);
	ck_assert_str_eq(c.name[0], "w0");
	ck_assert_int_eq(c.item[0].id, 0);
	ck_assert_int_eq(c.item[0].worker.batches, 2);
	ck_assert_int_eq(c.item[0].worker.last_step, 2);
	ck_assert_str_eq(c.name[1], "w1");
	ck_assert_int_eq(c.item[1].worker.batches, 1);
	ck_assert_int_eq(c.item[1].worker.last_step, 1);

	/* A nonzero return stops the walk and comes back. */
	memset(&c, 0, sizeof(c));
	c.stop_at = 1;
	ck_assert_int_eq(store_workers_foreach(r, run_id, collect_item, &c), 7);
	ck_assert_int_eq(c.n, 1);

	store_reader_put(s, r);
	store_close(s);
}
END_TEST

struct runs {
	int n;
	char name[32];
	struct store_run_info info;
};

static int collect_run(void *ctx, const struct store_run_info *info)
{
	struct runs *c = ctx;

	snprintf(c->name, sizeof(c->name), "%s", info->name);
	c->info = *info;
	c->info.name = NULL;
	c->n++;
	return 0;
}

START_TEST(test_runs)
{
	struct store *s = fill();
	struct store_reader *r;
	struct bn_error err;
	struct runs c;

	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(store_runs_page(r, NULL, NULL, -1, collect_run, &c), 0);
	ck_assert_int_eq(c.n, 1);
	ck_assert_str_eq(c.name, "r1");
	ck_assert_int_eq(c.info.batches, 3);
	ck_assert_int_eq(c.info.step_min, 1);
	ck_assert_int_eq(c.info.step_max, 2);
	ck_assert_int_eq(c.info.layers, 2);
	ck_assert_int_eq(c.info.domains, 2);
	ck_assert_int_eq(c.info.workers, 2);
	ck_assert_int_gt(c.info.created_ms, 0);

	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(store_run_describe(r, "r1", collect_run, &c), 0);
	ck_assert_int_eq(c.n, 1);
	ck_assert_int_eq(c.info.batches, 3);
	ck_assert_int_eq(store_run_describe(r, "nope", collect_run, &c), -ENOENT);
	ck_assert_int_eq(c.n, 1);

	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(store_runs_last_step(r, collect_run, &c), 0);
	ck_assert_int_eq(c.n, 1);
	ck_assert_str_eq(c.name, "r1");
	ck_assert_int_eq(c.info.batches, 1);
	ck_assert_int_eq(c.info.step_max, 2);
	store_reader_put(s, r);
	store_close(s);
}
END_TEST

/* The names a walk saw, joined by spaces (the walk's are borrowed). */
struct names {
	char text[256];
};

static int join_name(void *ctx, const struct store_run_info *info)
{
	struct names *c = ctx;
	size_t n = strlen(c->text);

	snprintf(c->text + n, sizeof(c->text) - n, "%s%s", n ? " " : "", info->name);
	return 0;
}

/* The runs of store_runs_page(prefix, after, limit), as "name name ...". */
static const char *page(struct store_reader *r, const char *prefix, const char *after,
			int64_t limit)
{
	static struct names c;

	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(store_runs_page(r, prefix, after, limit, join_name, &c), 0);
	return c.text;
}

START_TEST(test_runs_page)
{
	/* in byte order: '-' 0x2d < '.' 0x2e < 'X' 0x58 < '_' 0x5f < 'b' 0x62 */
	static const char *const names[] = { "b", "a_b", "ab", "a", "aXb", "a-b", "abc", "a.b" };
	struct store *s = tu_open(dbpath);
	struct store_reader *r;
	struct bn_error err;
	char longer[STORE_RUNS_BOUND_MAX + 2];
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		ck_assert_int_eq(tu_put_run(s, names[i],
					    "{\"worker\":\"w\",\"step\":1,\"seq\":0,\"layers\":{"
					    "\"bn\":{\"count\":2,\"mean\":[1],\"var\":[1]}}}")
					 .status,
				 200);
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_str_eq(page(r, NULL, NULL, -1), "a a-b a.b aXb a_b ab abc b");
	ck_assert_str_eq(page(r, "", "", -1), "a a-b a.b aXb a_b ab abc b");
	ck_assert_str_eq(page(r, NULL, NULL, 3), "a a-b a.b");
	ck_assert_str_eq(page(r, NULL, "a.b", 3), "aXb a_b ab");
	ck_assert_str_eq(page(r, NULL, "abc", 3), "b");
	ck_assert_str_eq(page(r, NULL, "b", 3), "");
	ck_assert_str_eq(page(r, NULL, "a0", -1), "aXb a_b ab abc b"); /* not a run's name */
	/* '_' and '%' are characters, not LIKE's wildcards */
	ck_assert_str_eq(page(r, "a_", NULL, -1), "a_b");
	ck_assert_str_eq(page(r, "%", NULL, -1), "");
	ck_assert_str_eq(page(r, "a%", NULL, -1), "");
	ck_assert_str_eq(page(r, "ab", NULL, -1), "ab abc");
	ck_assert_str_eq(page(r, "a", NULL, 2), "a a-b");
	ck_assert_str_eq(page(r, "a", "a-b", 2), "a.b aXb");
	/* after at the prefix itself, inside it, before it and past its end */
	ck_assert_str_eq(page(r, "ab", "ab", -1), "abc");
	ck_assert_str_eq(page(r, "ab", "abc", -1), "");
	ck_assert_str_eq(page(r, "ab", "a", -1), "ab abc");
	ck_assert_str_eq(page(r, "a", "b", -1), "");
	ck_assert_str_eq(page(r, "b", NULL, -1), "b");
	ck_assert_str_eq(page(r, "c", NULL, -1), "");
	/* bytes no name has: the upper bound still holds after 0xff */
	ck_assert_str_eq(page(r, "a\xff", NULL, -1), "");
	ck_assert_str_eq(page(r, "\xff\xff", NULL, -1), "");
	ck_assert_str_eq(page(r, NULL, "\xff", -1), "");
	memset(longer, 'a', sizeof(longer) - 1);
	longer[sizeof(longer) - 1] = '\0';
	ck_assert_int_eq(store_runs_page(r, longer, NULL, -1, join_name, &(struct names){ { 0 } }),
			 -EINVAL);
	store_reader_put(s, r);
	store_close(s);
}
END_TEST

struct rows {
	int n;
	struct store_row row[4];
	char worker[4][32];
};

static int collect_row(void *ctx, const struct store_row *row)
{
	struct rows *c = ctx;

	ck_assert_int_lt(c->n, 4);
	c->row[c->n] = *row;
	snprintf(c->worker[c->n], sizeof(c->worker[c->n]), "%s", row->worker ? row->worker : "");
	c->row[c->n].worker = NULL;
	c->n++;
	return 0;
}

START_TEST(test_layer_rows)
{
	struct store *s = fill();
	struct store_reader *r;
	struct bn_error err;
	struct rows c;
	int64_t run_id, dom_default, dom_b, bn, step;
	size_t channels;
	double v[2];
	char worker[32];

	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_read_begin(r), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &run_id), 0);
	ck_assert_int_eq(store_domain_find(r, run_id, "default", &dom_default), 0);
	ck_assert_int_eq(store_domain_find(r, run_id, "b", &dom_b), 0);
	ck_assert_int_eq(store_domain_find(r, run_id, "zz", &dom_b), -ENOENT);
	ck_assert_int_eq(store_domain_find(r, run_id, "b", &dom_b), 0);
	ck_assert_int_eq(store_layer_find(r, run_id, "bn", &bn, &channels), 0);
	ck_assert_uint_eq(channels, 2);
	ck_assert_int_eq(store_latest_step(r, run_id, -1, &step), 0);
	ck_assert_int_eq(step, 2);
	ck_assert_int_eq(store_latest_step(r, run_id, dom_default, &step), 0);
	ck_assert_int_eq(step, 1);

	/* Both domains, by step: the pooled counts of each stored aggregate. */
	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(store_layer_aggs(r, run_id, -1, bn, -1, 10, collect_row, &c), 0);
	ck_assert_int_eq(c.n, 2);
	ck_assert_int_eq(c.row[0].step, 1);
	ck_assert_int_eq(c.row[0].domain_id, dom_default);
	ck_assert_int_eq(c.row[0].n, 10);
	ck_assert_int_eq(c.row[0].batches, 2);
	ck_assert_int_eq(c.row[0].nbs_min, 4);
	ck_assert_int_eq(c.row[0].nbs_max, 6);
	ck_assert_int_eq(c.row[0].seq, 0);
	ck_assert_str_eq(c.worker[0], "");
	ck_assert_int_eq(c.row[1].step, 2);
	ck_assert_int_eq(c.row[1].domain_id, dom_b);
	ck_assert_int_eq(c.row[1].batches, 1);
	/* The pooled mean of step 1, read alone from the row's blob. */
	ck_assert_int_eq(store_row_read(r, STORE_BLOB_AGG, c.row[0].rowid, 2, 0, 2, v), 0);
	ck_assert_double_eq_tol(v[0], 2.2, 1e-12);
	ck_assert_double_eq_tol(v[1], 3.2, 1e-12);

	/* One domain, a step range that leaves step 1 out. */
	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(store_layer_aggs(r, run_id, dom_default, bn, 1, 10, collect_row, &c), 0);
	ck_assert_int_eq(c.n, 0);

	/* Worker EMAs: seq and worker, and the arrays mean then var. */
	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(
		store_layer_emas(r, run_id, dom_default, bn, NULL, -1, 10, collect_row, &c), 0);
	ck_assert_int_eq(c.n, 1);
	ck_assert_int_eq(c.row[0].step, 1);
	ck_assert_int_eq(c.row[0].seq, 3);
	ck_assert_int_eq(c.row[0].batches, 0);
	ck_assert_str_eq(c.worker[0], "w0");
	ck_assert_int_eq(store_row_read(r, STORE_BLOB_EMA, c.row[0].rowid, 2, 0, 2, v), 0);
	ck_assert(v[0] == 0.1 && v[1] == 0.2);
	ck_assert_int_eq(store_row_read(r, STORE_BLOB_EMA, c.row[0].rowid, 2, 2, 2, v), 0);
	ck_assert(v[0] == 0.9 && v[1] == 0.8);
	memset(&c, 0, sizeof(c));
	ck_assert_int_eq(
		store_layer_emas(r, run_id, dom_default, bn, "w1", -1, 10, collect_row, &c), 0);
	ck_assert_int_eq(c.n, 0);
	ck_assert_int_eq(store_ema_first_worker(r, run_id, dom_b, 2, worker, sizeof(worker)), 0);
	ck_assert_str_eq(worker, "w0");
	ck_assert_int_eq(store_ema_first_worker(r, run_id, dom_b, 1, worker, sizeof(worker)),
			 -ENOENT);
	store_read_end(r);
	store_reader_put(s, r);
	store_close(s);
}
END_TEST

/* The newest step of a domain with a worker EMA, whatever came after without one. */
START_TEST(test_ema_latest_step)
{
	struct store *s = tu_open(dbpath);
	struct store_reader *r;
	struct bn_error err;
	int64_t run_id, dom, dom_x, step = -1;
	static const char *const docs[] = {
		"{\"worker\":\"w1\",\"step\":5,\"seq\":0,\"layers\":{\"bn\":{\"count\":4,"
		"\"mean\":[1],\"var\":[2],\"ema_mean\":[0.5],\"ema_var\":[1.5]}}}",
		"{\"worker\":\"w0\",\"step\":2,\"seq\":0,\"layers\":{\"bn\":{\"count\":4,"
		"\"mean\":[1],\"var\":[2],\"ema_mean\":[0.5],\"ema_var\":[1.5]}}}",
		"{\"worker\":\"w0\",\"step\":7,\"seq\":0,\"layers\":{\"bn\":{\"count\":4,"
		"\"mean\":[1],\"var\":[2]}}}",
		"{\"worker\":\"w0\",\"step\":9,\"seq\":0,\"domain\":\"x\",\"layers\":{\"bn\":{"
		"\"count\":4,\"mean\":[1],\"var\":[2]}}}",
	};

	for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++)
		ck_assert_int_eq(tu_put(s, docs[i]).status, 200);
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_read_begin(r), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &run_id), 0);
	ck_assert_int_eq(store_domain_find(r, run_id, "default", &dom), 0);
	ck_assert_int_eq(store_domain_find(r, run_id, "x", &dom_x), 0);
	ck_assert_int_eq(store_ema_latest_step(r, run_id, dom, &step), 0);
	ck_assert_int_eq(step, 5);
	ck_assert_int_eq(store_ema_latest_step(r, run_id, dom_x, &step), -ENOENT);
	store_read_end(r);
	store_reader_put(s, r);
	store_close(s);
}
END_TEST

START_TEST(test_late_writes)
{
	struct store *s = fill();
	struct store_reader *r;
	struct bn_error err;
	int64_t run_id, gen;

	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &run_id), 0);
	/* Every upload so far landed at or above the highest step. */
	ck_assert_int_eq(store_late_gen(r, run_id, &gen), 0);
	ck_assert_int_eq(gen, 0);
	store_reader_put(s, r);

	ck_assert_int_eq(tu_put(s, "{\"worker\":\"w2\",\"step\":1,\"seq\":0,\"layers\":{"
				   "\"bn\":{\"count\":2,\"mean\":[1,1],\"var\":[1,1]}}}")
				 .status,
			 200);
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_late_gen(r, run_id, &gen), 0);
	ck_assert_int_gt(gen, 0);
	ck_assert_int_eq(store_late_since(r, run_id, -1, 0, 1), 1);
	ck_assert_int_eq(store_late_since(r, run_id, -1, 0, 0), 0); /* it landed at step 1 */
	ck_assert_int_eq(store_late_since(r, run_id, -1, gen, 2), 0);
	store_reader_put(s, r);
	store_close(s);
}
END_TEST

/* A snapshot of r1 with one layer, as query would build it. */
static struct store_snapshot *snapshot(const char *run, int64_t step)
{
	struct store_snapshot *snap = calloc(1, sizeof(*snap));

	ck_assert_ptr_nonnull(snap);
	snprintf(snap->run, sizeof(snap->run), "%s", run);
	snprintf(snap->label, sizeof(snap->label), "final");
	snap->step = snap->requested_step = step;
	snap->window = snap->requested_window = 10;
	snap->resolution = 1;
	snprintf(snap->domain, sizeof(snap->domain), "default");
	snprintf(snap->estimator, sizeof(snap->estimator), "population");
	snap->explicit_fields = STORE_SNAP_STEP;
	snap->n_layers = 1;
	snap->layers = calloc(1, sizeof(*snap->layers));
	ck_assert_ptr_nonnull(snap->layers);
	snap->layers[0].name = strdup("bn");
	snap->layers[0].channels = 2;
	snap->layers[0].count = 10;
	snap->layers[0].batches = 2;
	snap->layers[0].mean = malloc(4 * sizeof(double));
	ck_assert_ptr_nonnull(snap->layers[0].mean);
	snap->layers[0].var = snap->layers[0].mean + 2;
	snap->layers[0].mean[0] = 2.5;
	snap->layers[0].mean[1] = -1;
	snap->layers[0].var[0] = 0.25;
	snap->layers[0].var[1] = 4;
	return snap;
}

static int submit_snapshot(struct store *s, struct store_snapshot *snap)
{
	struct outcome o;

	outcome_init(&o);
	ck_assert_int_eq(store_submit_snapshot(s, snap, on_done, &o), 0);
	outcome_wait(&o);
	return o.res.status;
}

static int count_snapshot(void *ctx, const struct store_snapshot *snap)
{
	ck_assert_str_eq(snap->label, "final");
	ck_assert_uint_eq(snap->n_layers, 0);
	(*(int *)ctx)++;
	return 0;
}

START_TEST(test_snapshots)
{
	struct store *s = fill();
	struct store_reader *r;
	struct store_snapshot *got;
	struct bn_error err;
	int64_t run_id;
	int n = 0;

	ck_assert_int_eq(submit_snapshot(s, snapshot("r1", 2)), 201);
	ck_assert_int_eq(submit_snapshot(s, snapshot("r1", 2)), 200); /* a retry */
	ck_assert_int_eq(submit_snapshot(s, snapshot("r1", 1)), 409); /* another step */
	ck_assert_int_eq(submit_snapshot(s, snapshot("nope", 2)), 404);

	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &run_id), 0);
	ck_assert_int_eq(store_snapshot_get(r, run_id, "final", true, &got), 0);
	ck_assert_int_eq(got->step, 2);
	ck_assert_int_eq(got->window, 10);
	ck_assert_int_eq(got->requested_step, 2);
	ck_assert_int_eq(got->requested_window, 10);
	ck_assert_int_eq(got->resolution, 1);
	ck_assert_str_eq(got->domain, "default");
	ck_assert_str_eq(got->estimator, "population");
	ck_assert_int_gt(got->created_ms, 0);
	ck_assert_uint_eq(got->n_layers, 1);
	ck_assert_str_eq(got->layers[0].name, "bn");
	ck_assert_uint_eq(got->layers[0].channels, 2);
	ck_assert_int_eq(got->layers[0].count, 10);
	ck_assert_int_eq(got->layers[0].batches, 2);
	ck_assert(got->layers[0].mean[0] == 2.5 && got->layers[0].mean[1] == -1);
	ck_assert(got->layers[0].var[0] == 0.25 && got->layers[0].var[1] == 4);
	store_snapshot_free(got);
	ck_assert_int_eq(store_snapshot_get(r, run_id, "final", false, &got), 0);
	ck_assert_uint_eq(got->n_layers, 0);
	store_snapshot_free(got);
	ck_assert_int_eq(store_snapshot_get(r, run_id, "other", true, &got), -ENOENT);
	ck_assert_ptr_null(got);
	ck_assert_int_eq(store_snapshots_foreach(r, run_id, count_snapshot, &n), 0);
	ck_assert_int_eq(n, 1);
	store_reader_put(s, r);
	store_close(s);
}
END_TEST

/* Delete snapshot label of run and wait for the outcome. */
static struct store_result submit_snapshot_delete(struct store *s, const char *run,
						  const char *label)
{
	struct outcome o;

	outcome_init(&o);
	ck_assert_int_eq(store_submit_snapshot_delete(s, run, label, on_done, &o), 0);
	outcome_wait(&o);
	return o.res;
}

/* Rows of table snapshot_layers, read on a connection of the test's own. */
static int64_t snapshot_layer_rows(void)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	int64_t n;

	ck_assert_int_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
	ck_assert_int_eq(
		sqlite3_prepare_v2(db, "SELECT count(*) FROM snapshot_layers", -1, &st, NULL),
		SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

START_TEST(test_delete_snapshot)
{
	struct store *s = fill();
	struct store_snapshot *keep = snapshot("r1", 2), *got;
	struct outcome del, add;
	struct store_result res;
	struct store_reader *r;
	struct bn_error err;
	int64_t run_id;

	snprintf(keep->label, sizeof(keep->label), "keep");
	ck_assert_int_eq(submit_snapshot(s, snapshot("r1", 2)), 201);
	ck_assert_int_eq(submit_snapshot(s, keep), 201);
	ck_assert_int_eq(snapshot_layer_rows(), 2);

	ck_assert_int_eq(submit_snapshot_delete(s, "r1", "final").status, 204);
	ck_assert_int_eq(snapshot_layer_rows(), 1); /* its layers went with it */
	res = submit_snapshot_delete(s, "r1", "final");
	ck_assert_int_eq(res.status, 404);
	ck_assert_str_eq(res.err.path, "label");
	res = submit_snapshot_delete(s, "nope", "final");
	ck_assert_int_eq(res.status, 404);
	ck_assert_str_eq(res.err.path, "run");
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &run_id), 0);
	ck_assert_int_eq(store_snapshot_get(r, run_id, "final", false, &got), -ENOENT);
	ck_assert_int_eq(store_snapshot_get(r, run_id, "keep", true, &got), 0);
	ck_assert_uint_eq(got->n_layers, 1);
	store_snapshot_free(got);
	store_reader_put(s, r);

	/* the label is free again: another step is no conflict now */
	ck_assert_int_eq(submit_snapshot(s, snapshot("r1", 1)), 201);
	/* delete and create again queued together (one group, most likely) */
	outcome_init(&del);
	outcome_init(&add);
	ck_assert_int_eq(store_submit_snapshot_delete(s, "r1", "final", on_done, &del), 0);
	ck_assert_int_eq(store_submit_snapshot(s, snapshot("r1", 2), on_done, &add), 0);
	outcome_wait(&del);
	outcome_wait(&add);
	ck_assert_int_eq(del.res.status, 204);
	ck_assert_int_eq(add.res.status, 201);
	store_close(s);

	/* what was committed is there after a reopen */
	s = tu_open(dbpath);
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_snapshot_get(r, run_id, "final", true, &got), 0);
	ck_assert_int_eq(got->step, 2);
	ck_assert_uint_eq(got->n_layers, 1);
	store_snapshot_free(got);
	store_reader_put(s, r);
	store_close(s);
	ck_assert_int_eq(snapshot_layer_rows(), 2);
}
END_TEST

static int submit_delete(struct store *s, const char *run)
{
	struct outcome o;

	outcome_init(&o);
	ck_assert_int_eq(store_submit_delete(s, run, on_done, &o), 0);
	outcome_wait(&o);
	return o.res.status;
}

START_TEST(test_delete_run)
{
	struct store *s = fill();
	struct store_reader *r;
	struct bn_error err;
	int64_t old_id, new_id;

	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &old_id), 0);
	store_reader_put(s, r);
	ck_assert_int_eq(submit_delete(s, "r1"), 200);
	ck_assert_int_eq(submit_delete(s, "r1"), 404);
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &new_id), -ENOENT);
	store_reader_put(s, r);

	/* A run of the same name again: a fresh id, nothing of the old one. */
	ck_assert_int_eq(tu_put(s, "{\"worker\":\"w0\",\"step\":5,\"seq\":0,\"layers\":{"
				   "\"bn\":{\"count\":4,\"mean\":[1,2],\"var\":[2,4]}}}")
				 .status,
			 200);
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &new_id), 0);
	ck_assert_int_gt(new_id, old_id);
	{
		struct items c;

		memset(&c, 0, sizeof(c));
		ck_assert_int_eq(store_workers_foreach(r, new_id, collect_item, &c), 0);
		ck_assert_int_eq(c.n, 1);
		ck_assert_int_eq(c.item[0].worker.batches, 1);
		ck_assert_int_eq(c.item[0].worker.last_step, 5);
	}
	store_reader_put(s, r);
	store_close(s);
}
END_TEST

static Suite *store_read_suite(void)
{
	Suite *s = suite_create("store_read");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_layers_domains_workers);
	tcase_add_test(tc, test_runs);
	tcase_add_test(tc, test_runs_page);
	tcase_add_test(tc, test_layer_rows);
	tcase_add_test(tc, test_ema_latest_step);
	tcase_add_test(tc, test_late_writes);
	tcase_add_test(tc, test_snapshots);
	tcase_add_test(tc, test_delete_run);
	tcase_add_test(tc, test_delete_snapshot);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(store_read_suite)
