/*
 * store_testutil: what the Check programs that drive the store share: a
 * temporary database directory, opening a store on it, decoding a JSON
 * batch, and waiting for the writer's outcome of a submitted job.
 * Header-only, for tests.
 */
#ifndef BNSTAT_STORE_TESTUTIL_H
#define BNSTAT_STORE_TESTUTIL_H

#include <check.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/ingest.h"
#include "store.h"

/* A fresh directory from template "/tmp/NAME.XXXXXX" and the database path in
 * it. */
static inline void tu_tmpdir_make(char *dir, size_t dir_size, char *db, size_t db_size,
				  const char *name)
{
	snprintf(dir, dir_size, "/tmp/%s.XXXXXX", name);
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(db, db_size, "%s/t.db", dir);
}

static inline void tu_tmpdir_remove(const char *dir)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* A submitted job's outcome, waited for by the test thread. */
struct outcome {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	struct store_result res;
};

static inline void outcome_init(struct outcome *o)
{
	memset(o, 0, sizeof(*o));
	pthread_mutex_init(&o->mu, NULL);
	pthread_cond_init(&o->cv, NULL);
}

/* The store_done_fn of the tests: record the result and wake the waiter. */
static inline void on_done(void *ctx, const struct store_result *r)
{
	struct outcome *o = ctx;

	pthread_mutex_lock(&o->mu);
	o->res = *r;
	o->done = true;
	pthread_cond_signal(&o->cv);
	pthread_mutex_unlock(&o->mu);
}

static inline void outcome_wait(struct outcome *o)
{
	pthread_mutex_lock(&o->mu);
	while (!o->done)
		pthread_cond_wait(&o->cv, &o->mu);
	pthread_mutex_unlock(&o->mu);
}

/* Decode a JSON upload of run `run`; the test fails when it does not decode. */
static inline struct ingest_batch *decode_run(const char *run, const char *json)
{
	struct ingest_limits lim = { 4096, 65536 };
	struct ingest_batch *b = NULL;
	struct bn_error err;

	if (ingest_decode_json(run, json, strlen(json), &lim, &b, &err) < 0)
		ck_abort_msg("batch does not decode: %s at %s: %s", err.message, err.path, json);
	return b;
}

/* Decode a JSON upload of run "r1". */
static inline struct ingest_batch *decode(const char *json)
{
	return decode_run("r1", json);
}

/* Open a store with the default options on db; the test fails when it does not
 * open. */
static inline struct store *tu_open(const char *db)
{
	struct store *s = NULL;
	struct bn_error err;

	if (store_open(db, NULL, &s, &err) < 0)
		ck_abort_msg("store_open: %s", err.message);
	return s;
}

/* Submit one JSON batch of run `run` and wait for its outcome. */
static inline struct store_result tu_put_run(struct store *s, const char *run, const char *json)
{
	struct outcome o;

	outcome_init(&o);
	ck_assert_int_eq(store_submit(s, decode_run(run, json), on_done, &o), 0);
	outcome_wait(&o);
	return o.res;
}

/* Submit one JSON batch of run "r1" and wait for its outcome. */
static inline struct store_result tu_put(struct store *s, const char *json)
{
	return tu_put_run(s, "r1", json);
}

#endif
