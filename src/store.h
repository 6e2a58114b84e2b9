/*
 * store: SQLite persistence; the only module that speaks SQL.
 *
 * Files: store.c (open, close), store_schema.c (migrations, the writer's
 * statements), store_sql.c (connections, the row loop), store_writer.c
 * (the writer thread, its queue, group commit), store_batch.c (applying an
 * upload), store_intern.c (names to ids), store_aggcache.c (the writer's
 * aggregate cache), store_snapshot.c, store_delete.c, store_retention.c,
 * store_history.c (bounded history: buckets, kept replay states), store_bytes.c
 * (each run's bytes),
 * store_runfile.c and store_import.c (a run's rows for export and import),
 * store_checkpoint.c, store_health.c (whether the database can be written:
 * a full disk, a damaged file, free space), store_read.c (the reader pool,
 * lookups, windows),
 * store_runs.c (describing runs), store_layer.c (one layer across steps).
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
#include "bnstat/batch.h"
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

#define STORE_SIM_MOMENTA_MAX 16

struct store_options {
	size_t queue_max;     /* uploads waiting for the writer before 503 (default 1024) */
	size_t group_max;     /* batches per transaction at most (default 512) */
	bool sync_full;	      /* PRAGMA synchronous=FULL (default) instead of NORMAL */
	bool integrity_check; /* PRAGMA quick_check at open, a damaged file refused (default) */
	int64_t retain_steps; /* keep per-step statistics of the last N steps per run; 0: all */
	/* steps per domain kept per step before older ones go to buckets (default 5000; 0: never)
	 */
	int64_t history_full_steps;
	/* momenta whose replay state is kept at bucket ends (default 0.3 ... 0.001) */
	double sim_momenta[STORE_SIM_MOMENTA_MAX];
	size_t n_sim_momenta;
	/* delete a run N days after its last accepted batch; 0: never (default) */
	int64_t retain_runs_days;
	/* memory of the open steps' aggregates cached by the writer (default 256 MiB) */
	size_t open_steps_bytes;
	/* free bytes on the database's file system below which the log warns (default 1 GiB; 0:
	 * never) */
	size_t disk_free_warn_bytes;
	/*
	 * Told after each group commit, on the writer thread, of every upload
	 * it stored (not a duplicate, not refused): changed(changed_ctx, run,
	 * domain), names borrowed for the call, once per upload. NULL: nobody
	 * is told. It must return at once (the next group waits for it): note
	 * the pair and let another thread do the work (docs/DESIGN.md, "Drift
	 * gauges"). Default NULL.
	 */
	void (*changed)(void *changed_ctx, const char *run, const char *domain);
	void *changed_ctx;
};

/* The outcome of one submitted batch, reported after the commit. */
struct store_result {
	int status;	     /* 200 accepted or duplicate; 409, 422, 500, 503 (unavailable,
				read_only, database_damaged: not stored) */
	bool duplicate;	     /* same identity and content seen before */
	size_t layers;	     /* layers in the batch */
	struct bn_error err; /* when status is not 200 */
};

/*
 * Called once per submitted job, from the writer thread, after the
 * transaction that holds it committed (or failed). *r is borrowed for the
 * duration of the call. It must not block for long (the next group waits
 * for it) nor call back into the store's writer side.
 */
typedef void (*store_done_fn)(void *ctx, const struct store_result *r);

/* Fill *o with the defaults. */
void store_options_default(struct store_options *o);

/*
 * Open (creating if needed) the database at path, apply pending migrations
 * and start the writer thread. opt may be NULL for the defaults. On success
 * *out is a store the caller owns and releases with store_close().
 * Returns 0 or a negative errno with *err filled in. A database at the
 * latest schema that cannot be written (a full disk) opens READ_ONLY
 * (store_health_get()); one that needs a migration then fails to open.
 */
int store_open(const char *path, const struct store_options *opt, struct store **out,
	       struct bn_error *err);

/*
 * Stop accepting uploads (store_submit then fails with -ESHUTDOWN), let the
 * writer commit everything already queued and report it, and join the
 * writer. Readers keep working until store_close(). Idempotent. Any thread
 * but the writer's (a done callback must not call it).
 */
void store_stop_writer(struct store *s);

/*
 * Stop the writer as store_stop_writer() does, close every connection and
 * free the store. NULL is fine. Every reader must have been given back
 * with store_reader_put() before; s is invalid afterwards.
 */
void store_close(struct store *s);

/*
 * Queue batch b for the writer. On success the store owns b (it frees it)
 * and will call done(ctx, result) exactly once, from the writer thread;
 * ctx is the caller's and must stay valid until then. Returns -EAGAIN when
 * the queue is full, -ESHUTDOWN when the store is closing, -EROFS when it
 * does not accept writes (store_health_error() says why) and -ENOMEM;
 * then the caller still owns b and done is never called. Any thread.
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
	STORE_SNAP_PRIOR = 1 << 4, /* prior and prior_weight */
	STORE_SNAP_TARGET_SE = 1 << 5,
};

struct store_snapshot_layer {
	char *name;
	size_t channels;
	int64_t count; /* elements per channel merged */
	int64_t batches;
	double *mean;	    /* [channels] */
	double *var;	    /* [channels] */
	bool has_noise;	    /* batch_noise is defined (k >= 2, a channel with variance) */
	double batch_noise; /* of the window's batches (the target's, with a prior) */
};

/*
 * A snapshot to create: the resolved parameters and the statistics. Built
 * by query (query_snapshot_prepare) and handed to the writer with
 * store_submit_snapshot(). Everything it points to is owned by it.
 */
struct store_snapshot {
	char run[INGEST_NAME_MAX + 1];
	char label[STORE_LABEL_MAX + 1];
	int64_t step;	/* the window used: its last step */
	int64_t window; /* and its width */
	/* what was asked for (step resolved to the latest when not given), and the
	 * width of the entry at the used window's oldest end (docs/API.md, "History") */
	int64_t requested_step, requested_window, resolution;
	int64_t min_batches; /* asked for with window=auto: its min_batches; 0: a number */
	char domain[INGEST_NAME_MAX + 1];
	char estimator[STORE_ESTIMATOR_MAX];
	char prior[INGEST_NAME_MAX + 1]; /* BN-adapt's prior domain, "" for none */
	double prior_weight;
	double target_se;	  /* the goal of batches_for */
	unsigned explicit_fields; /* STORE_SNAP_* given by the client */
	int64_t created_ms;	  /* filled in when read back */
	size_t n_layers;
	struct store_snapshot_layer *layers;
};

/* Free a snapshot and everything it owns (layers, their names and arrays); NULL is fine. */
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
 * by the caller, who frees it with store_snapshot_free(); with layers when
 * with_layers), -ENOENT, -ENOMEM or -EIO (*out is then NULL).
 */
int store_snapshot_get(struct store_reader *r, int64_t run_id, const char *label, bool with_layers,
		       struct store_snapshot **out);

/*
 * Called with one snapshot, without layers. *snap is borrowed for the
 * duration of the call (it lives on the walker's stack): copy what is to
 * be kept. Return 0 to go on, nonzero to stop the walk.
 */
typedef int (*store_snapshot_fn)(void *ctx, const struct store_snapshot *snap);

/*
 * Call fn for every snapshot of the run, by label, on the caller's thread.
 * Returns 0, fn's nonzero value when it stopped the walk, or -EIO.
 */
int store_snapshots_foreach(struct store_reader *r, int64_t run_id, store_snapshot_fn fn,
			    void *ctx);

/*
 * Queue the deletion of run `run` with everything it holds. run is
 * borrowed (the store copies it). done reports 200 (deleted) or 404 (no
 * such run). Returns as store_submit() does.
 */
int store_submit_delete(struct store *s, const char *run, store_done_fn done, void *ctx);

/*
 * Queue the deletion of snapshot `label` of run `run` (both borrowed; the
 * store copies them): its row and its layers, in the group's transaction.
 * done reports 204 (deleted: the label may be created again), or 404 with
 * path "run" (no such run) or "label" (no such snapshot). Returns as
 * store_submit() does.
 */
int store_submit_snapshot_delete(struct store *s, const char *run, const char *label,
				 store_done_fn done, void *ctx);

/* --- health: can the database be written ------------------------------------- */

/*
 * Whether the store accepts writes (docs/OPERATIONS.md, "A full disk", "A
 * damaged database"). READ_ONLY: a write failed with SQLITE_FULL or
 * SQLITE_IOERR (a full disk, ENOSPC, a disk that refuses writes), at start
 * or since; the writer retries a small write every STORE_PROBE_SECONDS and
 * is WRITABLE again once one commits. DAMAGED: SQLite answered
 * SQLITE_CORRUPT or SQLITE_NOTADB to a write or a read; it stays so until
 * the daemon is restarted on a recovered file. Reads are served in every
 * state. While not writable, store_submit() and its siblings return -EROFS
 * and jobs already queued fail with 503 read_only or database_damaged.
 */
enum store_state { STORE_WRITABLE, STORE_READ_ONLY, STORE_DAMAGED };

#define STORE_PROBE_SECONDS 2

struct store_health {
	enum store_state state;
	char reason[256];	       /* why not writable ("" when writable) */
	int64_t since_ms;	       /* when it stopped being writable (wall clock) */
	bool free_known;	       /* free_bytes could be read (statvfs) */
	unsigned long long free_bytes; /* free to the daemon on the database's file system */
	unsigned long long warn_bytes; /* disk_free_warn_bytes */
};

/* The store's state now, with the free space of its file system. Any thread. */
void store_health_get(struct store *s, struct store_health *h);

/* The name of a state: "writable", "read_only" or "damaged". */
const char *store_state_name(enum store_state st);

/*
 * A 503 for a write refused in the store's present state (code read_only or
 * database_damaged, the reason in the message) in *err; unavailable when
 * the store is writable again. Returns -EIO. Any thread.
 */
int store_health_error(struct store *s, struct bn_error *err);

/* Batches waiting for the writer right now. */
size_t store_queue_depth(struct store *s);

/* Bytes on disk of the database file and its write-ahead log. */
unsigned long long store_disk_bytes(struct store *s);

/* The schema version of the open database (PRAGMA user_version). */
int store_schema_version(struct store *s);

/* --- reading ---------------------------------------------------------- */

/*
 * Borrow a read connection (opened on first use). Returns 0 or a negative
 * errno with *err filled in. *out belongs to the pool: the caller may use
 * it from one thread at a time until it gives it back with
 * store_reader_put(), and must give it back before store_close(). Any
 * thread; readers never wait on the writer.
 */
int store_reader_get(struct store *s, struct store_reader **out, struct bn_error *err);

/*
 * Give r back to the pool of s (the store it came from). A read snapshot
 * still open is rolled back and open blob handles are closed; r must not
 * be used afterwards. NULL is fine. Any thread.
 */
void store_reader_put(struct store *s, struct store_reader *r);

/*
 * Begin one consistent read snapshot over several calls on r: 0 or -EIO.
 * store_read_end() ends it; the thread using r calls both.
 */
int store_read_begin(struct store_reader *r);

/*
 * End the read snapshot store_read_begin() began (no-op when none is
 * open) and close the blob handles store_row_read() keeps open. Rowids
 * seen inside the snapshot may name other rows, or none, after it: the
 * writer goes on. The thread using r.
 */
void store_read_end(struct store_reader *r);

/* Look up a run by name: 0 and *run_id, or -ENOENT. */
int store_run_find(struct store_reader *r, const char *run, int64_t *run_id);

/* Look up a domain of a run: 0 and *domain_id, or -ENOENT. */
int store_domain_find(struct store_reader *r, int64_t run_id, const char *domain,
		      int64_t *domain_id);

/* Did `worker` send a batch in the domain of the run? 0 when it did, or -ENOENT. */
int store_worker_find(struct store_reader *r, int64_t run_id, int64_t domain_id,
		      const char *worker);

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
 * Call fn, on the caller's thread, for every aggregate of the run with
 * step_lo < step <= step_hi in the domain (domain_id < 0: every domain),
 * ordered by step, then layer id, then domain id: a fixed order, so that
 * the same query always merges in the same order and gives the same bits.
 * When layer_ids is not NULL (borrowed) only those n_layer_ids layers are
 * visited. A nonzero return from fn stops the walk and is returned.
 * Returns 0 or a negative errno.
 */
int store_aggs_foreach(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step_lo,
		       int64_t step_hi, const int64_t *layer_ids, size_t n_layer_ids,
		       store_agg_fn fn, void *ctx);

/*
 * Call fn, on the caller's thread, once per stored entry of the run with
 * step_lo < step <= step_hi in the domain (domain_id < 0: every domain),
 * newest first when desc, else oldest first, with the entry's width and
 * its batches: the most any layer merged there (summed over domains), the
 * count window=auto adds up (docs/API.md, "window=auto"). A nonzero return
 * from fn stops the walk and is returned. Returns 0 or a negative errno.
 */
typedef int (*store_step_batches_fn)(void *ctx, int64_t step, int64_t width, int64_t batches);
int store_step_batches(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step_lo,
		       int64_t step_hi, bool desc, store_step_batches_fn fn, void *ctx);

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
	int64_t bytes; /* of the run's stored arrays (approximate storage) */
};
/*
 * Called with one run. *info and info->name are borrowed for the duration
 * of the call: copy what is to be kept. Return 0 to go on, nonzero to stop
 * the walk (the value is returned).
 */
typedef int (*store_run_fn)(void *ctx, const struct store_run_info *info);

/* Call fn for every run, by name, with only name and step_max (the highest
 * step with statistics; batches is 1 when there is one, else 0) filled:
 * cheap enough for every metrics scrape. */
int store_runs_last_step(struct store_reader *r, store_run_fn fn, void *ctx);

/* The longest prefix store_runs_page() takes, in bytes: a run name's. */
#define STORE_RUNS_BOUND_MAX INGEST_NAME_MAX

/*
 * Call fn, by name, for at most limit runs (limit < 0: no limit) whose
 * names start with prefix, byte for byte (NULL or "": every run; no
 * character is a wildcard), and come after `after` in byte order (NULL or
 * "": from the first). prefix and after are borrowed for the call; a
 * prefix longer than STORE_RUNS_BOUND_MAX bytes is refused with -EINVAL.
 * Reads a range of the index on the names: the work is the page's, not
 * the number of runs. Returns 0, fn's nonzero value when it stopped the
 * walk, or -EIO.
 */
int store_runs_page(struct store_reader *r, const char *prefix, const char *after, int64_t limit,
		    store_run_fn fn, void *ctx);

/* Describe one run: 0, or -ENOENT. */
int store_run_describe(struct store_reader *r, const char *run, store_run_fn fn, void *ctx);

/*
 * A named item of a run with its counts: a layer, a domain or a worker;
 * which of layer, domain and worker holds them depends on the walk that
 * hands the item out.
 */
struct store_item {
	int64_t id;	  /* 0 for a worker */
	const char *name; /* the layer's, domain's or worker's name */
	union {
		struct {
			int64_t channels;
		} layer;
		struct {
			int64_t batches;  /* accepted batch identities */
			int64_t steps;	  /* distinct stored entries (a bucket counts once) */
			int64_t layers;	  /* distinct layers with statistics */
			int64_t elements; /* elements per channel, summed over layers and steps */
			bool bucketed;	  /* some steps are merged into buckets */
			int64_t bucketed_through; /* then: every step <= it is */
			bool drift;		  /* the drift metrics have a mark */
			int64_t drift_through;	  /* then: every entry <= it has its row */
		} domain;
		struct {
			int64_t batches;
			int64_t last_step;
		} worker;
	};
};

/*
 * Called with one item. *item and item->name are borrowed for the duration
 * of the call (name points into SQLite's row): copy what is to be kept.
 * Return 0 to go on, nonzero to stop the walk.
 */
typedef int (*store_item_fn)(void *ctx, const struct store_item *item);

/*
 * Call fn, on the caller's thread, for every layer (item->layer), domain
 * (item->domain) or worker (item->worker) of the run, by name. Returns 0,
 * fn's nonzero value when it stopped the walk, or -EIO.
 */
int store_layers_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx);
int store_domains_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx);
int store_workers_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx);

/* --- one layer across steps (series, simulated EMA) --------------------------- */

/*
 * A stored row seen without its arrays: a per-step aggregate or a worker
 * EMA. Read its values with store_row_read().
 */
struct store_row {
	int64_t rowid;
	int64_t step;
	int64_t domain_id;
	int64_t layer_id;   /* aggregates only */
	int64_t n;	    /* aggregates: elements per channel merged; EMAs: 0 */
	int64_t batches;    /* aggregates only: batches merged (stats_agg's k) */
	int64_t nbs_min;    /* aggregates only */
	int64_t nbs_max;    /* aggregates only */
	int64_t width;	    /* steps covered, (step - width, step]: 1, or a bucket's width */
	int64_t seq;	    /* EMA rows only: the seq of the batch that sent it */
	const char *worker; /* EMA rows only */
	/* store_run_aggs only: the data blob itself (data_bytes), else NULL */
	const void *data;
	size_t data_bytes;
};

/*
 * Called with one row. *row and row->worker are borrowed for the duration
 * of the call; row->rowid stays readable with store_row_read() until the
 * read snapshot ends. Return 0 to go on, nonzero to stop the walk (the
 * value is returned).
 */
typedef int (*store_row_fn)(void *ctx, const struct store_row *row);

/*
 * Per-step aggregates of one layer with step_lo < step <= step_hi in the
 * domain (domain_id < 0: all), ordered by step then domain id.
 */
int store_layer_aggs(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t layer_id,
		     int64_t step_lo, int64_t step_hi, store_row_fn fn, void *ctx);

/*
 * Per-step aggregates of every layer of the run with step_lo < step <=
 * step_hi in the domain (domain_id < 0: all), ordered by step, then layer
 * id, then domain id: a whole range read in the order the rows were
 * written, each page once.
 */
int store_run_aggs(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step_lo,
		   int64_t step_hi, store_row_fn fn, void *ctx);

/*
 * Worker EMA rows of one layer and domain with step_lo < step <= step_hi,
 * by step; worker NULL: every worker (then by step, worker).
 */
int store_layer_emas(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t layer_id,
		     const char *worker, int64_t step_lo, int64_t step_hi, store_row_fn fn,
		     void *ctx);

enum store_blob { STORE_BLOB_AGG, STORE_BLOB_EMA };

/*
 * Read n values starting at index `first` of the data blob of row rowid,
 * a row of a layer of `channels` channels, as doubles into out, without
 * reading the rest of the blob (an aggregate: array a of STATS_AGG_ARRAYS
 * lies at a*channels; an EMA: mean at 0, var at channels — stored as
 * floats when every value was one, read back exactly). Returns 0 or -EIO.
 */
int store_row_read(struct store_reader *r, enum store_blob which, int64_t rowid, size_t channels,
		   size_t first, size_t n, double *out);

/*
 * store_row_read() of an aggregate row as a walk handed it: from the row's
 * own data when it carries it (store_run_aggs), else through the blob.
 * Returns 0 or -EIO.
 */
int store_row_values(struct store_reader *r, const struct store_row *row, size_t channels,
		     size_t first, size_t n, double *out);

/*
 * The first worker by name that reported an EMA at `step` in the domain:
 * 0 and its name copied to worker[size], or -ENOENT.
 */
int store_ema_first_worker(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step,
			   char *worker, size_t size);

/*
 * The newest step of the domain at which some worker reported an EMA:
 * 0 and *step, -ENOENT when none did, or -EIO.
 */
int store_ema_latest_step(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t *step);

/*
 * For every step lo <= step <= hi of the domain with a worker EMA, the
 * first worker by name that reported one: fn(ctx, step, worker) in step
 * order (worker borrowed for the call); a nonzero return stops the walk
 * and is returned. 0 or -EIO.
 */
int store_ema_first_workers(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t lo,
			    int64_t hi, int (*fn)(void *ctx, int64_t step, const char *worker),
			    void *ctx);

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

/*
 * The replay state of the simulated EMA with momentum `momentum` kept at a
 * bucket end of one layer and domain (domain_id < 0: none is kept): the one
 * at `step` exactly, or with at_or_before the latest at or before it.
 * Channels [first, first + width) of its mean and var go to mean/var
 * (width doubles each, the caller's); *found_step and *applied (steps with
 * data replayed) say where it was taken. Returns 0, -ENOENT or -EIO.
 */
int store_sim_state_read(struct store_reader *r, int64_t run_id, int64_t domain_id,
			 int64_t layer_id, double momentum, int64_t step, bool at_or_before,
			 size_t channels, size_t first, size_t width, double *mean, double *var,
			 int64_t *found_step, int64_t *applied);

/*
 * The width in steps of the stored entry holding `step` in the domain
 * (domain_id < 0: the widest over the run's domains): 1 inside the per-step
 * horizon, a bucket's width beyond it. Returns 0 or -EIO.
 */
int store_resolution(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step,
		     int64_t *width);

/*
 * A row of the per-step drift metrics (docs/DESIGN.md, "Drift metrics"):
 * at `step`, the first worker by name with an EMA there (NULL: none) and,
 * per layer with a value, its id and metric[3 * i ..]: mean_err, var_err
 * and kl of that worker's EMA against the entry's own statistics. Borrowed
 * for the call.
 */
struct store_drift_row {
	int64_t step, width; /* the entry */
	const char *worker;
	size_t n;
	const int64_t *layer_id;
	const double *metric;
};

typedef int (*store_drift_fn)(void *ctx, const struct store_drift_row *row);

/*
 * The drift metrics rows of the domain with lo <= step <= hi, ascending:
 * every entry below the domain's latest step has one once the writer has
 * caught up; an entry without one is computed by the caller. fn's nonzero
 * return stops the walk and is returned. 0 or a negative errno.
 */
int store_drift_steps(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t lo,
		      int64_t hi, store_drift_fn fn, void *ctx);

/*
 * The domain's drift metrics mark: 0 with *through (every entry at or
 * below it has its row, and no other entry at or below it exists), or
 * -ENOENT before the first row; -EIO.
 */
int store_drift_through(struct store_reader *r, int64_t run_id, int64_t domain_id,
			int64_t *through);

/* The entries lo <= step <= hi with a drift metrics row, as store_entries_foreach() gives them. */
int store_drift_entries(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t lo,
			int64_t hi, int (*fn)(void *ctx, int64_t step, int64_t width), void *ctx);

/*
 * The distinct steps with data of the run with lo <= step <= hi in the
 * domain (domain_id < 0: all), ascending, each with the widest entry
 * stored there (1, or a bucket's width): fn(ctx, step, width) per step; a
 * nonzero return stops the walk and is returned. 0 or -EIO.
 */
int store_entries_foreach(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t lo,
			  int64_t hi, int (*fn)(void *ctx, int64_t step, int64_t width), void *ctx);

/* Look up one layer: 0 with its id and channel count, or -ENOENT. */
int store_layer_find(struct store_reader *r, int64_t run_id, const char *layer, int64_t *layer_id,
		     size_t *channels);

/* --- the run file: a run's rows for export and import (docs/API.md, "Moving a run") --- */

/*
 * The kinds of a column of the run file. An ID is a row's own id in the
 * file (it only links rows: the importing store gives new ones); DOMAIN,
 * LAYER and SNAPSHOT name such an id of the domains, layers or snapshots
 * table.
 */
enum store_rf_type {
	STORE_RF_ID,
	STORE_RF_DOMAIN,
	STORE_RF_LAYER,
	STORE_RF_SNAPSHOT,
	STORE_RF_INT,
	STORE_RF_REAL,
	STORE_RF_TEXT,
	STORE_RF_BLOB,
};

struct store_rf_column {
	const char *name;
	enum store_rf_type type;
	bool nullable;
};

/* One table of the run file: its name and columns, in the file's order. */
struct store_rf_table {
	const char *name;
	const struct store_rf_column *cols;
	size_t n_cols;
};

/* The tables of the run file (format version STORE_RF_VERSION), in import order. */
#define STORE_RF_VERSION 1
enum {
	STORE_RF_T_RUNS, /* exactly one row: the run's own */
	STORE_RF_T_DOMAINS,
	STORE_RF_T_LAYERS,
	STORE_RF_T_BATCHES,
	STORE_RF_T_AGGS,
	STORE_RF_T_EMAS,
	STORE_RF_T_HISTORY,
	STORE_RF_T_SIMS,
	STORE_RF_T_SNAPSHOTS,
	STORE_RF_T_SNAPSHOT_LAYERS,
	STORE_RF_TABLES
};
extern const struct store_rf_table store_rf_tables[STORE_RF_TABLES];

/* One value of a row: s (len bytes, not NUL-terminated) for TEXT, b for BLOB. */
struct store_rf_value {
	bool null;
	int64_t i;
	double d;
	const void *p; /* TEXT or BLOB bytes */
	size_t len;
};

/*
 * Called with each row of each table of a run, table by table in
 * store_rf_tables' order, rows in the order they were written; vals
 * (n_cols values) are borrowed for the call. Nonzero stops the walk.
 */
typedef int (*store_rf_row_fn)(void *ctx, size_t table, const struct store_rf_value *vals);

/* Walk every row of the run's file inside one read snapshot: 0, fn's value, or -EIO. */
int store_runfile_walk(struct store_reader *r, int64_t run_id, store_rf_row_fn fn, void *ctx);

/*
 * A run file decoded for import: per table, n_rows rows of n_cols values
 * each, in rows[table]; every TEXT and BLOB value's bytes are the file's
 * own (malloc'd), freed by store_runfile_free().
 */
struct store_runfile {
	size_t n_rows[STORE_RF_TABLES];
	struct store_rf_value *rows[STORE_RF_TABLES];
};

void store_runfile_free(struct store_runfile *rf);

/*
 * Queue the import of rf as run `run` for the writer: one job, stored in
 * one savepoint or not at all (409 when the run exists, 422 when the
 * file's rows do not hold together). As store_submit(): on success the
 * store owns rf; on failure (-EAGAIN, -ESHUTDOWN, -ENOMEM) the caller does.
 */
int store_submit_import(struct store *s, const char *run, struct store_runfile *rf,
			store_done_fn done, void *ctx);

#endif
