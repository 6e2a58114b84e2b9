/*
 * check_store_faults: the store on a disk that fails (docs/OPERATIONS.md,
 * "A full disk", "A damaged database"), through the fault-injecting VFS of
 * tests/faultvfs.c and through real damage written into the file: a write
 * that fails leaves the store READ_ONLY or DAMAGED, every refused batch is
 * reported as not stored, reads go on, writing resumes when space returns,
 * and nothing acknowledged is lost or counted twice.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bnstat/ingest.h"
#include "bnstat/stats.h"
#include "faultvfs.h"
#include "store.h"
#include "store_testutil.h"
#include "check_main.h"

static char dir[256];
static char dbpath[300];

static void setup(void)
{
	ck_assert_int_eq(faultvfs_install(), 0);
	faultvfs_disarm();
	tu_tmpdir_make(dir, sizeof(dir), dbpath, sizeof(dbpath), "check_store_faults");
}

static void teardown(void)
{
	faultvfs_disarm();
	tu_tmpdir_remove(dir);
}

/* The upload of worker w at step, seq 0: count 4, mean step + c, var 1 + c / 4. */
static void batch_json(char *buf, size_t size, const char *w, int step)
{
	snprintf(buf, size,
		 "{\"worker\":\"%s\",\"step\":%d,\"seq\":0,\"layers\":{\"bn\":{\"count\":4,"
		 "\"mean\":[%d,%d],\"var\":[1,1.25]}}}",
		 w, step, step, step + 1);
}

static struct store_result put(struct store *s, const char *w, int step)
{
	char json[256];

	batch_json(json, sizeof(json), w, step);
	return tu_put(s, json);
}

static enum store_state state_of(struct store *s)
{
	struct store_health h;

	store_health_get(s, &h);
	return h.state;
}

/* Wait, at most `seconds`, for the store to be in state want. */
static bool wait_state(struct store *s, enum store_state want, double seconds)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (state_of(s) == want)
			return true;
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec) >
		    seconds)
			return false;
		usleep(20000);
	}
}

struct total {
	int64_t n, k;
	double mean_sum; /* of channel 0's mean times n, over the stored steps */
};

static int total_cb(void *ctx, const struct store_agg_row *row)
{
	struct total *t = ctx;

	t->n += row->agg->n;
	t->k += row->agg->k;
	t->mean_sum += row->agg->mean[0] * (double)row->agg->n;
	return 0;
}

/* Everything stored of run r1 (every domain, every step): 0 or the walk's error. */
static int read_total(struct store *s, struct total *t)
{
	struct store_reader *r;
	struct bn_error err;
	int64_t run_id;
	int rc;

	memset(t, 0, sizeof(*t));
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	rc = store_run_find(r, "r1", &run_id);
	if (rc == 0)
		rc = store_aggs_foreach(r, run_id, -1, -1, INT64_MAX, NULL, 0, total_cb, t);
	store_reader_put(s, r);
	return rc;
}

START_TEST(test_full_disk_then_space_returns)
{
	struct store *s = tu_open(dbpath);
	struct store_result r;
	struct store_health h;
	struct bn_error err;
	struct total t;
	char json[256];

	ck_assert_int_eq(put(s, "w0", 1).status, 200);
	ck_assert_int_eq(state_of(s), STORE_WRITABLE);

	faultvfs_arm(FAULT_FULL, 0, FAULT_FILES_ANY);
	r = put(s, "w0", 2);
	ck_assert_int_eq(r.status, 503);
	ck_assert_str_eq(r.err.code, "read_only");
	ck_assert_ptr_nonnull(strstr(r.err.message, "disk is full"));
	ck_assert_int_gt(faultvfs_failed(), 0);
	store_health_get(s, &h);
	ck_assert_int_eq(h.state, STORE_READ_ONLY);
	ck_assert_ptr_nonnull(strstr(h.reason, "database or disk is full"));
	ck_assert_int_gt(h.since_ms, 0);

	/* refused before it is queued, with the same reason; reads go on */
	batch_json(json, sizeof(json), "w0", 3);
	{
		struct ingest_batch *b = decode(json);

		ck_assert_int_eq(store_submit(s, b, on_done, NULL), -EROFS);
		ingest_batch_free(b);
	}
	ck_assert_int_eq(store_submit_delete(s, "r1", on_done, NULL), -EROFS);
	ck_assert_int_eq(store_health_error(s, &err), -EIO);
	ck_assert_int_eq(err.status, 503);
	ck_assert_str_eq(err.code, "read_only");
	ck_assert_int_eq(read_total(s, &t), 0);
	ck_assert_int_eq(t.k, 1);

	/* still full: the write probes fail and it stays read-only */
	ck_assert(!wait_state(s, STORE_WRITABLE, STORE_PROBE_SECONDS + 1.5));
	ck_assert_int_gt(faultvfs_failed(), 1);

	/* space returns: a probe commits within its period, and uploads are taken again */
	faultvfs_disarm();
	ck_assert(wait_state(s, STORE_WRITABLE, STORE_PROBE_SECONDS + 3.0));
	r = put(s, "w0", 2);
	ck_assert_int_eq(r.status, 200);
	ck_assert(!r.duplicate); /* the refused upload was not stored */
	r = put(s, "w0", 1);
	ck_assert(r.status == 200 && r.duplicate);
	ck_assert_int_eq(read_total(s, &t), 0);
	ck_assert_int_eq(t.k, 2);
	ck_assert_int_eq(t.n, 8);
	ck_assert_double_eq(t.mean_sum, 4.0 * 1 + 4.0 * 2);
	store_close(s);
}
END_TEST

/*
 * Writes fail part-way through groups of many uploads (after some of their
 * WAL frames went through): each upload is either acknowledged or refused
 * with 503, and after recovery a resend of everything leaves exactly one
 * copy of each: the acknowledged ones are duplicates, the refused ones new.
 */
static void refused_midway(enum fault_mode mode, long after, const char *code)
{
	enum { N = 40 };
	struct store_options opt;
	struct store *s = NULL;
	struct bn_error err;
	struct outcome *o = calloc(N, sizeof(*o));
	bool acked[N];
	struct total t;
	char json[256];
	int i, n_acked = 0, n_refused = 0;
	double want_sum = 0;

	store_options_default(&opt);
	opt.group_max = 8;
	ck_assert_int_eq(store_open(dbpath, &opt, &s, &err), 0);
	ck_assert_int_eq(put(s, "warm", 0).status, 200);
	faultvfs_arm(mode, after, FAULT_FILES_ANY);
	for (i = 0; i < N; i++) {
		struct ingest_batch *b;
		int rc;

		batch_json(json, sizeof(json), "w", i + 1);
		b = decode(json);
		outcome_init(&o[i]);
		rc = store_submit(s, b, on_done, &o[i]);
		if (rc == -EROFS) { /* the store left the writable state meanwhile */
			ingest_batch_free(b);
			o[i].done = true;
			o[i].res.status = 503;
			snprintf(o[i].res.err.code, sizeof(o[i].res.err.code), "%s", code);
		} else {
			ck_assert_int_eq(rc, 0);
		}
	}
	for (i = 0; i < N; i++) {
		outcome_wait(&o[i]);
		acked[i] = o[i].res.status == 200;
		if (acked[i]) {
			n_acked++;
		} else {
			ck_assert_int_eq(o[i].res.status, 503);
			ck_assert_str_eq(o[i].res.err.code, code);
			n_refused++;
		}
	}
	ck_assert_int_gt(n_refused, 0);
	ck_assert_int_ne(state_of(s), STORE_WRITABLE);
	/* what is stored is exactly what was acknowledged */
	ck_assert_int_eq(read_total(s, &t), 0);
	ck_assert_int_eq(t.k, 1 + n_acked);

	faultvfs_disarm();
	ck_assert(wait_state(s, STORE_WRITABLE, STORE_PROBE_SECONDS + 3.0));
	for (i = 0; i < N; i++) {
		struct store_result r = put(s, "w", i + 1);

		ck_assert_int_eq(r.status, 200);
		ck_assert_msg(r.duplicate == acked[i], "upload %d: duplicate %d, acknowledged %d",
			      i, r.duplicate, acked[i]);
		want_sum += 4.0 * (i + 1);
	}
	store_close(s);
	s = tu_open(dbpath); /* and it is all on disk */
	ck_assert_int_eq(read_total(s, &t), 0);
	ck_assert_int_eq(t.k, 1 + N);
	ck_assert_int_eq(t.n, 4 * (1 + N));
	ck_assert_double_eq(t.mean_sum, want_sum);
	store_close(s);
	free(o);
}

START_TEST(test_full_midway_loses_nothing)
{
	refused_midway(FAULT_FULL, 3, "read_only");
}
END_TEST

START_TEST(test_ioerr_midway_loses_nothing)
{
	refused_midway(FAULT_IOERR, 5, "read_only");
}
END_TEST

START_TEST(test_full_at_start_opens_read_only)
{
	struct store *s = tu_open(dbpath);
	struct bn_error err;
	struct total t;

	ck_assert_int_eq(put(s, "w0", 1).status, 200);
	store_close(s);
	/* a full disk at start: the open goes on, read-only, and serves reads */
	faultvfs_arm(FAULT_FULL, 0, FAULT_FILES_ANY);
	ck_assert_int_eq(store_open(dbpath, NULL, &s, &err), 0);
	ck_assert_int_eq(state_of(s), STORE_READ_ONLY);
	ck_assert_int_eq(read_total(s, &t), 0);
	ck_assert_int_eq(t.k, 1);
	ck_assert_int_eq(store_submit_delete(s, "r1", on_done, NULL), -EROFS);
	/* and writable again once space returns */
	faultvfs_disarm();
	ck_assert(wait_state(s, STORE_WRITABLE, STORE_PROBE_SECONDS + 3.0));
	ck_assert_int_eq(put(s, "w0", 2).status, 200);
	store_close(s);
}
END_TEST

START_TEST(test_full_at_start_of_a_new_file_fails)
{
	struct store *s = NULL;
	struct bn_error err;

	/* no schema can be written: there is nothing to serve either */
	faultvfs_arm(FAULT_FULL, 0, FAULT_FILES_ANY);
	ck_assert_int_lt(store_open(dbpath, NULL, &s, &err), 0);
	ck_assert_ptr_null(s);
	ck_assert_ptr_nonnull(strstr(err.message, "database or disk is full"));
}
END_TEST

START_TEST(test_corrupt_write_is_damaged_for_good)
{
	struct store *s = tu_open(dbpath);
	struct store_result r;
	struct store_health h;

	ck_assert_int_eq(put(s, "w0", 1).status, 200);
	faultvfs_arm(FAULT_CORRUPT, 0, FAULT_FILES_ANY);
	r = put(s, "w0", 2);
	ck_assert_int_eq(r.status, 503);
	ck_assert_str_eq(r.err.code, "database_damaged");
	store_health_get(s, &h);
	ck_assert_int_eq(h.state, STORE_DAMAGED);
	ck_assert_ptr_nonnull(strstr(h.reason, "malformed"));
	/* no probe brings a damaged file back: only a restart on a recovered one */
	faultvfs_disarm();
	ck_assert(!wait_state(s, STORE_WRITABLE, STORE_PROBE_SECONDS + 1.5));
	store_close(s);
}
END_TEST

START_TEST(test_corrupt_read_stops_writes)
{
	struct store *s = tu_open(dbpath);
	struct total t;

	ck_assert_int_eq(put(s, "w0", 1).status, 200);
	/* the reader's first connection reads cold pages: they are damaged */
	faultvfs_arm(FAULT_CORRUPT, 0, FAULT_FILES_ANY);
	ck_assert_int_lt(read_total(s, &t), 0);
	ck_assert_int_eq(state_of(s), STORE_DAMAGED);
	faultvfs_disarm();
	store_close(s);
}
END_TEST

START_TEST(test_corrupt_blob_read_stops_writes)
{
	enum { C = 20000 }; /* an aggregate of 800 KB: its data lies on overflow pages */
	struct store *s = tu_open(dbpath);
	struct store_reader *r;
	struct bn_error err;
	sqlite3 *c;
	sqlite3_stmt *st;
	int64_t rowid;
	double *out = malloc(C * sizeof(double));
	char *json = malloc(64 + 2 * C * 8), *p;
	int i;

	/* one layer of C channels, so that the blob handle reads pages of its own */
	p = json + sprintf(json, "{\"worker\":\"w0\",\"step\":1,\"seq\":0,\"layers\":{\"bn\":"
				 "{\"count\":4,\"mean\":[");
	for (i = 0; i < C; i++)
		p += sprintf(p, "%s0.5", i ? "," : "");
	p += sprintf(p, "],\"var\":[");
	for (i = 0; i < C; i++)
		p += sprintf(p, "%s1", i ? "," : "");
	sprintf(p, "]}}}");
	ck_assert_int_eq(tu_put(s, json).status, 200);
	/* the row's id, from a connection of the test's own (the store's page caches stay cold) */
	ck_assert_int_eq(sqlite3_open(dbpath, &c), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(c, "SELECT id FROM aggs", -1, &st, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	rowid = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(c);
	ck_assert_int_eq(store_reader_get(s, &r, &err), 0);
	faultvfs_arm(FAULT_CORRUPT, 0, FAULT_FILES_ANY);
	/* the blob handle, not a statement, meets the damaged pages */
	ck_assert_int_lt(store_row_read(r, STORE_BLOB_AGG, rowid, C, 0, C, out), 0);
	store_reader_put(s, r);
	ck_assert_int_eq(state_of(s), STORE_DAMAGED);
	faultvfs_disarm();
	store_close(s);
	free(out);
	free(json);
}
END_TEST

/* Overwrite every page of table `tbl` and its indexes with 0xff. */
static void damage_table(const char *db, const char *tbl)
{
	sqlite3 *c;
	sqlite3_stmt *st;
	FILE *f;
	int page_size = 0, pages = 0;
	char sql[256];
	unsigned char *junk;

	ck_assert_int_eq(sqlite3_open(db, &c), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(c, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL),
			 SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(c, "PRAGMA page_size", -1, &st, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	page_size = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	junk = malloc((size_t)page_size);
	memset(junk, 0xff, (size_t)page_size);
	snprintf(sql, sizeof(sql),
		 "SELECT pageno FROM dbstat WHERE name IN (SELECT name FROM sqlite_master "
		 "WHERE tbl_name = '%s')",
		 tbl);
	ck_assert_int_eq(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK);
	f = fopen(db, "r+b");
	ck_assert_ptr_nonnull(f);
	while (sqlite3_step(st) == SQLITE_ROW) {
		long pg = sqlite3_column_int64(st, 0);

		ck_assert_int_gt(pg, 1);
		ck_assert_int_eq(fseek(f, (pg - 1) * page_size, SEEK_SET), 0);
		ck_assert_uint_eq(fwrite(junk, 1, (size_t)page_size, f), (size_t)page_size);
		pages++;
	}
	sqlite3_finalize(st);
	fclose(f);
	sqlite3_close(c);
	free(junk);
	ck_assert_int_gt(pages, 0);
}

START_TEST(test_real_damage_refuses_the_upload)
{
	struct store_options opt;
	struct store *s = tu_open(dbpath);
	struct ingest_batch *b;
	struct outcome o;
	struct bn_error err;
	char json[256];
	int step, rc;

	for (step = 1; step <= 20; step++)
		ck_assert_int_eq(put(s, "w0", step).status, 200);
	store_close(s);
	damage_table(dbpath, "aggs");
	/* the check at start would refuse it: without it, the first upload finds it */
	store_options_default(&opt);
	opt.integrity_check = false;
	ck_assert_int_eq(store_open(dbpath, &opt, &s, &err), 0);
	/* the upload finds it, unless the writer's bucketing pass of the start did first */
	batch_json(json, sizeof(json), "w0", 21);
	b = decode(json);
	outcome_init(&o);
	rc = store_submit(s, b, on_done, &o);
	if (rc == 0) {
		outcome_wait(&o);
		ck_assert_int_eq(o.res.status, 503);
		ck_assert_str_eq(o.res.err.code, "database_damaged");
	} else {
		ck_assert_int_eq(rc, -EROFS);
		ingest_batch_free(b);
	}
	ck_assert_int_eq(state_of(s), STORE_DAMAGED);
	ck_assert_int_eq(store_submit_delete(s, "r1", on_done, NULL), -EROFS);
	store_close(s);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("store_faults");
	TCase *tc = tcase_create("faults");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_full_disk_then_space_returns);
	tcase_add_test(tc, test_full_midway_loses_nothing);
	tcase_add_test(tc, test_ioerr_midway_loses_nothing);
	tcase_add_test(tc, test_full_at_start_opens_read_only);
	tcase_add_test(tc, test_full_at_start_of_a_new_file_fails);
	tcase_add_test(tc, test_corrupt_write_is_damaged_for_good);
	tcase_add_test(tc, test_corrupt_blob_read_stops_writes);
	tcase_add_test(tc, test_corrupt_read_stops_writes);
	tcase_add_test(tc, test_real_damage_refuses_the_upload);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(suite)
