/*
 * store_private: what the files of the store share and nothing outside it
 * may see: the store's state, the writer's statements, the jobs it is
 * handed, and the helpers each sub-job offers the others.
 *
 * Threads: everything under "the writer" below belongs to the writer
 * thread alone (store_writer.c and what it calls: store_batch.c,
 * store_snapshot.c's apply, store_delete.c, store_import.c, store_intern.c,
 * store_aggcache.c, store_retention.c, store_history.c, store_bytes.c);
 * the queue, the checkpointer and the reader pool each have their own
 * mutex.
 */
#ifndef BNSTAT_STORE_PRIVATE_H
#define BNSTAT_STORE_PRIVATE_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <sqlite3.h>

#include "store.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the stored blobs are little-endian doubles; big-endian hosts need byte swapping"
#endif

/*
 * One job for the writer: a batch to merge, a snapshot to create, a run to
 * delete, (delete_run with delete_label) one snapshot of a run to delete,
 * or (import with import_run) a run file to store as a new run.
 */
struct store_job {
	struct store_job *next;
	struct ingest_batch *batch;
	struct store_snapshot *snap;
	char *delete_run;
	char *delete_label;
	struct store_runfile *import;
	char *import_run;
	store_done_fn done;
	void *ctx;
	struct store_result res;
};

/* Statements the writer prepares once (their SQL: store_schema.c). */
enum store_wstmt {
	W_RUN_GET,
	W_RUN_INS,
	W_DOM_GET,
	W_DOM_INS,
	W_BATCH_GET,
	W_BATCH_INS,
	W_LAYER_GET,
	W_LAYER_INS,
	W_AGG_GET,
	W_AGG_PUT,
	W_EMA_PUT,
	W_SNAP_GET,
	W_SNAP_INS,
	W_SNAP_LAYER_INS,
	W_SNAP_DEL,
	W_RUN_MAX_STEP,
	W_LATE_INS,
	W_RUN_ID_NEW,
	W_RUN_ID_DROP,
	W_RUN_DEL,
	W_RUN_TOUCH,
	W_RUN_BYTES,
	W_RUN_BYTES_RECOUNT,
	W_SUM_EMAS_RANGE,
	W_SUM_SIMS_RANGE,
	W_SUM_SIMS_LATE,
	W_SUM_SIMS_INNER,
	W_SUM_EMAS_INNER,
	W_RUN_EXPIRED,
	W_RET_RUNS,
	W_RET_AGGS,
	W_RET_BATCHES,
	W_RET_EMAS,
	W_RET_LATE,
	W_RET_LATE_GC,
	W_RET_SIMS,
	W_HIST_GET,
	W_HIST_PUT,
	W_HIST_DONE1,
	W_HIST_DOMAINS,
	W_HIST_MAX_STEP,
	W_HIST_NEXT_STEP,
	W_HIST_ROWS,
	W_HIST_AGGS_DEL,
	W_HIST_AGG_INS,
	W_HIST_EMAS_DEL,
	W_HIST_EMAS_MOVE,
	W_HIST_PREV_STEP,
	W_HIST_SIM_GET,
	W_HIST_SIM_CLEAR,
	W_HIST_SIM_LATE,
	W_HIST_CKPT_LATE,
	W_HIST_SIM_PUT,
	W_HIST_SIM_DEL,
	W_HIST_SIM_MOVE,
	W_RET_DRIFT,
	W_DRIFT_FIRST,
	W_DRIFT_EMAS,
	W_DRIFT_PUT,
	W_DRIFT_DEL,
	W_DRIFT_DEL_RANGE,
	W_DRIFT_BACK,
	W_DRIFT_MARK,
	W_DRIFT_HAS,
	W_COUNT
};

/* A read connection of the pool, with what its calls reuse. */
struct store_reader {
	struct store_reader *next;
	sqlite3 *db;
	sqlite3_blob *agg_blob; /* open handles for store_row_read() */
	sqlite3_blob *ema_blob;
	double *scratch; /* STATS_AGG_ARRAYS * cap doubles */
	size_t scratch_cap;
};

#define STORE_AGGCACHE_BUCKETS 1024

/* Steps between the replay checkpoints kept in the per-step part (store_history.c). */
#define STORE_HISTORY_CKPT_EVERY 64

/* Bucket tiers: widths 10, 100, ..., 10^STORE_HISTORY_TIERS steps. */
#define STORE_HISTORY_TIERS 6

/* The history table's row of the drift metrics' mark (store_drift.c). */
#define STORE_DRIFT_TIER (-1)

/* A change to a run's bytes not written yet (store_bytes.c). */
struct store_bytes_delta {
	int64_t run_id, delta;
	bool upload; /* the run accepted a batch: its `updated` becomes now */
};

/* A (run, domain) that may have buckets to form (store_history.c). */
struct store_history_pair {
	int64_t run_id, domain_id;
	/* the lowest step a late upload reached since the last pass (INT64_MAX: none) */
	int64_t late_floor;
	/* checkpoints held back by late uploads: look again then (monotonic ms; 0: now) */
	int64_t not_before;
};

/* The writer's aggregate cache (store_aggcache.c). */
struct store_aggcache {
	struct store_aggcache_entry *buckets[STORE_AGGCACHE_BUCKETS];
	size_t bytes;	/* of the entries' arrays */
	uint64_t group; /* groups ended so far: the age of an entry */
};

struct store {
	char *path;
	struct store_options opt;
	int schema_version;

	/* the writer */
	sqlite3 *wdb;
	sqlite3_stmt *wstmt[W_COUNT];
	double *wscratch; /* STATS_AGG_ARRAYS * wscratch_cap doubles */
	size_t wscratch_cap;
	int64_t *wlayer_ids; /* per batch: the resolved layer ids */
	size_t wlayer_cap;
	struct store_aggcache aggcache;
	struct {
		struct timespec last;
		bool more;
		int64_t cursor; /* the last run id a pass looked at */
	} retention;
	struct {
		struct store_history_pair *pending;
		size_t n, cap;
	} history;
	struct {
		struct store_bytes_delta *runs;
		size_t n, cap;
	} bytes;
	pthread_t writer;
	bool writer_started;

	/* the writer's queue, guarded by mu */
	struct {
		pthread_mutex_t mu;
		pthread_cond_t cv;
		struct store_job *head, *tail;
		size_t depth;
		bool closing;
	} queue;

	/* the checkpointer: its own connection and thread, woken by the WAL hook */
	struct {
		sqlite3 *db;
		pthread_t thread;
		bool started;
		pthread_mutex_t mu;
		pthread_cond_t cv;
		pthread_cond_t idle; /* signalled when a checkpoint ends */
		bool wanted, stop;
		bool running;  /* one checkpoint at a time: a second would get BUSY */
		int wal_pages; /* WAL size after the writer's last commit */
		int failed;    /* checkpoints failed in a row (one runs at a time: see running) */
	} ckpt;

	/* the reader pool, guarded by mu */
	struct {
		pthread_mutex_t mu;
		struct store_reader *idle;
	} readers;

	/* can the database be written (store_health.c); state, reason, since_ms and
	 * next_probe guarded by mu */
	struct {
		pthread_mutex_t mu;
		enum store_state state;
		char reason[256];
		int64_t since_ms;
		int64_t next_probe; /* when to try a write again (monotonic ms) */
		int64_t next_space; /* the writer's: when to look at free space again */
		bool low;	    /* the writer's: free space was below the warning */
	} health;
};

static inline int64_t store_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Grow a scratch buffer to hold an aggregate of c channels: 0 or -ENOMEM. */
static inline int store_scratch_reserve(double **buf, size_t *cap, size_t c)
{
	double *p;

	if (c <= *cap)
		return 0;
	p = realloc(*buf, STATS_AGG_ARRAYS * c * sizeof(double));
	if (p == NULL)
		return -ENOMEM;
	*buf = p;
	*cap = c;
	return 0;
}

/* --- store_sql.c: connections and running statements ----------------------- */

/* Fill *err with a 500 naming `what` and db's last error; returns -EIO. */
int store_sql_error(struct bn_error *err, sqlite3 *db, const char *what);

/*
 * Open a connection to path (created when writer). Returns 0 with the
 * caller's connection in *out, or -EIO with *err filled in.
 */
int store_sql_open(const char *path, bool writer, sqlite3 **out, struct bn_error *err);

/* Run SQL text (one or more statements): 0, or -EIO with *err filled in. */
int store_sql_exec(sqlite3 *db, const char *sql, struct bn_error *err);

/*
 * Called with st positioned on a row; its column values are borrowed until
 * the function returns. Returns 0 for the next row, or nonzero to stop.
 */
typedef int (*store_sql_row_fn)(void *ctx, sqlite3_stmt *st);

/*
 * Step the bound statement st through its rows, handing each to fn (NULL:
 * none is expected; a row then stops the loop with 1). Returns fn's
 * nonzero value when it stopped the loop, 0 after the last row, or -EIO
 * when a step failed. st is reset either way, bindings kept; the caller
 * still owns it (a persistent statement is reused, a one-shot one
 * finalized by the caller).
 */
int store_sql_rows(sqlite3_stmt *st, store_sql_row_fn fn, void *ctx);

/* Step st once, expecting no row (INSERT, UPDATE, DELETE): 0 or -EIO. st is reset. */
int store_sql_run(sqlite3_stmt *st);

/*
 * Prepare sql on db as a one-shot statement: 0 and the caller's statement
 * in *st (finalize it), or -EIO.
 */
int store_sql_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st);

/*
 * A one-row query that yields an int64 in column 0, with ?1 bound to text
 * when it is not NULL, else ?1 and ?2 to a and b. Returns 0 and *out, -ENOENT
 * when there is no row or the value is NULL, or -EIO.
 */
int store_sql_int64(sqlite3 *db, const char *sql, int64_t a, int64_t b, const char *text,
		    int64_t *out);

/* Bind ?1..?n of st to a[0..n). */
void store_sql_bind_ints(sqlite3_stmt *st, const int64_t *a, int n);

/*
 * A one-shot query: prepare sql on db, bind ?1..?n to args[0..n), hand its
 * rows to fn (as store_sql_rows()), finalize. Returns what
 * store_sql_rows() returns, or -EIO when it does not prepare.
 */
int store_sql_select(sqlite3 *db, const char *sql, const int64_t *args, int n,
		     store_sql_row_fn fn, void *ctx);

/*
 * The first SQLITE_CORRUPT or SQLITE_NOTADB (else SQLITE_FULL, else
 * SQLITE_IOERR) a store_sql_* call on this thread met since the last take,
 * as an extended result code; 0 when none. Taking it clears it. The
 * functions above note what they meet; code that calls SQLite directly
 * notes with store_sql_fault_note(rc).
 */
int store_sql_fault_take(void);
void store_sql_fault_note(int rc);

/* --- store_health.c: can the database be written ------------------------------- */

/* Initialise s->health (writable); store_health_destroy() frees it. */
void store_health_init(struct store *s);
void store_health_destroy(struct store *s);

/* Is the store writable now? Any thread. */
bool store_health_writable(struct store *s);

/*
 * On the thread that wrote (the writer, or store_open): a write failed or
 * may have; take this thread's SQLite fault and, for a damaged file or a
 * full disk, leave the writable state (logged once). during names the work
 * ("commit", "retention", "start"). Returns the state after.
 */
enum store_state store_health_after_write(struct store *s, const char *during);

/* store_reader_put: a read that met SQLITE_CORRUPT marks the store damaged. */
void store_health_after_read(struct store *s);

/* store_open: one small write, so that a full disk is known before the first upload. */
void store_health_probe_start(struct store *s);

/*
 * Writer thread, while idle: a write probe when READ_ONLY and due, a look
 * at free space when due. Returns the milliseconds until either is due
 * again (at most 10 s).
 */
int64_t store_health_idle(struct store *s);

/* --- store_schema.c: migrations and the writer's statements ------------------- */

/* Apply pending migrations on the writer's connection; sets s->schema_version. */
int store_schema_migrate(struct store *s, struct bn_error *err);

/* Prepare s->wstmt[] on the writer's connection: 0, or -EIO with *err filled in. */
int store_schema_prepare(struct store *s, struct bn_error *err);

/* Finalize s->wstmt[] (those prepared). */
void store_schema_finalize(struct store *s);

/* --- store_intern.c: runs, domains and layers by name (writer thread) ---------- */

/* Find or create run `name` (a fresh id no deleted run had): 0, or -EIO. */
int store_intern_run(struct store *s, const char *name, int64_t *run_id);

/* Find or create domain `name` of the run: 0, or -EIO. */
int store_intern_domain(struct store *s, int64_t run_id, const char *name, int64_t *domain_id);

/*
 * Find the layer, or (when create) create it with the batch's channel
 * count; without create a missing layer gives 0 with *layer_id = 0 (ids
 * are >= 1). A layer whose stored channel count differs refuses the batch
 * (422 in *err).
 */
int store_intern_layer(struct store *s, int64_t run_id, const struct ingest_layer *l, bool create,
		       int64_t *layer_id, struct bn_error *err);

/* An existing run, looked up by the writer: 0, or 404 / 500 in *err. */
int store_intern_find_run(struct store *s, const char *run, int64_t *run_id, struct bn_error *err);

/* --- store_aggcache.c: the writer's aggregate cache (writer thread) ----------- */

/* Merge layer l of a batch into its cached (run, domain, step, layer) aggregate. */
int store_aggcache_merge(struct store *s, int64_t run_id, int64_t domain_id, int64_t step,
			 int64_t layer_id, enum stats_var_kind kind, const struct ingest_layer *l,
			 struct bn_error *err);

/* Write every dirty cached aggregate inside the group's transaction; *rows written. */
int store_aggcache_flush(struct store *s, size_t *rows);

/*
 * Keep the cache within s->opt.open_steps_bytes: past it, write every dirty
 * entry now (inside the group's transaction, between jobs: never inside a
 * job's savepoint) and drop them all. 0, or -EIO.
 */
int store_aggcache_bound(struct store *s);

/*
 * After a group: drop the entries idle for more than one group, or every
 * entry when the commit failed (they may hold merges that never reached
 * the disk), and age the rest.
 */
void store_aggcache_end_group(struct store_aggcache *c, bool failed);

/* Forget the cached aggregates of a run (it is being deleted). */
void store_aggcache_drop_run(struct store_aggcache *c, int64_t run_id);

/* Free every entry. */
void store_aggcache_clear(struct store_aggcache *c);

/* --- applying one job inside the group's transaction (writer thread) --------- */

/*
 * Each returns 0 when the job is done or recognised as a retry (j->res
 * says which), or a negative errno with j->res.err filled in; the caller
 * then rolls the job's savepoint back.
 */
int store_batch_apply(struct store *s, struct store_job *j);	       /* store_batch.c */
int store_snapshot_apply(struct store *s, struct store_job *j);	       /* store_snapshot.c */
int store_snapshot_delete_apply(struct store *s, struct store_job *j); /* store_snapshot.c */
int store_delete_apply(struct store *s, struct store_job *j);	       /* store_delete.c */
int store_import_apply(struct store *s, struct store_job *j);	       /* store_import.c */

/* The run file's INSERT per table (store_runfile.c; ?1 the run id, ?2.. the columns). */
extern const char *const store_rf_insert_sql[STORE_RF_TABLES];

/* --- store_retention.c (writer thread) ----------------------------------------- */

/* Is a retention pass due (retention on, and its interval passed)? */
bool store_retention_due(struct store *s);

/* Run one bounded retention pass in its own transaction. */
void store_retention_run(struct store *s);

/* --- store_bytes.c: each run's bytes (writer thread) ----------------------------- */

/* A row of run_id with delta bytes of blob was inserted (> 0) or deleted (< 0). */
void store_bytes_add(struct store *s, int64_t run_id, int64_t delta);

/* run_id accepted a batch in this transaction (runs.updated, for retain-runs-days). */
void store_bytes_upload(struct store *s, int64_t run_id);

/* Write the changes inside the transaction, before its COMMIT: 0 or -EIO. */
int store_bytes_flush(struct store *s);

/* Forget the changes (their transaction rolled back). */
void store_bytes_drop(struct store *s);

/* Run st (?1.. bound to args[0..n)), a sum of blob lengths: 0 and *bytes, or -EIO. */
int store_bytes_of(sqlite3_stmt *st, const int64_t *args, int n, int64_t *bytes);

/* Count a run's bytes again from its rows (after retention dropped some): 0 or -EIO. */
int store_bytes_recount(struct store *s, int64_t run_id);

/* --- store_history.c: bucketing old steps (writer thread) ----------------------- */

/*
 * (run, domain) received an upload, at step late_step when it landed below
 * the run's newest step (else INT64_MAX): look at its history after the
 * group.
 */
void store_history_touch(struct store *s, int64_t run_id, int64_t domain_id, int64_t late_step);

/* Look at every (run, domain) once (on start: a pass may have been cut short). */
void store_history_touch_all(struct store *s);

/* Are buckets possibly due? */
bool store_history_due(const struct store *s);

/* Form the buckets that are due, at most a bounded number, in one transaction. */
void store_history_run(struct store *s);

/*
 * The last step of the domain merged into a bucket (every step <= it is):
 * 0 with *have false when none, or -EIO.
 */
int store_history_bucketed_through(struct store *s, int64_t run_id, int64_t domain_id, bool *have,
				   int64_t *step);

/* --- store_drift.c: the per-step drift metrics (writer thread) ------------------- */

/* Compute and write the drift metrics row of one entry: 0, -ENOMEM or -EIO. */
int store_drift_entry(struct store *s, int64_t run_id, int64_t domain_id, int64_t step);

/* An accepted upload at `step`: drop its row, move the mark back before it. 0 or -EIO. */
int store_drift_forget(struct store *s, int64_t run_id, int64_t domain_id, int64_t step);

/*
 * A bucket (lo, end] replaced the domain's entries there: drop their rows
 * and, when the mark is past the bucket, compute its own. 0 or a negative errno.
 */
int store_drift_bucket(struct store *s, int64_t run_id, int64_t domain_id, int64_t lo,
		       int64_t end);

/*
 * Compute the rows of the entries after the mark and below `latest`, at
 * most *budget of them (each computed one takes 1), none at or above
 * late_floor. Returns 1 when more may be due, 2 when held back by late
 * uploads, 0 when none is left, or a negative errno. With dry, compute
 * none: 1 when one is due.
 */
int store_drift_pass(struct store *s, int64_t run_id, int64_t domain_id, int64_t latest,
		     int64_t late_floor, int *budget, bool dry);

/* --- store_checkpoint.c ------------------------------------------------------ */

/*
 * Turn the writer's automatic checkpoints off and start the checkpointer
 * thread on a connection of its own: 0, or -EIO with *err filled in.
 */
int store_checkpoint_start(struct store *s, struct bn_error *err);

/* Before a group: bound the WAL (see store_checkpoint.c). Writer thread only. */
void store_checkpoint_bound_wal(struct store *s);

/* Stop and join the checkpointer thread and close its connection. */
void store_checkpoint_stop(struct store *s);

/* --- store_writer.c ------------------------------------------------------------ */

/* Start the writer thread: 0, or -EIO with *err filled in. */
int store_writer_start(struct store *s, struct bn_error *err);

/* --- store_read.c ---------------------------------------------------------------- */

/* Close every idle read connection (store_close, after all readers came back). */
void store_readers_close(struct store *s);

#endif
