/*
 * check_store_writer: the store's write side on its own — migrations, the
 * writer's group commit with per-batch savepoints, duplicates and
 * conflicts, the queue — checked by reading aggregates back.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bnstat/ingest.h"
#include "bnstat/stats.h"
#include "store.h"
#include "store_testutil.h"
#include "check_main.h"

static char dir[256];
static char dbpath[300];

static void setup(void)
{
	tu_tmpdir_make(dir, sizeof(dir), dbpath, sizeof(dbpath), "check_store_writer");
}

static void teardown(void)
{
	tu_tmpdir_remove(dir);
}

static struct store *open_store(void)
{
	return tu_open(dbpath);
}

/* Merge every aggregate of layer `layer` of r1 in (lo, hi] of domain (NULL:
 * all). */
struct merged {
	struct stats_agg agg;
	int rows;
};

static int merge_cb(void *ctx, const struct store_agg_row *row)
{
	struct merged *m = ctx;

	if (m->agg.mean == NULL)
		ck_assert_int_eq(stats_agg_init(&m->agg, row->agg->channels), 0);
	stats_agg_merge(&m->agg, row->agg);
	m->rows++;
	return 0;
}

static struct merged read_window(struct store *s, const char *domain, int64_t lo, int64_t hi)
{
	struct store_reader *r;
	struct bn_error err;
	struct merged m;
	int64_t run_id, domain_id = -1;

	memset(&m, 0, sizeof(m));
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &run_id), 0);
	if (domain != NULL)
		ck_assert_int_eq(store_domain_find(r, run_id, domain, &domain_id), 0);
	ck_assert_int_eq(store_aggs_foreach(r, run_id, domain_id, lo, hi, NULL, 0, merge_cb, &m),
			 0);
	store_reader_put(s, r);
	return m;
}

START_TEST(test_migrate_and_reopen)
{
	struct store *s = open_store();
	int latest = store_migrations[store_migrations_count - 1].version;
	sqlite3 *db;
	sqlite3_stmt *st;

	ck_assert_int_ge(latest, 2);
	ck_assert_int_eq(store_schema_version(s), latest);
	store_close(s);
	s = open_store(); /* second open applies nothing and keeps the version */
	ck_assert_int_eq(store_schema_version(s), latest);
	store_close(s);

	/* A database from a newer bnstatd is refused, not downgraded. */
	ck_assert_int_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	sqlite3_close(db);
	{
		struct store *s2 = NULL;
		struct bn_error err;

		ck_assert_int_lt(store_open(dbpath, NULL, &s2, &err), 0);
		ck_assert_ptr_null(s2);
		ck_assert_ptr_nonnull(strstr(err.message, "newer"));
	}
}
END_TEST

START_TEST(test_accept_duplicate_conflict)
{
	struct store *s = open_store();
	struct store_result r;
	struct merged m;
	const char *b0 = "{\"worker\":\"w0\",\"step\":3,\"seq\":0,\"layers\":{"
			 "\"bn\":{\"count\":4,\"mean\":[1,2],\"var\":[2,4]}}}";

	r = tu_put(s, b0);
	ck_assert_int_eq(r.status, 200);
	ck_assert(!r.duplicate);
	ck_assert_uint_eq(r.layers, 1);
	r = tu_put(s, b0);
	ck_assert_int_eq(r.status, 200);
	ck_assert(r.duplicate);
	/* Same identity, other content. */
	r = tu_put(s, "{\"worker\":\"w0\",\"step\":3,\"seq\":0,\"layers\":{"
		      "\"bn\":{\"count\":4,\"mean\":[1,2.5],\"var\":[2,4]}}}");
	ck_assert_int_eq(r.status, 409);
	ck_assert_str_eq(r.err.code, "conflict");

	m = read_window(s, "default", 2, 3);
	ck_assert_int_eq(m.rows, 1);
	ck_assert_int_eq(m.agg.n, 4);
	ck_assert_int_eq(m.agg.k, 1);
	ck_assert(m.agg.mean[0] == 1.0 && m.agg.mean[1] == 2.0);
	ck_assert(m.agg.m2[0] == 6.0 && m.agg.m2[1] == 12.0); /* unbiased var * (n-1) */
	stats_agg_free(&m.agg);
	store_close(s);
}
END_TEST

START_TEST(test_channel_change_rolls_back_alone)
{
	struct store *s = open_store();
	struct outcome o[3];
	const char *json[3] = {
		"{\"worker\":\"w0\",\"step\":1,\"seq\":0,\"layers\":{"
		"\"bn\":{\"count\":2,\"mean\":[1,1],\"var\":[0,0]}}}",
		/* second layer fine, first changes its channel count: all of it must go
		 */
		"{\"worker\":\"w1\",\"step\":1,\"seq\":0,\"layers\":{"
		"\"a\":{\"count\":2,\"mean\":[5],\"var\":[1]},"
		"\"bn\":{\"count\":2,\"mean\":[1,1,1],\"var\":[0,0,0]}}}",
		"{\"worker\":\"w2\",\"step\":1,\"seq\":0,\"layers\":{"
		"\"bn\":{\"count\":2,\"mean\":[3,3],\"var\":[0,0]}}}",
	};
	struct store_reader *r;
	struct bn_error err;
	struct merged m;
	int64_t run_id, layer_id;
	size_t channels;
	int i;

	/* Submitted back to back so that they usually share one transaction. */
	for (i = 0; i < 3; i++) {
		outcome_init(&o[i]);
		ck_assert_int_eq(store_submit(s, decode(json[i]), on_done, &o[i]), 0);
	}
	for (i = 0; i < 3; i++)
		outcome_wait(&o[i]);
	ck_assert_int_eq(o[0].res.status, 200);
	ck_assert_int_eq(o[1].res.status, 422);
	ck_assert_str_eq(o[1].res.err.path, "layers.bn.mean");
	ck_assert_int_eq(o[2].res.status, 200);

	m = read_window(s, NULL, 0, 1);
	ck_assert_int_eq(m.agg.k, 2);
	ck_assert_int_eq(m.agg.n, 4);
	ck_assert(m.agg.mean[0] == 2.0);
	stats_agg_free(&m.agg);

	/* Layer "a" of the refused batch was never created. */
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	ck_assert_int_eq(store_run_find(r, "r1", &run_id), 0);
	ck_assert_int_eq(store_layer_find(r, run_id, "a", &layer_id, &channels), -ENOENT);
	ck_assert_int_eq(store_layer_find(r, run_id, "bn", &layer_id, &channels), 0);
	ck_assert_uint_eq(channels, 2);
	store_reader_put(s, r);
	store_close(s);
}
END_TEST

/* Many batches at once, many steps: what is read back equals a fresh merge. */
START_TEST(test_group_commit_exact)
{
	enum { N = 300, C = 3 };
	struct store_options opt;
	struct store *s = NULL;
	struct bn_error err;
	struct outcome *o = calloc(N, sizeof(*o));
	struct stats_agg ref;
	struct merged m;
	char json[512];
	int i, c;

	store_options_default(&opt);
	opt.group_max = 64;
	ck_assert_int_eq(store_open(dbpath, &opt, &s, &err), 0);
	ck_assert_int_eq(stats_agg_init(&ref, C), 0);
	for (i = 0; i < N; i++) {
		double mean[C], var[C];
		int64_t count = 2 + i % 7;

		for (c = 0; c < C; c++) {
			mean[c] = 1000.0 + 0.25 * (i % 13) + c;
			var[c] = 0.5 + 0.125 * (i % 5);
		}
		if (i % 10 < 5) /* steps 0..29, all in window (−1, 29] */
			stats_agg_add_batch(&ref, count, mean, var, STATS_VAR_UNBIASED);
		snprintf(json, sizeof(json),
			 "{\"worker\":\"w%d\",\"step\":%d,\"seq\":%d,\"domain\":\"%s\","
			 "\"layers\":{"
			 "\"bn\":{\"count\":%lld,\"mean\":[%.17g,%.17g,%.17g],\"var\":[%."
			 "17g,%.17g,"
			 "%.17g]}}}",
			 i % 5, i / 10, i % 10, i % 10 < 5 ? "a" : "b", (long long)count, mean[0],
			 mean[1], mean[2], var[0], var[1], var[2]);
		outcome_init(&o[i]);
		ck_assert_int_eq(store_submit(s, decode(json), on_done, &o[i]), 0);
	}
	for (i = 0; i < N; i++) {
		outcome_wait(&o[i]);
		ck_assert_int_eq(o[i].res.status, 200);
		ck_assert(!o[i].res.duplicate);
	}
	store_close(s);
	s = open_store(); /* and it is all still there */
	m = read_window(s, "a", -1, 29);
	ck_assert_int_eq(m.agg.n, ref.n);
	ck_assert_int_eq(m.agg.k, ref.k);
	for (c = 0; c < C; c++) {
		ck_assert_double_eq_tol(m.agg.mean[c], ref.mean[c], 1e-12 * fabs(ref.mean[c]));
		ck_assert_double_eq_tol(m.agg.m2[c], ref.m2[c], 1e-12 * fabs(ref.m2[c]));
	}
	stats_agg_free(&m.agg);
	m = read_window(s, "b", 9, 19); /* steps 10..19 of domain b: 10 steps x 5 batches */
	ck_assert_int_eq(m.agg.k, 50);
	stats_agg_free(&m.agg);
	stats_agg_free(&ref);
	store_close(s);
	free(o);
}
END_TEST

START_TEST(test_ema_and_count_zero)
{
	struct store *s = open_store();
	struct store_result r;
	struct merged m;
	sqlite3 *db;
	sqlite3_stmt *st;

	r = tu_put(s, "{\"worker\":\"w0\",\"step\":1,\"seq\":0,\"layers\":{"
		      "\"bn\":{\"count\":4,\"mean\":[1],\"var\":[2],\"ema_mean\":[0."
		      "1],\"ema_var\":[0."
		      "9]},"
		      "\"unused\":{\"count\":0}}}");
	ck_assert_int_eq(r.status, 200);
	r = tu_put(s, "{\"worker\":\"w0\",\"step\":1,\"seq\":1,\"layers\":{"
		      "\"bn\":{\"count\":4,\"mean\":[1],\"var\":[2],\"ema_mean\":[0."
		      "2],\"ema_var\":[0."
		      "8]}}}");
	ck_assert_int_eq(r.status, 200);
	/* An older seq arriving late does not replace the newer EMA. */
	r = tu_put(s, "{\"worker\":\"w0\",\"step\":1,\"seq\":2,\"layers\":{"
		      "\"bn\":{\"count\":0,\"mean\":[7],\"var\":[7]}}}");
	ck_assert_int_eq(r.status, 200);
	m = read_window(s, "default", 0, 1);
	ck_assert_int_eq(m.agg.k, 2); /* count 0 merged nothing */
	ck_assert_int_eq(m.rows, 1);  /* and "unused" has no aggregate */
	stats_agg_free(&m.agg);
	store_close(s);

	ck_assert_int_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT seq, data FROM emas", -1, &st, NULL),
			 SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int(st, 0), 1);
	ck_assert_int_eq(sqlite3_column_bytes(st, 1), 16);
	{
		double v[2];

		memcpy(v, sqlite3_column_blob(st, 1), sizeof(v));
		ck_assert(v[0] == 0.2 && v[1] == 0.8);
	}
	ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT count(*) FROM layers WHERE name = 'unused'",
					    -1, &st, NULL),
			 SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int(st, 0), 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
}
END_TEST

START_TEST(test_submit_after_stop)
{
	struct store *s = open_store();
	struct ingest_batch *b = decode("{\"worker\":\"w0\",\"step\":1,\"seq\":0,\"layers\":{"
					"\"bn\":{\"count\":4,\"mean\":[1],\"var\":[2]}}}");
	struct outcome o;

	outcome_init(&o);
	store_stop_writer(s);
	ck_assert_int_eq(store_submit(s, b, on_done, &o), -ESHUTDOWN);
	ingest_batch_free(b); /* still ours after a refused submit */
	ck_assert(!o.done);
	store_close(s);
}
END_TEST

START_TEST(test_queue_full)
{
	struct store_options opt;
	struct store *s = NULL;
	struct bn_error err;
	struct outcome o[64];
	const char *json = "{\"worker\":\"w0\",\"step\":1,\"seq\":0,\"layers\":{"
			   "\"bn\":{\"count\":4,\"mean\":[1],\"var\":[2]}}}";
	sqlite3 *blocker;
	int i, accepted = 0, refused = 0, fresh = 0;

	store_options_default(&opt);
	opt.queue_max = 2;
	ck_assert_int_eq(store_open(dbpath, &opt, &s, &err), 0);
	/*
	 * Another connection holds the write lock, so the writer blocks on its
	 * first BEGIN IMMEDIATE with at most one group in hand; the queue
	 * behind it fills up.
	 */
	ck_assert_int_eq(sqlite3_open(dbpath, &blocker), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(blocker, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	for (i = 0; i < 64; i++) {
		struct ingest_batch *b = decode(json);
		int rc;

		outcome_init(&o[i]);
		rc = store_submit(s, b, on_done, &o[i]);
		if (rc == 0) {
			accepted++;
		} else {
			ck_assert_int_eq(rc, -EAGAIN);
			ingest_batch_free(b);
			refused++;
		}
	}
	/* queued (2) plus what the writer took before blocking (at most 2) */
	ck_assert_int_ge(accepted, 2);
	ck_assert_int_le(accepted, 4);
	ck_assert_int_eq(accepted + refused, 64);
	ck_assert_int_eq(sqlite3_exec(blocker, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(blocker);
	store_close(s); /* commits what was queued and reports it */
	/* Identical batches: the first committed, the rest are duplicates. */
	for (i = 0; i < 64; i++) {
		if (!o[i].done)
			continue;
		ck_assert_int_eq(o[i].res.status, 200);
		fresh += !o[i].res.duplicate;
	}
	ck_assert_int_eq(fresh, 1);
}
END_TEST

/* What the `changed` hook of struct store_options heard: "run/domain" per call. */
struct heard {
	pthread_mutex_t mu;
	char calls[8][300];
	int n;
};

static void on_changed(void *ctx, const char *run, const char *domain)
{
	struct heard *h = ctx;

	pthread_mutex_lock(&h->mu);
	if (h->n < 8)
		snprintf(h->calls[h->n], sizeof(h->calls[0]), "%s/%s", run, domain);
	h->n++;
	pthread_mutex_unlock(&h->mu);
}

/*
 * The hook hears of every stored upload once its commit is done (before
 * its outcome is reported), and of nothing else: no duplicate, no refusal.
 */
START_TEST(test_changed_hook)
{
	struct heard h = { .mu = PTHREAD_MUTEX_INITIALIZER };
	struct store_options opt;
	struct store *s = NULL;
	struct bn_error err;
	const char *b0 = "{\"worker\":\"w0\",\"step\":3,\"seq\":0,\"layers\":{"
			 "\"bn\":{\"count\":4,\"mean\":[1,2],\"var\":[2,4]}}}";

	store_options_default(&opt);
	opt.changed = on_changed;
	opt.changed_ctx = &h;
	ck_assert_int_eq(store_open(dbpath, &opt, &s, &err), 0);
	ck_assert_int_eq(tu_put(s, b0).status, 200);
	pthread_mutex_lock(&h.mu);
	ck_assert_int_eq(h.n, 1);
	ck_assert_str_eq(h.calls[0], "r1/default");
	pthread_mutex_unlock(&h.mu);
	ck_assert(tu_put(s, b0).duplicate);
	ck_assert_int_eq(tu_put(s, "{\"worker\":\"w0\",\"step\":3,\"seq\":0,\"layers\":{"
				   "\"bn\":{\"count\":4,\"mean\":[1,3],\"var\":[2,4]}}}")
				 .status,
			 409);
	ck_assert_int_eq(tu_put(s, "{\"worker\":\"w0\",\"step\":4,\"seq\":0,\"layers\":{"
				   "\"bn\":{\"count\":4,\"mean\":[1,2,3],\"var\":[2,4,5]}}}")
				 .status,
			 422);
	ck_assert_int_eq(tu_put_run(s, "r2",
				    "{\"worker\":\"w0\",\"step\":1,\"seq\":0,\"domain\":\"val\","
				    "\"layers\":{\"bn\":{\"count\":4,\"mean\":[1],\"var\":[2]}}}")
				 .status,
			 200);
	pthread_mutex_lock(&h.mu);
	ck_assert_int_eq(h.n, 2);
	ck_assert_str_eq(h.calls[1], "r2/val");
	pthread_mutex_unlock(&h.mu);
	store_close(s);
}
END_TEST

static Suite *store_writer_suite(void)
{
	Suite *s = suite_create("store_writer");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_migrate_and_reopen);
	tcase_add_test(tc, test_accept_duplicate_conflict);
	tcase_add_test(tc, test_channel_change_rolls_back_alone);
	tcase_add_test(tc, test_group_commit_exact);
	tcase_add_test(tc, test_ema_and_count_zero);
	tcase_add_test(tc, test_submit_after_stop);
	tcase_add_test(tc, test_queue_full);
	tcase_add_test(tc, test_changed_hook);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(store_writer_suite)
