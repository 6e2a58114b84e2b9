/*
 * store: SQLite persistence; the only module that speaks SQL.
 *
 * One writer thread owns the write connection. HTTP threads hand it decoded
 * batches with store_submit(); it takes every batch queued so far, applies
 * them in one transaction (each in its own savepoint, so that one bad batch
 * rolls back alone), commits once, and only then reports each batch's
 * outcome through its callback. That is group commit: many uploads, one
 * fsync, and a reply means durable.
 *
 * Readers borrow a connection of their own from a small pool
 * (store_reader_get/put) and never wait on the writer: WAL mode lets them
 * read the last committed state while the writer writes.
 */
#ifndef BNSTAT_STORE_H
#define BNSTAT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bnstat/error.h"
#include "bnstat/ingest.h"
#include "bnstat/stats.h"

struct store;
struct store_reader;

/* One schema migration, compiled in from sql/NNNN_name.sql. */
struct store_migration {
	int version;
	const char *name;
	const char *sql;
};
extern const struct store_migration store_migrations[];
extern const size_t store_migrations_count;

struct store_options {
	size_t queue_max;     /* uploads waiting for the writer before 503 (default 1024) */
	size_t group_max;     /* batches per transaction at most (default 512) */
	bool sync_full;	      /* PRAGMA synchronous=FULL (default) instead of NORMAL */
	int64_t retain_steps; /* keep per-step statistics of the last N steps per run; 0: all */
};

/* The outcome of one submitted batch, reported after the commit. */
struct store_result {
	int status;	     /* 200 accepted or duplicate; 409, 422, 500, 503 */
	bool duplicate;	     /* same identity and content seen before */
	size_t layers;	     /* layers in the batch */
	struct bn_error err; /* when status is not 200 */
};

/*
 * Called once per submitted batch, from the writer thread, after the
 * transaction that holds it committed (or failed). *r is borrowed for the
 * duration of the call.
 */
typedef void (*store_done_fn)(void *ctx, const struct store_result *r);

/* Fill *o with the defaults. */
void store_options_default(struct store_options *o);

/*
 * Open (creating if needed) the database at path, apply pending migrations
 * and start the writer thread. opt may be NULL for the defaults. On success
 * *out is a store the caller owns and releases with store_close().
 * Returns 0 or a negative errno with *err filled in.
 */
int store_open(const char *path, const struct store_options *opt, struct store **out,
	       struct bn_error *err);

/*
 * Stop accepting uploads (store_submit then fails with -ESHUTDOWN), let the
 * writer commit everything already queued and report it, and join the
 * writer. Readers keep working until store_close(). Idempotent.
 */
void store_stop_writer(struct store *s);

/*
 * Stop the writer as store_stop_writer() does, close every connection and
 * free the store. NULL is fine.
 */
void store_close(struct store *s);

/*
 * Queue batch b for the writer. On success the store owns b (it frees it)
 * and will call done(ctx, result) exactly once. Returns -EAGAIN when the
 * queue is full and -ESHUTDOWN when the store is closing; then the caller
 * still owns b and done is never called.
 */
int store_submit(struct store *s, struct ingest_batch *b, store_done_fn done, void *ctx);

/* --- snapshots ------------------------------------------------------------ */

#define STORE_LABEL_MAX 128
#define STORE_ESTIMATOR_MAX 32

/* Which snapshot parameters the client gave explicitly (the rest defaulted). */
enum {
	STORE_SNAP_STEP = 1 << 0,
	STORE_SNAP_WINDOW = 1 << 1,
	STORE_SNAP_DOMAIN = 1 << 2,
	STORE_SNAP_ESTIMATOR = 1 << 3,
};

struct store_snapshot_layer {
	char *name;
	size_t channels;
	int64_t count; /* elements per channel merged */
	int64_t batches;
	double *mean; /* [channels] */
	double *var;  /* [channels] */
};

/*
 * A snapshot to create: the resolved parameters and the statistics. Built
 * by query (query_snapshot_prepare) and handed to the writer with
 * store_submit_snapshot(). Everything it points to is owned by it.
 */
struct store_snapshot {
	char run[INGEST_NAME_MAX + 1];
	char label[STORE_LABEL_MAX + 1];
	int64_t step;
	int64_t window;
	char domain[INGEST_NAME_MAX + 1];
	char estimator[STORE_ESTIMATOR_MAX];
	unsigned explicit_fields; /* STORE_SNAP_* given by the client */
	int64_t created_ms;	  /* filled in when read back */
	size_t n_layers;
	struct store_snapshot_layer *layers;
};

/* Free a snapshot and everything it owns; NULL is fine. */
void store_snapshot_free(struct store_snapshot *snap);

/*
 * Queue the creation of snapshot snap. On success the store owns snap and
 * calls done exactly once after the commit with status 201 (created), 200
 * (the label exists and every explicit field equals the stored one:
 * nothing changed), 409 (the label exists with other parameters) or 404
 * (the run is gone). Returns as store_submit() does.
 */
int store_submit_snapshot(struct store *s, struct store_snapshot *snap, store_done_fn done,
			  void *ctx);

/*
 * Compare the explicit fields of want with the stored snapshot have:
 * true when they agree (a retry), false when one differs (a conflict).
 */
bool store_snapshot_matches(const struct store_snapshot *want, const struct store_snapshot *have);

/*
 * Read snapshot `label` of run run_id: 0 and a new snapshot in *out (owned
 * by the caller; with layers when with_layers), or -ENOENT.
 */
int store_snapshot_get(struct store_reader *r, int64_t run_id, const char *label, bool with_layers,
		       struct store_snapshot **out);

/* Call fn for every snapshot of the run (without layers), by label. */
typedef int (*store_snapshot_fn)(void *ctx, const struct store_snapshot *snap);
int store_snapshots_foreach(struct store_reader *r, int64_t run_id, store_snapshot_fn fn,
			    void *ctx);

/*
 * Queue the deletion of run `run` with everything it holds. done reports
 * 200 (deleted) or 404 (no such run). Returns as store_submit() does.
 */
int store_submit_delete(struct store *s, const char *run, store_done_fn done, void *ctx);

/* Batches waiting for the writer right now. */
size_t store_queue_depth(struct store *s);

/* Bytes on disk of the database file and its write-ahead log. */
unsigned long long store_disk_bytes(struct store *s);

/* The schema version of the open database (PRAGMA user_version). */
int store_schema_version(struct store *s);

/* --- reading ---------------------------------------------------------- */

/*
 * Borrow a read connection (opened on first use). Returns 0 or a negative
 * errno with *err filled in. Give it back with store_reader_put().
 */
int store_reader_get(struct store *s, struct store_reader **out, struct bn_error *err);
void store_reader_put(struct store *s, struct store_reader *r);

/* Begin/end one consistent read snapshot over several calls. */
int store_read_begin(struct store_reader *r);
void store_read_end(struct store_reader *r);

/* Look up a run by name: 0 and *run_id, or -ENOENT. */
int store_run_find(struct store_reader *r, const char *run, int64_t *run_id);

/* Look up a domain of a run: 0 and *domain_id, or -ENOENT. */
int store_domain_find(struct store_reader *r, int64_t run_id, const char *domain,
		      int64_t *domain_id);

/*
 * Highest step with data in the domain (domain_id < 0: any domain).
 * Returns 0, or -ENOENT when there is none.
 */
int store_latest_step(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t *step);

/*
 * One stored per-step aggregate, handed to a store_agg_fn. agg's arrays
 * are the store's scratch memory, valid only during the call.
 */
struct store_agg_row {
	int64_t layer_id;
	int64_t domain_id;
	int64_t step;
	const struct stats_agg *agg;
};
typedef int (*store_agg_fn)(void *ctx, const struct store_agg_row *row);

/*
 * Call fn for every aggregate of the run with step_lo < step <= step_hi in
 * the domain (domain_id < 0: every domain), ordered by step, then layer id,
 * then domain id: a fixed order, so that the same query always merges in
 * the same order and gives the same bits. When layer_ids is not NULL only
 * those n_layer_ids layers are visited. A nonzero return from fn stops the
 * walk and is returned. Returns 0 or a negative errno.
 */
int store_aggs_foreach(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step_lo,
		       int64_t step_hi, const int64_t *layer_ids, size_t n_layer_ids,
		       store_agg_fn fn, void *ctx);

/* --- describing runs ---------------------------------------------------- */

struct store_run_info {
	const char *name;
	int64_t created_ms;
	int64_t batches;  /* accepted batch identities */
	int64_t step_min; /* valid when batches > 0 */
	int64_t step_max;
	int64_t layers;
	int64_t domains;
	int64_t workers;
};
typedef int (*store_run_fn)(void *ctx, const struct store_run_info *info);

/* Call fn for every run, by name, with only name and step_max (the highest
 * step with statistics; batches is 1 when there is one, else 0) filled:
 * cheap enough for every metrics scrape. */
int store_runs_last_step(struct store_reader *r, store_run_fn fn, void *ctx);

/* Call fn for every run, by name. */
int store_runs_foreach(struct store_reader *r, store_run_fn fn, void *ctx);

/* Describe one run: 0, or -ENOENT. */
int store_run_describe(struct store_reader *r, const char *run, store_run_fn fn, void *ctx);

/*
 * A named item of a run with counts: a layer (channels in `a`), a domain
 * (batches in `a`, distinct steps in `b`, layers in `c`, elements per
 * channel summed over layers and steps in `d`) or a worker (batches in
 * `a`, last step in `b`).
 */
struct store_item {
	int64_t id;
	const char *name;
	int64_t a;
	int64_t b;
	int64_t c;
	int64_t d;
};
typedef int (*store_item_fn)(void *ctx, const struct store_item *item);

int store_layers_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx);
int store_domains_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx);
int store_workers_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx);

/* --- one layer across steps (series, simulated EMA) --------------------------- */

/*
 * A stored row seen without its arrays: a per-step aggregate (n, k, ...)
 * or a worker EMA (seq in k). Read its values with store_row_read().
 */
struct store_row {
	int64_t rowid;
	int64_t step;
	int64_t domain_id;
	int64_t n;
	int64_t k;
	int64_t nbs_min;
	int64_t nbs_max;
	const char *worker; /* EMA rows only */
};
typedef int (*store_row_fn)(void *ctx, const struct store_row *row);

/*
 * Per-step aggregates of one layer with step_lo < step <= step_hi in the
 * domain (domain_id < 0: all), ordered by step then domain id.
 */
int store_layer_aggs(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t layer_id,
		     int64_t step_lo, int64_t step_hi, store_row_fn fn, void *ctx);

/*
 * Worker EMA rows of one layer and domain with step_lo < step <= step_hi,
 * by step; worker NULL: every worker (then by step, worker).
 */
int store_layer_emas(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t layer_id,
		     const char *worker, int64_t step_lo, int64_t step_hi, store_row_fn fn,
		     void *ctx);

enum store_blob { STORE_BLOB_AGG, STORE_BLOB_EMA };

/*
 * Read n doubles starting at double index `first` of the data blob of row
 * rowid (an aggregate: array a of STATS_AGG_ARRAYS lies at a*channels; an
 * EMA: mean at 0, var at channels) into out, without reading the rest of
 * the blob. Returns 0 or -EIO.
 */
int store_row_read(struct store_reader *r, enum store_blob which, int64_t rowid, size_t first,
		   size_t n, double *out);

/*
 * The first worker by name that reported an EMA at `step` in the domain:
 * 0 and its name copied to worker[size], or -ENOENT.
 */
int store_ema_first_worker(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step,
			   char *worker, size_t size);

/*
 * Late writes (batches that landed below the run's highest step): *gen is
 * the newest late-write id (0 when none).
 */
int store_late_gen(struct store_reader *r, int64_t run_id, int64_t *gen);

/*
 * Has a late write newer than gen landed at a step <= step in the domain
 * (domain_id < 0: any)? Returns 1, 0, or a negative errno.
 */
int store_late_since(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t gen,
		     int64_t step);

/* Look up one layer: 0 with its id and channel count, or -ENOENT. */
int store_layer_find(struct store_reader *r, int64_t run_id, const char *layer, int64_t *layer_id,
		     size_t *channels);

#endif
