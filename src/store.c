/*
 * store: SQLite persistence, the single writer and the reader pool.
 *
 * The writer thread is the only code that writes. It drains the queue of
 * decoded batches into one transaction per round (group commit): each batch
 * gets a savepoint, so that a batch refused for a reason only the database
 * knows (a layer's channel count, a conflicting resend) rolls back alone
 * while the others commit. Outcomes are reported after COMMIT returns, which
 * is what lets the HTTP layer promise that a 2xx is durable.
 */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sqlite3.h>

#include "log.h"
#include "metrics.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the stored blobs are little-endian doubles; big-endian hosts need byte swapping"
#endif

/* One job for the writer: a batch to merge or a snapshot to create. */
#define WCACHE_BUCKETS 1024 /* hash buckets of the writer's aggregate cache */

struct queued {
	struct queued *next;
	struct ingest_batch *batch;
	struct store_snapshot *snap;
	char *delete_run; /* or a run to delete */
	store_done_fn done;
	void *ctx;
	struct store_result res;
};

/* Statements the writer prepares once. */
enum wstmt {
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
	W_RUN_MAX_STEP,
	W_LATE_INS,
	W_RUN_ID_NEW,
	W_RUN_ID_DROP,
	W_RUN_DEL,
	W_RET_RUNS,
	W_RET_AGGS,
	W_RET_BATCHES,
	W_RET_EMAS,
	W_RET_LATE,
	W_RET_LATE_GC,
	W_COUNT
};

static const char *const wstmt_sql[W_COUNT] = {
	[W_RUN_GET] = "SELECT id FROM runs WHERE name = ?1",
	[W_RUN_INS] = "INSERT INTO runs (id, name, created) VALUES (?3, ?1, ?2)",
	[W_DOM_GET] = "SELECT id FROM domains WHERE run_id = ?1 AND name = ?2",
	[W_DOM_INS] = "INSERT INTO domains (run_id, name) VALUES (?1, ?2)",
	[W_BATCH_GET] = "SELECT hash FROM batches WHERE run_id = ?1 AND domain_id = ?2"
			" AND worker = ?3 AND step = ?4 AND seq = ?5",
	[W_BATCH_INS] = "INSERT INTO batches (run_id, domain_id, worker, step, seq,"
			" hash, layers, received) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
	[W_LAYER_GET] = "SELECT id, channels FROM layers WHERE run_id = ?1 AND name = ?2",
	[W_LAYER_INS] = "INSERT INTO layers (run_id, name, channels) VALUES (?1, ?2, ?3)",
	[W_AGG_GET] = "SELECT n, k, nbs_min, nbs_max, data FROM aggs WHERE run_id = ?1"
		      " AND domain_id = ?2 AND step = ?3 AND layer_id = ?4",
	[W_AGG_PUT] = "INSERT INTO aggs (run_id, domain_id, step, layer_id, n, k,"
		      " nbs_min, nbs_max, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
		      " ON CONFLICT (run_id, domain_id, step, layer_id) DO UPDATE SET"
		      " n = excluded.n, k = excluded.k, nbs_min = excluded.nbs_min,"
		      " nbs_max = excluded.nbs_max, data = excluded.data",
	[W_EMA_PUT] = "INSERT INTO emas (run_id, domain_id, layer_id, worker, step, seq, data)"
		      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
		      " ON CONFLICT (run_id, domain_id, layer_id, worker, step) DO UPDATE SET"
		      " seq = excluded.seq, data = excluded.data WHERE excluded.seq > emas.seq",
	[W_SNAP_GET] = "SELECT step, win, domain, estimator FROM snapshots"
		       " WHERE run_id = ?1 AND label = ?2",
	[W_SNAP_INS] =
		"INSERT INTO snapshots (run_id, label, step, win, domain, estimator, created)"
		" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
	[W_SNAP_LAYER_INS] = "INSERT INTO snapshot_layers (snapshot_id, name, channels, count,"
			     " batches, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
	[W_RUN_MAX_STEP] = "SELECT max(step) FROM aggs WHERE run_id = ?1",
	[W_LATE_INS] = "INSERT INTO late_writes (run_id, domain_id, step) VALUES (?1, ?2, ?3)",
	[W_RUN_ID_NEW] = "INSERT INTO run_ids DEFAULT VALUES",
	[W_RUN_ID_DROP] = "DELETE FROM run_ids",
	[W_RUN_DEL] = "DELETE FROM runs WHERE id = ?1",
	[W_RET_RUNS] = "SELECT id, (SELECT max(step) FROM aggs a WHERE a.run_id = r.id) FROM runs r"
		       " WHERE id > ?1 ORDER BY id LIMIT 64",
	[W_RET_AGGS] = "DELETE FROM aggs WHERE id IN (SELECT id FROM aggs WHERE run_id = ?1"
		       " AND step <= ?2 LIMIT ?3)",
	[W_RET_BATCHES] = "DELETE FROM batches WHERE run_id = ?1 AND step <= ?2",
	/* series shows only steps with statistics: their EMAs go with them */
	[W_RET_EMAS] = "DELETE FROM emas WHERE id IN (SELECT id FROM emas WHERE run_id = ?1"
		       " AND step <= ?2 LIMIT ?3)",
	/* history changed everywhere: every replay checkpoint of the run is stale */
	[W_RET_LATE] = "INSERT INTO late_writes (run_id, domain_id, step) VALUES (?1, -1, -1)",
	[W_RET_LATE_GC] = "DELETE FROM late_writes WHERE run_id = ?1 AND id < ?2",
};

struct store_reader {
	struct store_reader *next;
	sqlite3 *db;
	sqlite3_blob *agg_blob; /* open handles for store_row_read() */
	sqlite3_blob *ema_blob;
	double *scratch; /* STATS_AGG_ARRAYS * cap doubles */
	size_t scratch_cap;
};

struct store {
	char *path;
	struct store_options opt;
	int schema_version;

	/* writer */
	sqlite3 *wdb;
	sqlite3_stmt *ws[W_COUNT];
	double *wscratch; /* STATS_AGG_ARRAYS * wscratch_cap doubles */
	size_t wscratch_cap;
	struct wagg *wcache[WCACHE_BUCKETS]; /* see agg_merge() */
	size_t wcache_bytes;
	uint64_t wgroup;     /* groups written so far */
	int64_t *wlayer_ids; /* per batch: the resolved layer ids */
	size_t wlayer_cap;
	struct timespec retention_last;
	bool retention_more;
	int64_t retention_cursor; /* the last run id a pass looked at */
	pthread_t writer;
	bool writer_started;

	/* queue, guarded by mu */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct queued *head, *tail;
	size_t depth;
	bool closing;

	/* checkpointer: its own connection and thread, woken by the WAL hook */
	sqlite3 *cdb;
	pthread_t ckpt;
	bool ckpt_started;
	pthread_mutex_t cmu;
	pthread_cond_t ccv;
	pthread_cond_t cidle; /* signalled when a checkpoint ends */
	bool ckpt_wanted, ckpt_stop;
	bool ckpt_running; /* one checkpoint at a time: a second would get BUSY */
	int wal_pages;	   /* WAL size after the writer's last commit */

	/* reader pool, guarded by rmu */
	pthread_mutex_t rmu;
	struct store_reader *idle;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int db_error(struct bn_error *err, sqlite3 *db, const char *what)
{
	return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "%s: %s", what,
			    db ? sqlite3_errmsg(db) : "out of memory");
}

void store_options_default(struct store_options *o)
{
	o->queue_max = 1024;
	o->group_max = 512;
	o->sync_full = true;
}

/* Grow a scratch buffer to hold an aggregate of c channels. */
static int scratch_reserve(double **buf, size_t *cap, size_t c)
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

static int exec_sql(sqlite3 *db, const char *sql, struct bn_error *err)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);

	if (rc != SQLITE_OK) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "%s: %s", sql,
			     msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return -EIO;
	}
	return 0;
}

static int pragma_int(sqlite3 *db, const char *sql, int *out)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*out = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : -EIO;
}

static int open_conn(const char *path, bool writer, sqlite3 **out, struct bn_error *err)
{
	sqlite3 *db = NULL;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
	int rc;

	if (writer)
		flags |= SQLITE_OPEN_CREATE;
	rc = sqlite3_open_v2(path, &db, flags, NULL);
	if (rc != SQLITE_OK) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "cannot open database %s: %s", path,
			     db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		sqlite3_close(db);
		return -EIO;
	}
	sqlite3_busy_timeout(db, 10000);
	sqlite3_extended_result_codes(db, 1);
	*out = db;
	return 0;
}

static int migrate(struct store *s, struct bn_error *err)
{
	int version = 0;
	int latest = 0;
	size_t i;

	if (pragma_int(s->wdb, "PRAGMA user_version", &version) < 0)
		return db_error(err, s->wdb, "reading schema version");
	for (i = 0; i < store_migrations_count; i++)
		if (store_migrations[i].version > latest)
			latest = store_migrations[i].version;
	if (version > latest)
		return bn_error_set(
			err, 500, BN_E_INTERNAL, NULL,
			"database schema version %d is newer than this bnstatd knows (%d)", version,
			latest);
	for (i = 0; i < store_migrations_count; i++) {
		const struct store_migration *m = &store_migrations[i];

		if (m->version <= version)
			continue;
		if (exec_sql(s->wdb, "BEGIN IMMEDIATE", err) < 0)
			return -EIO;
		if (exec_sql(s->wdb, m->sql, err) < 0) {
			sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
			return -EIO;
		}
		if (exec_sql(s->wdb, "COMMIT", err) < 0) {
			sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
			return -EIO;
		}
		log_info("migrated", "version=%d name=%s", m->version, m->name);
		version = m->version;
	}
	s->schema_version = version;
	return 0;
}

/* --- the writer ----------------------------------------------------------- */

static int step_done(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

/* Find or create a row by (optional run_id, name); *id receives its id. */
static int intern(struct store *s, enum wstmt get, enum wstmt ins, int64_t run_id, const char *name,
		  int64_t *id)
{
	sqlite3_stmt *st = s->ws[get];
	int rc;

	if (get == W_RUN_GET) {
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	} else {
		sqlite3_bind_int64(st, 1, run_id);
		sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	}
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*id = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	if (rc == SQLITE_ROW)
		return 0;
	if (rc != SQLITE_DONE)
		return -EIO;

	st = s->ws[ins];
	if (ins == W_RUN_INS) {
		/* A fresh id that no earlier (deleted) run ever had. */
		if (step_done(s->ws[W_RUN_ID_NEW]) < 0)
			return -EIO;
		run_id = sqlite3_last_insert_rowid(s->wdb);
		if (step_done(s->ws[W_RUN_ID_DROP]) < 0)
			return -EIO;
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, now_ms());
		sqlite3_bind_int64(st, 3, run_id);
	} else {
		sqlite3_bind_int64(st, 1, run_id);
		sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	}
	if (step_done(st) < 0)
		return -EIO;
	*id = sqlite3_last_insert_rowid(s->wdb);
	return 0;
}

/*
 * Find the layer, or create it with the batch's channel count. A layer
 * whose stored channel count differs refuses the batch (422).
 */
static int layer_resolve(struct store *s, int64_t run_id, const struct ingest_layer *l,
			 int64_t *layer_id, struct bn_error *err)
{
	sqlite3_stmt *st = s->ws[W_LAYER_GET];
	int64_t channels = 0;
	char path[BN_ERROR_PATH_MAX];
	int rc;

	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, l->name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*layer_id = sqlite3_column_int64(st, 0);
		channels = sqlite3_column_int64(st, 1);
	}
	sqlite3_reset(st);
	if (rc == SQLITE_ROW) {
		if ((size_t)channels == l->channels)
			return 0;
		snprintf(path, sizeof(path), "layers.%s.mean", l->name);
		return bn_error_set(err, 422, BN_E_INVALID, path,
				    "layer %s has %lld channels (fixed by its first upload); this "
				    "upload has %zu",
				    l->name, (long long)channels, l->channels);
	}
	if (rc != SQLITE_DONE)
		return db_error(err, s->wdb, "looking up layer");

	st = s->ws[W_LAYER_INS];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, l->name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)l->channels);
	if (step_done(st) < 0)
		return db_error(err, s->wdb, "creating layer");
	*layer_id = sqlite3_last_insert_rowid(s->wdb);
	return 0;
}

/*
 * The writer's aggregate cache. Uploads of one step from many workers all
 * merge into the same (run, domain, step, layer) rows; reading and writing
 * each row once per upload would move the whole blob through SQLite every
 * time. Instead a group merges into these in-memory copies and flushes each
 * dirty one once, just before COMMIT. Entries stay cached after the commit
 * (clean), so the next group of the same step does not read them back;
 * entries not touched by the last two groups are dropped. After a failed
 * commit the whole cache is dropped, since it may hold merges that never
 * reached the disk.
 */
struct wagg {
	struct wagg *next; /* bucket chain */
	int64_t run_id, domain_id, step, layer_id;
	size_t channels;
	int64_t n, k, nbs_min, nbs_max;
	double *data; /* STATS_AGG_ARRAYS * channels */
	bool dirty;
	uint64_t group; /* last group that touched it */
};

static size_t wcache_bucket(int64_t run_id, int64_t domain_id, int64_t step, int64_t layer_id)
{
	uint64_t h = (uint64_t)run_id * 0x9E3779B97F4A7C15ull;

	h ^= (uint64_t)domain_id * 0xC2B2AE3D27D4EB4Full;
	h ^= (uint64_t)step * 0x165667B19E3779F9ull;
	h ^= (uint64_t)layer_id * 0x27D4EB2F165667C5ull;
	return (size_t)(h >> 40) % WCACHE_BUCKETS;
}

static void wagg_free(struct wagg *e)
{
	free(e->data);
	free(e);
}

/* Drop every entry (all == true) or those idle for more than one group. */
static void wcache_prune(struct store *s, bool all)
{
	size_t i;

	for (i = 0; i < WCACHE_BUCKETS; i++) {
		struct wagg **pp = &s->wcache[i];

		while (*pp != NULL) {
			struct wagg *e = *pp;

			if (all || e->group + 1 < s->wgroup) {
				*pp = e->next;
				s->wcache_bytes -= STATS_AGG_ARRAYS * e->channels * sizeof(double);
				wagg_free(e);
			} else {
				pp = &e->next;
			}
		}
	}
}

/* Find the cached aggregate, reading it from the database on first use. */
static struct wagg *wcache_get(struct store *s, int64_t run_id, int64_t domain_id, int64_t step,
			       int64_t layer_id, size_t c, struct bn_error *err)
{
	size_t bytes = STATS_AGG_ARRAYS * c * sizeof(double);
	size_t b = wcache_bucket(run_id, domain_id, step, layer_id);
	sqlite3_stmt *st = s->ws[W_AGG_GET];
	struct wagg *e;
	int rc;

	for (e = s->wcache[b]; e != NULL; e = e->next)
		if (e->run_id == run_id && e->domain_id == domain_id && e->step == step &&
		    e->layer_id == layer_id)
			return e;
	e = calloc(1, sizeof(*e));
	if (e != NULL)
		e->data = malloc(bytes);
	if (e == NULL || e->data == NULL) {
		free(e);
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		return NULL;
	}
	e->run_id = run_id;
	e->domain_id = domain_id;
	e->step = step;
	e->layer_id = layer_id;
	e->channels = c;

	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, step);
	sqlite3_bind_int64(st, 4, layer_id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && (size_t)sqlite3_column_bytes(st, 4) == bytes) {
		e->n = sqlite3_column_int64(st, 0);
		e->k = sqlite3_column_int64(st, 1);
		e->nbs_min = sqlite3_column_int64(st, 2);
		e->nbs_max = sqlite3_column_int64(st, 3);
		memcpy(e->data, sqlite3_column_blob(st, 4), bytes);
	} else if (rc == SQLITE_DONE) {
		memset(e->data, 0, bytes);
	} else {
		sqlite3_reset(st);
		wagg_free(e);
		db_error(err, s->wdb,
			 rc == SQLITE_ROW ? "stored aggregate has the wrong size"
					  : "reading aggregate");
		return NULL;
	}
	sqlite3_reset(st);
	e->next = s->wcache[b];
	s->wcache[b] = e;
	s->wcache_bytes += bytes;
	return e;
}

/* Merge one layer of a batch into its cached per-step aggregate. */
static int agg_merge(struct store *s, int64_t run_id, int64_t domain_id, int64_t step,
		     int64_t layer_id, enum stats_var_kind kind, const struct ingest_layer *l,
		     struct bn_error *err)
{
	struct wagg *e = wcache_get(s, run_id, domain_id, step, layer_id, l->channels, err);
	struct stats_agg a;

	if (e == NULL)
		return -EIO;
	stats_agg_view(&a, e->data, e->channels);
	a.n = e->n;
	a.k = e->k;
	a.nbs_min = e->nbs_min;
	a.nbs_max = e->nbs_max;
	stats_agg_add_batch(&a, l->count, l->mean, l->var, kind);
	e->n = a.n;
	e->k = a.k;
	e->nbs_min = a.nbs_min;
	e->nbs_max = a.nbs_max;
	e->dirty = true;
	e->group = s->wgroup;
	return 0;
}

/* Write every dirty cached aggregate (inside the group's transaction). */
static int wcache_flush(struct store *s, size_t *rows)
{
	sqlite3_stmt *st = s->ws[W_AGG_PUT];
	size_t i;

	*rows = 0;
	for (i = 0; i < WCACHE_BUCKETS; i++) {
		struct wagg *e;

		for (e = s->wcache[i]; e != NULL; e = e->next) {
			if (!e->dirty)
				continue;
			sqlite3_bind_int64(st, 1, e->run_id);
			sqlite3_bind_int64(st, 2, e->domain_id);
			sqlite3_bind_int64(st, 3, e->step);
			sqlite3_bind_int64(st, 4, e->layer_id);
			sqlite3_bind_int64(st, 5, e->n);
			sqlite3_bind_int64(st, 6, e->k);
			sqlite3_bind_int64(st, 7, e->nbs_min);
			sqlite3_bind_int64(st, 8, e->nbs_max);
			sqlite3_bind_blob(st, 9, e->data,
					  (int)(STATS_AGG_ARRAYS * e->channels * sizeof(double)),
					  SQLITE_STATIC);
			if (step_done(st) < 0)
				return -EIO;
			e->dirty = false;
			(*rows)++;
		}
	}
	return 0;
}

static int ema_put(struct store *s, int64_t run_id, int64_t domain_id, int64_t layer_id,
		   const struct ingest_batch *b, const struct ingest_layer *l, struct bn_error *err)
{
	sqlite3_stmt *st = s->ws[W_EMA_PUT];
	size_t c = l->channels;

	if (scratch_reserve(&s->wscratch, &s->wscratch_cap, c) < 0)
		return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
	memcpy(s->wscratch, l->ema_mean, c * sizeof(double));
	memcpy(s->wscratch + c, l->ema_var, c * sizeof(double));
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, layer_id);
	sqlite3_bind_text(st, 4, b->worker, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, b->step);
	sqlite3_bind_int64(st, 6, b->seq);
	sqlite3_bind_blob(st, 7, s->wscratch, (int)(2 * c * sizeof(double)), SQLITE_STATIC);
	if (step_done(st) < 0)
		return db_error(err, s->wdb, "writing worker EMA");
	return 0;
}

static bool batch_merges(const struct ingest_batch *b)
{
	size_t i;

	for (i = 0; i < b->n_layers; i++)
		if (b->layers[i].count > 0)
			return true;
	return false;
}

/*
 * A batch below the run's highest step rewrites history for replayed EMAs:
 * log it (query.c keeps its cached replays exact by it). Batches at or
 * above the highest step, the normal case in training, log nothing.
 */
static int note_late_write(struct store *s, int64_t run_id, int64_t domain_id,
			   const struct ingest_batch *b, struct bn_error *err)
{
	sqlite3_stmt *st = s->ws[W_RUN_MAX_STEP];
	bool late = false, have_max = false;
	int64_t max_step = 0;
	int rc;

	sqlite3_bind_int64(st, 1, run_id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
		have_max = true;
		max_step = sqlite3_column_int64(st, 0);
		late = b->step < max_step;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_ROW)
		return db_error(err, s->wdb, "reading the run's last step");
	if (have_max && s->opt.retain_steps > 0 && b->step <= max_step - s->opt.retain_steps)
		return bn_error_set(
			err, 422, BN_E_INVALID, "step",
			"step %lld is older than the retention horizon: this server keeps "
			"the last %lld steps of a run (now steps > %lld)",
			(long long)b->step, (long long)s->opt.retain_steps,
			(long long)(max_step - s->opt.retain_steps));
	if (!late || !batch_merges(b))
		return 0;
	st = s->ws[W_LATE_INS];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, b->step);
	if (step_done(st) < 0)
		return db_error(err, s->wdb, "recording a late write");
	return 0;
}

/*
 * Apply one batch inside the open transaction. Returns 0 when the batch is
 * accepted or recognised as a duplicate (q->res says which), or a negative
 * errno with q->res.err filled in; the caller then rolls the savepoint back.
 */
static int apply_batch(struct store *s, struct queued *q)
{
	const struct ingest_batch *b = q->batch;
	struct bn_error *err = &q->res.err;
	sqlite3_stmt *st;
	int64_t run_id, domain_id, layer_id = 0;
	size_t i;
	int rc;

	q->res.layers = b->n_layers;
	if (intern(s, W_RUN_GET, W_RUN_INS, 0, b->run, &run_id) < 0)
		return db_error(err, s->wdb, "creating run");
	if (intern(s, W_DOM_GET, W_DOM_INS, run_id, b->domain, &domain_id) < 0)
		return db_error(err, s->wdb, "creating domain");

	st = s->ws[W_BATCH_GET];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_text(st, 3, b->worker, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, b->step);
	sqlite3_bind_int64(st, 5, b->seq);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		bool same = sqlite3_column_bytes(st, 0) == INGEST_HASH_SIZE &&
			    memcmp(sqlite3_column_blob(st, 0), b->hash, INGEST_HASH_SIZE) == 0;

		sqlite3_reset(st);
		if (same) {
			q->res.duplicate = true;
			return 0;
		}
		return bn_error_set(err, 409, BN_E_CONFLICT, NULL,
				    "batch (domain %s, worker %s, step %lld, seq %lld) was already "
				    "received with different content",
				    b->domain, b->worker, (long long)b->step, (long long)b->seq);
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		return db_error(err, s->wdb, "looking up batch");

	rc = note_late_write(s, run_id, domain_id, b, err);
	if (rc < 0)
		return rc;
	/*
	 * Every check that can refuse the batch comes first (the savepoint
	 * undoes SQL, not the in-memory aggregates); only then merge.
	 */
	if (b->n_layers > s->wlayer_cap) {
		int64_t *p = realloc(s->wlayer_ids, b->n_layers * sizeof(*p));

		if (p == NULL)
			return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		s->wlayer_ids = p;
		s->wlayer_cap = b->n_layers;
	}
	for (i = 0; i < b->n_layers; i++) {
		if (b->layers[i].channels == 0)
			continue; /* unused in this batch and nothing sent */
		if (layer_resolve(s, run_id, &b->layers[i], &s->wlayer_ids[i], err) < 0)
			return -EINVAL;
	}
	for (i = 0; i < b->n_layers; i++) {
		const struct ingest_layer *l = &b->layers[i];

		if (l->channels == 0)
			continue;
		layer_id = s->wlayer_ids[i];
		if (l->count > 0 &&
		    agg_merge(s, run_id, domain_id, b->step, layer_id, b->var_kind, l, err) < 0)
			return -EIO;
		if (l->ema_mean != NULL && ema_put(s, run_id, domain_id, layer_id, b, l, err) < 0)
			return -EIO;
	}

	st = s->ws[W_BATCH_INS];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_text(st, 3, b->worker, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, b->step);
	sqlite3_bind_int64(st, 5, b->seq);
	sqlite3_bind_blob(st, 6, b->hash, INGEST_HASH_SIZE, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, (sqlite3_int64)b->n_layers);
	sqlite3_bind_int64(st, 8, now_ms());
	if (step_done(st) < 0)
		return db_error(err, s->wdb, "recording batch");
	return 0;
}

/* An existing run, looked up by the writer: 0, or 404 / 500 in *err. */
static int writer_run_find(struct store *s, const char *run, int64_t *run_id, struct bn_error *err)
{
	sqlite3_stmt *st = s->ws[W_RUN_GET];
	int rc;

	sqlite3_bind_text(st, 1, run, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*run_id = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	if (rc == SQLITE_DONE)
		return bn_error_set(err, 404, BN_E_NOT_FOUND, "run", "no run named %s", run);
	if (rc != SQLITE_ROW)
		return db_error(err, s->wdb, "looking up run");
	return 0;
}

void store_snapshot_free(struct store_snapshot *snap)
{
	size_t i;

	if (snap == NULL)
		return;
	for (i = 0; i < snap->n_layers; i++) {
		free(snap->layers[i].name);
		free(snap->layers[i].mean); /* var shares the allocation */
	}
	free(snap->layers);
	free(snap);
}

bool store_snapshot_matches(const struct store_snapshot *want, const struct store_snapshot *have)
{
	unsigned f = want->explicit_fields;

	return (!(f & STORE_SNAP_STEP) || want->step == have->step) &&
	       (!(f & STORE_SNAP_WINDOW) || want->window == have->window) &&
	       (!(f & STORE_SNAP_DOMAIN) || strcmp(want->domain, have->domain) == 0) &&
	       (!(f & STORE_SNAP_ESTIMATOR) || strcmp(want->estimator, have->estimator) == 0);
}

/*
 * Create a snapshot inside the open transaction, or recognise a retry:
 * q->res.status becomes 201 or 200; a conflict or a vanished run returns
 * a negative errno with q->res.err filled in.
 */
static int apply_snapshot(struct store *s, struct queued *q)
{
	const struct store_snapshot *snap = q->snap;
	struct bn_error *err = &q->res.err;
	sqlite3_stmt *st;
	int64_t run_id, snap_id;
	size_t i;
	int rc;

	rc = writer_run_find(s, snap->run, &run_id, err);
	if (rc < 0)
		return rc;

	st = s->ws[W_SNAP_GET];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, snap->label, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		struct store_snapshot have;

		memset(&have, 0, sizeof(have));
		have.step = sqlite3_column_int64(st, 0);
		have.window = sqlite3_column_int64(st, 1);
		snprintf(have.domain, sizeof(have.domain), "%s", sqlite3_column_text(st, 2));
		snprintf(have.estimator, sizeof(have.estimator), "%s", sqlite3_column_text(st, 3));
		sqlite3_reset(st);
		if (store_snapshot_matches(snap, &have)) {
			q->res.status = 200;
			return 0;
		}
		return bn_error_set(
			err, 409, BN_E_CONFLICT, "label",
			"snapshot %s exists with other parameters (step %lld, window %lld, "
			"domain %s, estimator %s)",
			snap->label, (long long)have.step, (long long)have.window, have.domain,
			have.estimator);
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		return db_error(err, s->wdb, "looking up snapshot");

	st = s->ws[W_SNAP_INS];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, snap->label, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, snap->step);
	sqlite3_bind_int64(st, 4, snap->window);
	sqlite3_bind_text(st, 5, snap->domain, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, snap->estimator, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, now_ms());
	if (step_done(st) < 0)
		return db_error(err, s->wdb, "creating snapshot");
	snap_id = sqlite3_last_insert_rowid(s->wdb);
	for (i = 0; i < snap->n_layers; i++) {
		const struct store_snapshot_layer *l = &snap->layers[i];

		st = s->ws[W_SNAP_LAYER_INS];
		sqlite3_bind_int64(st, 1, snap_id);
		sqlite3_bind_text(st, 2, l->name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)l->channels);
		sqlite3_bind_int64(st, 4, l->count);
		sqlite3_bind_int64(st, 5, l->batches);
		/* mean and var are one allocation, var right after mean */
		sqlite3_bind_blob(st, 6, l->mean, (int)(2 * l->channels * sizeof(double)),
				  SQLITE_STATIC);
		if (step_done(st) < 0)
			return db_error(err, s->wdb, "writing snapshot layer");
	}
	q->res.status = 201;
	return 0;
}

/* Forget cached aggregates of a run (it is being deleted). */
static void wcache_drop_run(struct store *s, int64_t run_id)
{
	size_t i;

	for (i = 0; i < WCACHE_BUCKETS; i++) {
		struct wagg **pp = &s->wcache[i];

		while (*pp != NULL) {
			struct wagg *e = *pp;

			if (e->run_id == run_id) {
				*pp = e->next;
				s->wcache_bytes -= STATS_AGG_ARRAYS * e->channels * sizeof(double);
				wagg_free(e);
			} else {
				pp = &e->next;
			}
		}
	}
}

static int apply_delete(struct store *s, struct queued *q)
{
	struct bn_error *err = &q->res.err;
	sqlite3_stmt *st;
	int64_t run_id = 0;
	int rc;

	rc = writer_run_find(s, q->delete_run, &run_id, err);
	if (rc < 0)
		return rc;
	st = s->ws[W_RUN_DEL];
	sqlite3_bind_int64(st, 1, run_id);
	if (step_done(st) < 0)
		return db_error(err, s->wdb, "deleting run");
	/* Uploads of this run earlier in the group must not be written back. */
	wcache_drop_run(s, run_id);
	log_info("run_deleted", "run=%s", q->delete_run);
	return 0;
}

static void fail_all(struct queued *group, int status, const char *why)
{
	struct queued *q;

	/*
	 * Every result, refusals included: a 409 or 422 may have been decided
	 * against rows of this very group, which are gone now.
	 */
	for (q = group; q != NULL; q = q->next) {
		q->res.status = status;
		q->res.duplicate = false;
		bn_error_set(&q->res.err, status, status == 503 ? BN_E_UNAVAILABLE : BN_E_INTERNAL,
			     NULL, "%s", why);
	}
}

static void wal_bound(struct store *s);

/* One group commit: apply every batch of the group, commit, report. */
static void write_group(struct store *s, struct queued *group, size_t count)
{
	struct queued *q, *next;
	struct timespec t0, t1;
	struct bn_error err;
	size_t accepted = 0, refused = 0, rows = 0;
	bool ok = true;

	wal_bound(s);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (exec_sql(s->wdb, "BEGIN IMMEDIATE", &err) < 0) {
		log_error("commit_failed", "stage=begin error=\"%s\"", err.message);
		fail_all(group, 503, "the database is unavailable; retry later");
		goto report;
	}
	for (q = group; q != NULL; q = q->next) {
		int rc;

		if (exec_sql(s->wdb, "SAVEPOINT batch", &err) < 0) {
			ok = false;
			break;
		}
		rc = q->snap	     ? apply_snapshot(s, q)
		     : q->delete_run ? apply_delete(s, q)
				     : apply_batch(s, q);
		if (rc < 0) {
			q->res.status = q->res.err.status ? q->res.err.status : 500;
			if (q->res.status >= 500) {
				/* A database failure: in-memory merges may be half done. */
				err = q->res.err;
				ok = false;
				break;
			}
			if (exec_sql(s->wdb, "ROLLBACK TO batch", &err) < 0 ||
			    sqlite3_get_autocommit(s->wdb)) {
				ok = false;
				break;
			}
			refused++;
		} else {
			if (q->res.status == 0)
				q->res.status = 200;
			accepted++;
		}
		if (exec_sql(s->wdb, "RELEASE batch", &err) < 0) {
			ok = false;
			break;
		}
	}
	if (ok && wcache_flush(s, &rows) < 0) {
		db_error(&err, s->wdb, "writing aggregates");
		ok = false;
	}
	if (ok && exec_sql(s->wdb, "COMMIT", &err) < 0)
		ok = false;
	if (!ok) {
		log_error("commit_failed", "stage=write error=\"%s\"", err.message);
		if (!sqlite3_get_autocommit(s->wdb))
			sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
		fail_all(group, 503, "the database could not commit; retry later");
	}
	/* Failed: the cache may hold merges that never reached the disk. */
	wcache_prune(s, !ok);
	s->wgroup++;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	metrics_commit((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
		       count, ok);
	log_debug("commit", "batches=%zu accepted=%zu refused=%zu rows=%zu ok=%d ms=%.3f", count,
		  accepted, refused, rows, ok,
		  (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
report:
	for (q = group; q != NULL; q = next) {
		next = q->next;
		q->done(q->ctx, &q->res);
		ingest_batch_free(q->batch);
		store_snapshot_free(q->snap);
		free(q->delete_run);
		free(q);
	}
}

/*
 * Retention: drop per-step statistics and batch identities at or below
 * each run's horizon (highest step - retain_steps), with the worker EMAs
 * of those steps, at most about `budget` rows per call, in its own
 * transaction. Snapshots stay. Returns true when rows remain to be dropped.
 */
static bool retention_pass(struct store *s, int budget)
{
	sqlite3_stmt *st = s->ws[W_RET_RUNS];
	struct {
		int64_t run_id, horizon;
	} runs[64];
	int n = 0, i, deleted = 0, listed = 0;
	bool more;
	struct bn_error err;

	if (exec_sql(s->wdb, "BEGIN IMMEDIATE", &err) < 0)
		return false;
	/* Up to 64 runs a pass, resuming after the last one seen: every run gets its turn. */
	sqlite3_bind_int64(st, 1, s->retention_cursor);
	while (sqlite3_step(st) == SQLITE_ROW) {
		listed++;
		s->retention_cursor = sqlite3_column_int64(st, 0);
		if (sqlite3_column_type(st, 1) == SQLITE_NULL)
			continue;
		runs[n].run_id = sqlite3_column_int64(st, 0);
		runs[n].horizon = sqlite3_column_int64(st, 1) - s->opt.retain_steps;
		n++;
	}
	sqlite3_reset(st);
	more = listed == 64; /* more runs after the cursor */
	if (!more)
		s->retention_cursor = 0;
	for (i = 0; i < n && deleted < budget; i++) {
		int changed;

		st = s->ws[W_RET_AGGS];
		sqlite3_bind_int64(st, 1, runs[i].run_id);
		sqlite3_bind_int64(st, 2, runs[i].horizon);
		sqlite3_bind_int64(st, 3, budget - deleted);
		if (step_done(st) < 0)
			goto fail;
		changed = sqlite3_changes(s->wdb);
		st = s->ws[W_RET_EMAS];
		sqlite3_bind_int64(st, 1, runs[i].run_id);
		sqlite3_bind_int64(st, 2, runs[i].horizon);
		sqlite3_bind_int64(st, 3,
				   budget - deleted - changed > 0 ? budget - deleted - changed : 1);
		if (step_done(st) < 0)
			goto fail;
		changed += sqlite3_changes(s->wdb);
		if (changed == 0)
			continue;
		deleted += changed;
		if (deleted >= budget) {
			more = true;
			/* this run again first next time: it may have more to drop */
			s->retention_cursor = runs[i].run_id - 1;
		}
		st = s->ws[W_RET_BATCHES];
		sqlite3_bind_int64(st, 1, runs[i].run_id);
		sqlite3_bind_int64(st, 2, runs[i].horizon);
		if (step_done(st) < 0)
			goto fail;
		st = s->ws[W_RET_LATE];
		sqlite3_bind_int64(st, 1, runs[i].run_id);
		if (step_done(st) < 0)
			goto fail;
		st = s->ws[W_RET_LATE_GC];
		sqlite3_bind_int64(st, 1, runs[i].run_id);
		sqlite3_bind_int64(st, 2, sqlite3_last_insert_rowid(s->wdb));
		if (step_done(st) < 0)
			goto fail;
	}
	if (exec_sql(s->wdb, "COMMIT", &err) < 0)
		goto fail;
	if (deleted > 0) {
		/* Give the freed pages back to the file system, a bounded number at a time. */
		sqlite3_exec(s->wdb, "PRAGMA incremental_vacuum(4096)", NULL, NULL, NULL);
		log_info("retention", "rows_dropped=%d more=%d", deleted, more);
	}
	return more;
fail:
	log_error("retention_failed", "error=\"%s\"", sqlite3_errmsg(s->wdb));
	sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
	return false;
}

/* A retention pass every 10 s, or every 100 ms while a backlog remains. */
static bool retention_due(struct store *s)
{
	struct timespec now;
	double since;

	clock_gettime(CLOCK_MONOTONIC, &now);
	since = (double)(now.tv_sec - s->retention_last.tv_sec) +
		(double)(now.tv_nsec - s->retention_last.tv_nsec) / 1e9;
	return since >= (s->retention_more ? 0.1 : 10.0);
}

/*
 * Checkpoints copy WAL frames back into the database file: as many bytes
 * again as the commits wrote. Done by the writer (SQLite's default) they
 * would stall every upload behind them, so the writer turns automatic
 * checkpoints off and its WAL hook wakes this thread instead, which runs
 * PASSIVE checkpoints on its own connection while the writer goes on.
 *
 * The WAL only starts over when the writer begins a transaction at a moment
 * when every frame has been copied back; a writer that never pauses would
 * never see that moment, and the WAL would grow without bound. So once the
 * WAL passes CKPT_WRITER_PAGES, the writer runs a PASSIVE checkpoint itself
 * before its next group: little is left to copy by then (the thread did the
 * rest), and its next transaction restarts the WAL.
 */
#define CKPT_PAGES 256
#define CKPT_WRITER_PAGES (8 * CKPT_PAGES)

static int on_wal(void *arg, sqlite3 *db, const char *name, int pages)
{
	struct store *s = arg;

	s->wal_pages = pages; /* the writer's own thread: no lock needed */
	if (pages >= CKPT_PAGES) {
		pthread_mutex_lock(&s->cmu);
		s->ckpt_wanted = true;
		pthread_cond_signal(&s->ccv);
		pthread_mutex_unlock(&s->cmu);
	}
	return SQLITE_OK;
}

/*
 * Run one PASSIVE checkpoint on db, waiting for one in progress on the
 * other connection to end first (a checkpoint that meets another one gives
 * up with SQLITE_BUSY, and the WAL could then never start over).
 */
static void checkpoint(struct store *s, sqlite3 *db, const char *who)
{
	int log_pages = 0, done_pages = 0, rc;

	pthread_mutex_lock(&s->cmu);
	while (s->ckpt_running)
		pthread_cond_wait(&s->cidle, &s->cmu);
	s->ckpt_running = true;
	pthread_mutex_unlock(&s->cmu);

	rc = sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &log_pages,
				       &done_pages);
	if (rc != SQLITE_OK && rc != SQLITE_BUSY)
		log_error("checkpoint_failed", "by=%s error=\"%s\"", who, sqlite3_errmsg(db));
	else
		log_debug("checkpoint", "by=%s rc=%d wal_pages=%d copied=%d", who, rc, log_pages,
			  done_pages);

	pthread_mutex_lock(&s->cmu);
	s->ckpt_running = false;
	pthread_cond_broadcast(&s->cidle);
	pthread_mutex_unlock(&s->cmu);
}

/* Before a group: bound the WAL (see above). Writer thread only. */
static void wal_bound(struct store *s)
{
	if (s->wal_pages < CKPT_WRITER_PAGES)
		return;
	checkpoint(s, s->wdb, "writer");
	s->wal_pages = 0;
}

static void *checkpointer_main(void *arg)
{
	struct store *s = arg;

	for (;;) {
		pthread_mutex_lock(&s->cmu);
		while (!s->ckpt_wanted && !s->ckpt_stop)
			pthread_cond_wait(&s->ccv, &s->cmu);
		if (s->ckpt_stop) {
			pthread_mutex_unlock(&s->cmu);
			break;
		}
		s->ckpt_wanted = false;
		pthread_mutex_unlock(&s->cmu);
		checkpoint(s, s->cdb, "thread");
	}
	return NULL;
}

static void *writer_main(void *arg)
{
	struct store *s = arg;

	for (;;) {
		struct queued *group, *last;
		size_t n = 1;

		pthread_mutex_lock(&s->mu);
		while (s->head == NULL && !s->closing) {
			if (s->opt.retain_steps > 0 && retention_due(s)) {
				pthread_mutex_unlock(&s->mu);
				s->retention_more = retention_pass(s, 2000);
				clock_gettime(CLOCK_MONOTONIC, &s->retention_last);
				pthread_mutex_lock(&s->mu);
				continue;
			}
			if (s->opt.retain_steps > 0) {
				struct timespec until;

				clock_gettime(CLOCK_REALTIME, &until);
				until.tv_sec += 1;
				pthread_cond_timedwait(&s->cv, &s->mu, &until);
			} else {
				pthread_cond_wait(&s->cv, &s->mu);
			}
		}
		if (s->head == NULL) {
			pthread_mutex_unlock(&s->mu);
			break;
		}
		group = last = s->head;
		while (last->next != NULL && n < s->opt.group_max) {
			last = last->next;
			n++;
		}
		s->head = last->next;
		if (s->head == NULL)
			s->tail = NULL;
		last->next = NULL;
		s->depth -= n;
		pthread_mutex_unlock(&s->mu);

		write_group(s, group, n);
		if (s->opt.retain_steps > 0 && retention_due(s)) {
			s->retention_more = retention_pass(s, 2000);
			clock_gettime(CLOCK_MONOTONIC, &s->retention_last);
		}
	}
	return NULL;
}

/* Queue a job for the writer; on failure the caller keeps what q carries. */
static int enqueue(struct store *s, struct ingest_batch *b, struct store_snapshot *snap,
		   char *delete_run, store_done_fn done, void *ctx)
{
	struct queued *q;
	int rc = 0;

	q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	q->batch = b;
	q->snap = snap;
	q->delete_run = delete_run;
	q->done = done;
	q->ctx = ctx;

	pthread_mutex_lock(&s->mu);
	if (s->closing)
		rc = -ESHUTDOWN;
	else if (s->depth >= s->opt.queue_max)
		rc = -EAGAIN;
	if (rc == 0) {
		if (s->tail != NULL)
			s->tail->next = q;
		else
			s->head = q;
		s->tail = q;
		s->depth++;
		pthread_cond_signal(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
	if (rc < 0)
		free(q);
	return rc;
}

int store_submit(struct store *s, struct ingest_batch *b, store_done_fn done, void *ctx)
{
	return enqueue(s, b, NULL, NULL, done, ctx);
}

int store_submit_snapshot(struct store *s, struct store_snapshot *snap, store_done_fn done,
			  void *ctx)
{
	return enqueue(s, NULL, snap, NULL, done, ctx);
}

int store_submit_delete(struct store *s, const char *run, store_done_fn done, void *ctx)
{
	char *name = strdup(run);
	int rc;

	if (name == NULL)
		return -ENOMEM;
	rc = enqueue(s, NULL, NULL, name, done, ctx);
	if (rc < 0)
		free(name);
	return rc;
}

size_t store_queue_depth(struct store *s)
{
	size_t d;

	pthread_mutex_lock(&s->mu);
	d = s->depth;
	pthread_mutex_unlock(&s->mu);
	return d;
}

unsigned long long store_disk_bytes(struct store *s)
{
	char wal[4200];
	struct stat st;
	unsigned long long n = 0;

	if (stat(s->path, &st) == 0)
		n += (unsigned long long)st.st_size;
	snprintf(wal, sizeof(wal), "%s-wal", s->path);
	if (stat(wal, &st) == 0)
		n += (unsigned long long)st.st_size;
	return n;
}

int store_schema_version(struct store *s)
{
	return s->schema_version;
}

/* --- open and close ---------------------------------------------------------- */

int store_open(const char *path, const struct store_options *opt, struct store **out,
	       struct bn_error *err)
{
	struct store *s;
	char pragma[64];
	int i;

	*out = NULL;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
	if (opt != NULL)
		s->opt = *opt;
	else
		store_options_default(&s->opt);
	if (s->opt.queue_max == 0)
		s->opt.queue_max = 1;
	if (s->opt.group_max == 0)
		s->opt.group_max = 1;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_mutex_init(&s->rmu, NULL);
	pthread_mutex_init(&s->cmu, NULL);
	pthread_cond_init(&s->ccv, NULL);
	pthread_cond_init(&s->cidle, NULL);
	s->path = strdup(path);
	if (s->path == NULL) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		goto fail;
	}

	if (open_conn(path, true, &s->wdb, err) < 0)
		goto fail;
	/*
	 * These two only take effect on a new, empty database. Large pages suit
	 * rows that are blobs of tens to hundreds of KB (fewer overflow pages
	 * per row); incremental auto-vacuum lets retention shrink the file.
	 */
	if (exec_sql(s->wdb, "PRAGMA page_size=65536", err) < 0 ||
	    exec_sql(s->wdb, "PRAGMA auto_vacuum=INCREMENTAL", err) < 0 ||
	    exec_sql(s->wdb, "PRAGMA journal_mode=WAL", err) < 0)
		goto fail;
	snprintf(pragma, sizeof(pragma), "PRAGMA synchronous=%s",
		 s->opt.sync_full ? "FULL" : "NORMAL");
	if (exec_sql(s->wdb, pragma, err) < 0 ||
	    exec_sql(s->wdb, "PRAGMA foreign_keys=ON", err) < 0)
		goto fail;
	if (migrate(s, err) < 0)
		goto fail;
	/*
	 * late_writes only serve to validate replay checkpoints, which live in
	 * memory: none exists yet, so the log can start empty.
	 */
	if (exec_sql(s->wdb, "DELETE FROM late_writes", err) < 0)
		goto fail;
	/* Checkpoints run on their own thread (checkpointer_main), not in commits. */
	if (exec_sql(s->wdb, "PRAGMA wal_autocheckpoint=0", err) < 0 ||
	    exec_sql(s->wdb, "PRAGMA journal_size_limit=67108864", err) < 0 ||
	    open_conn(path, false, &s->cdb, err) < 0 ||
	    /* a first read makes the connection see the database in WAL mode */
	    exec_sql(s->cdb, "SELECT count(*) FROM sqlite_master", err) < 0)
		goto fail;
	sqlite3_wal_hook(s->wdb, on_wal, s);
	if (pthread_create(&s->ckpt, NULL, checkpointer_main, s) != 0) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "cannot start the checkpoint thread");
		goto fail;
	}
	s->ckpt_started = true;
	for (i = 0; i < W_COUNT; i++) {
		if (sqlite3_prepare_v3(s->wdb, wstmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
				       &s->ws[i], NULL) != SQLITE_OK) {
			db_error(err, s->wdb, "preparing statements");
			goto fail;
		}
	}
	if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "cannot start the writer thread");
		goto fail;
	}
	s->writer_started = true;
	*out = s;
	return 0;

fail:
	store_close(s);
	return -EIO;
}

void store_stop_writer(struct store *s)
{
	pthread_mutex_lock(&s->mu);
	s->closing = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	if (s->writer_started) {
		pthread_join(s->writer, NULL);
		s->writer_started = false;
	}
}

void store_close(struct store *s)
{
	struct store_reader *r, *next;
	int i;

	if (s == NULL)
		return;
	store_stop_writer(s);
	if (s->ckpt_started) {
		pthread_mutex_lock(&s->cmu);
		s->ckpt_stop = true;
		pthread_cond_signal(&s->ccv);
		pthread_mutex_unlock(&s->cmu);
		pthread_join(s->ckpt, NULL);
	}
	sqlite3_close(s->cdb);
	for (i = 0; i < W_COUNT; i++)
		sqlite3_finalize(s->ws[i]);
	for (r = s->idle; r != NULL; r = next) {
		next = r->next;
		sqlite3_close(r->db);
		free(r->scratch);
		free(r);
	}
	if (s->wdb != NULL) {
		/* A clean close checkpoints the WAL into the main file. */
		if (sqlite3_close(s->wdb) != SQLITE_OK)
			log_error("close_failed", "error=\"%s\"", sqlite3_errmsg(s->wdb));
	}
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->rmu);
	pthread_mutex_destroy(&s->cmu);
	pthread_cond_destroy(&s->ccv);
	pthread_cond_destroy(&s->cidle);
	wcache_prune(s, true);
	free(s->wlayer_ids);
	free(s->wscratch);
	free(s->path);
	free(s);
}

/* --- readers --------------------------------------------------------------- */

int store_reader_get(struct store *s, struct store_reader **out, struct bn_error *err)
{
	struct store_reader *r;

	pthread_mutex_lock(&s->rmu);
	r = s->idle;
	if (r != NULL)
		s->idle = r->next;
	pthread_mutex_unlock(&s->rmu);
	if (r == NULL) {
		r = calloc(1, sizeof(*r));
		if (r == NULL)
			return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		if (open_conn(s->path, false, &r->db, err) < 0 ||
		    exec_sql(r->db, "PRAGMA query_only=ON", err) < 0) {
			sqlite3_close(r->db);
			free(r);
			return -EIO;
		}
	}
	r->next = NULL;
	*out = r;
	return 0;
}

static void reader_blobs_close(struct store_reader *r)
{
	sqlite3_blob_close(r->agg_blob);
	sqlite3_blob_close(r->ema_blob);
	r->agg_blob = r->ema_blob = NULL;
}

void store_reader_put(struct store *s, struct store_reader *r)
{
	if (r == NULL)
		return;
	reader_blobs_close(r);
	if (!sqlite3_get_autocommit(r->db))
		sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
	pthread_mutex_lock(&s->rmu);
	r->next = s->idle;
	s->idle = r;
	pthread_mutex_unlock(&s->rmu);
}

int store_read_begin(struct store_reader *r)
{
	return sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK ? 0 : -EIO;
}

void store_read_end(struct store_reader *r)
{
	reader_blobs_close(r);
	if (!sqlite3_get_autocommit(r->db))
		sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
}

/* Run a one-row query that yields an int64 in column 0. */
static int query_int64(sqlite3 *db, const char *sql, int64_t a, int64_t b, const char *text,
		       int64_t *out)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	if (text != NULL) {
		sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
	} else {
		sqlite3_bind_int64(st, 1, a);
		sqlite3_bind_int64(st, 2, b);
	}
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
		*out = sqlite3_column_int64(st, 0);
		rc = 0;
	} else if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
		rc = -ENOENT;
	} else {
		rc = -EIO;
	}
	sqlite3_finalize(st);
	return rc;
}

int store_run_find(struct store_reader *r, const char *run, int64_t *run_id)
{
	return query_int64(r->db, "SELECT id FROM runs WHERE name = ?1", 0, 0, run, run_id);
}

int store_domain_find(struct store_reader *r, int64_t run_id, const char *domain,
		      int64_t *domain_id)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(r->db, "SELECT id FROM domains WHERE run_id = ?1 AND name = ?2", -1,
			       &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, domain, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*domain_id = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : -EIO;
}

int store_latest_step(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t *step)
{
	if (domain_id < 0)
		return query_int64(r->db, "SELECT max(step) FROM aggs WHERE run_id = ?1 AND ?2 < 0",
				   run_id, domain_id, NULL, step);
	return query_int64(r->db, "SELECT max(step) FROM aggs WHERE run_id = ?1 AND domain_id = ?2",
			   run_id, domain_id, NULL, step);
}

int store_layer_find(struct store_reader *r, int64_t run_id, const char *layer, int64_t *layer_id,
		     size_t *channels)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(r->db,
			       "SELECT id, channels FROM layers WHERE run_id = ?1 AND name = ?2",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, layer, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*layer_id = sqlite3_column_int64(st, 0);
		*channels = (size_t)sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : -EIO;
}

int store_aggs_foreach(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step_lo,
		       int64_t step_hi, const int64_t *layer_ids, size_t n_layer_ids,
		       store_agg_fn fn, void *ctx)
{
	sqlite3_stmt *st = NULL;
	char *sql = NULL;
	size_t len, i;
	FILE *f;
	int rc = 0, src;

	f = open_memstream(&sql, &len);
	if (f == NULL)
		return -ENOMEM;
	fputs("SELECT a.layer_id, a.domain_id, a.step, a.n, a.k, a.nbs_min, a.nbs_max,"
	      " a.data, l.channels FROM aggs a JOIN layers l ON l.id = a.layer_id"
	      " WHERE a.run_id = ?1 AND a.step > ?3 AND a.step <= ?4",
	      f);
	if (domain_id >= 0)
		fputs(" AND a.domain_id = ?2", f);
	if (layer_ids != NULL) {
		fputs(" AND a.layer_id IN (", f);
		for (i = 0; i < n_layer_ids; i++)
			fprintf(f, "%s%lld", i ? "," : "", (long long)layer_ids[i]);
		fputs(")", f);
	}
	fputs(" ORDER BY a.step, a.layer_id, a.domain_id", f);
	if (fclose(f) != 0) {
		free(sql);
		return -ENOMEM;
	}
	if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK) {
		log_error("query_failed", "error=\"%s\"", sqlite3_errmsg(r->db));
		free(sql);
		return -EIO;
	}
	free(sql);
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, step_lo);
	sqlite3_bind_int64(st, 4, step_hi);

	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_agg_row row;
		struct stats_agg a;
		size_t c = (size_t)sqlite3_column_int64(st, 8);
		size_t bytes = STATS_AGG_ARRAYS * c * sizeof(double);

		if ((size_t)sqlite3_column_bytes(st, 7) != bytes) {
			rc = -EIO;
			break;
		}
		/* Copy out: SQLite's blob pointer need not be 8-byte aligned. */
		if (scratch_reserve(&r->scratch, &r->scratch_cap, c) < 0) {
			rc = -ENOMEM;
			break;
		}
		memcpy(r->scratch, sqlite3_column_blob(st, 7), bytes);
		stats_agg_view(&a, r->scratch, c);
		a.n = sqlite3_column_int64(st, 3);
		a.k = sqlite3_column_int64(st, 4);
		a.nbs_min = sqlite3_column_int64(st, 5);
		a.nbs_max = sqlite3_column_int64(st, 6);
		row.layer_id = sqlite3_column_int64(st, 0);
		row.domain_id = sqlite3_column_int64(st, 1);
		row.step = sqlite3_column_int64(st, 2);
		row.agg = &a;
		rc = fn(ctx, &row);
		if (rc != 0)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = -EIO;
	sqlite3_finalize(st);
	return rc;
}

/* --- describing runs ----------------------------------------------------------- */

static const char run_info_sql[] =
	"SELECT r.name, r.created,"
	" (SELECT count(*) FROM batches b WHERE b.run_id = r.id),"
	" (SELECT min(step) FROM batches b WHERE b.run_id = r.id),"
	" (SELECT max(step) FROM batches b WHERE b.run_id = r.id),"
	" (SELECT count(*) FROM layers l WHERE l.run_id = r.id),"
	" (SELECT count(*) FROM domains d WHERE d.run_id = r.id),"
	" (SELECT count(DISTINCT worker) FROM batches b WHERE b.run_id = r.id)"
	" FROM runs r";

static int run_rows(sqlite3_stmt *st, store_run_fn fn, void *ctx, bool *found)
{
	int rc = 0, src;

	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_run_info info = {
			.name = (const char *)sqlite3_column_text(st, 0),
			.created_ms = sqlite3_column_int64(st, 1),
			.batches = sqlite3_column_int64(st, 2),
			.step_min = sqlite3_column_int64(st, 3),
			.step_max = sqlite3_column_int64(st, 4),
			.layers = sqlite3_column_int64(st, 5),
			.domains = sqlite3_column_int64(st, 6),
			.workers = sqlite3_column_int64(st, 7),
		};
		*found = true;
		rc = fn(ctx, &info);
		if (rc != 0)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = -EIO;
	sqlite3_finalize(st);
	return rc;
}

int store_runs_last_step(struct store_reader *r, store_run_fn fn, void *ctx)
{
	sqlite3_stmt *st;
	int rc = 0, src;

	if (sqlite3_prepare_v2(r->db,
			       "SELECT name, (SELECT max(step) FROM aggs a WHERE a.run_id = r.id)"
			       " FROM runs r ORDER BY name",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_run_info info = {
			.name = (const char *)sqlite3_column_text(st, 0),
			.batches = sqlite3_column_type(st, 1) != SQLITE_NULL,
			.step_max = sqlite3_column_int64(st, 1),
		};
		rc = fn(ctx, &info);
		if (rc != 0)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = -EIO;
	sqlite3_finalize(st);
	return rc;
}

int store_runs_foreach(struct store_reader *r, store_run_fn fn, void *ctx)
{
	sqlite3_stmt *st;
	char sql[sizeof(run_info_sql) + 32];
	bool found = false;

	snprintf(sql, sizeof(sql), "%s ORDER BY r.name", run_info_sql);
	if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	return run_rows(st, fn, ctx, &found);
}

int store_run_describe(struct store_reader *r, const char *run, store_run_fn fn, void *ctx)
{
	sqlite3_stmt *st;
	char sql[sizeof(run_info_sql) + 32];
	bool found = false;
	int rc;

	snprintf(sql, sizeof(sql), "%s WHERE r.name = ?1", run_info_sql);
	if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, run, -1, SQLITE_STATIC);
	rc = run_rows(st, fn, ctx, &found);
	return rc == 0 && !found ? -ENOENT : rc;
}

static int item_rows(sqlite3 *db, const char *sql, int64_t run_id, store_item_fn fn, void *ctx)
{
	sqlite3_stmt *st;
	int rc = 0, src;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_item item = { 0 };

		item.id = sqlite3_column_int64(st, 0);
		item.name = (const char *)sqlite3_column_text(st, 1);
		item.a = sqlite3_column_int64(st, 2);
		item.b = sqlite3_column_int64(st, 3);
		item.c = sqlite3_column_count(st) > 4 ? sqlite3_column_int64(st, 4) : 0;
		item.d = sqlite3_column_count(st) > 5 ? sqlite3_column_int64(st, 5) : 0;
		rc = fn(ctx, &item);
		if (rc != 0)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = -EIO;
	sqlite3_finalize(st);
	return rc;
}

int store_layers_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx)
{
	return item_rows(r->db,
			 "SELECT id, name, channels, 0 FROM layers WHERE run_id = ?1 ORDER BY name",
			 run_id, fn, ctx);
}

int store_domains_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx)
{
	return item_rows(r->db,
			 "SELECT d.id, d.name,"
			 " (SELECT count(*) FROM batches b WHERE b.run_id = d.run_id AND "
			 "b.domain_id = d.id),"
			 " (SELECT count(DISTINCT step) FROM aggs a"
			 "  WHERE a.run_id = d.run_id AND a.domain_id = d.id),"
			 " (SELECT count(DISTINCT layer_id) FROM aggs a"
			 "  WHERE a.run_id = d.run_id AND a.domain_id = d.id),"
			 " (SELECT coalesce(sum(n), 0) FROM aggs a"
			 "  WHERE a.run_id = d.run_id AND a.domain_id = d.id)"
			 " FROM domains d WHERE d.run_id = ?1 ORDER BY d.name",
			 run_id, fn, ctx);
}

int store_workers_foreach(struct store_reader *r, int64_t run_id, store_item_fn fn, void *ctx)
{
	return item_rows(r->db,
			 "SELECT 0, worker, count(*), max(step) FROM batches WHERE run_id = ?1"
			 " GROUP BY worker ORDER BY worker",
			 run_id, fn, ctx);
}

/* --- snapshots, read side ------------------------------------------------------------ */

static void snapshot_header(sqlite3_stmt *st, struct store_snapshot *snap)
{
	snprintf(snap->label, sizeof(snap->label), "%s", sqlite3_column_text(st, 1));
	snap->step = sqlite3_column_int64(st, 2);
	snap->window = sqlite3_column_int64(st, 3);
	snprintf(snap->domain, sizeof(snap->domain), "%s", sqlite3_column_text(st, 4));
	snprintf(snap->estimator, sizeof(snap->estimator), "%s", sqlite3_column_text(st, 5));
	snap->created_ms = sqlite3_column_int64(st, 6);
}

static int snapshot_layers(struct store_reader *r, int64_t snap_id, struct store_snapshot *snap)
{
	sqlite3_stmt *st;
	int rc = 0, src;

	if (sqlite3_prepare_v2(r->db,
			       "SELECT name, channels, count, batches, data"
			       " FROM snapshot_layers WHERE snapshot_id = ?1 ORDER BY name",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_int64(st, 1, snap_id);
	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_snapshot_layer *p, *l;
		size_t c = (size_t)sqlite3_column_int64(st, 1);

		if ((size_t)sqlite3_column_bytes(st, 4) != 2 * c * sizeof(double)) {
			rc = -EIO;
			break;
		}
		p = realloc(snap->layers, (snap->n_layers + 1) * sizeof(*p));
		if (p == NULL) {
			rc = -ENOMEM;
			break;
		}
		snap->layers = p;
		l = &p[snap->n_layers];
		memset(l, 0, sizeof(*l));
		l->name = strdup((const char *)sqlite3_column_text(st, 0));
		l->mean = malloc(2 * c * sizeof(double));
		if (l->name == NULL || l->mean == NULL) {
			free(l->name);
			free(l->mean);
			rc = -ENOMEM;
			break;
		}
		snap->n_layers++;
		l->channels = c;
		l->count = sqlite3_column_int64(st, 2);
		l->batches = sqlite3_column_int64(st, 3);
		memcpy(l->mean, sqlite3_column_blob(st, 4), 2 * c * sizeof(double));
		l->var = l->mean + c;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = -EIO;
	sqlite3_finalize(st);
	return rc;
}

static const char snapshot_sql[] =
	"SELECT id, label, step, win, domain, estimator, created FROM snapshots WHERE run_id = ?1";

int store_snapshot_get(struct store_reader *r, int64_t run_id, const char *label, bool with_layers,
		       struct store_snapshot **out)
{
	struct store_snapshot *snap;
	sqlite3_stmt *st;
	char sql[sizeof(snapshot_sql) + 32];
	int64_t id = 0;
	int rc;

	*out = NULL;
	snprintf(sql, sizeof(sql), "%s AND label = ?2", snapshot_sql);
	if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	snap = calloc(1, sizeof(*snap));
	if (snap == NULL) {
		sqlite3_finalize(st);
		return -ENOMEM;
	}
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, label, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		id = sqlite3_column_int64(st, 0);
		snapshot_header(st, snap);
	}
	sqlite3_finalize(st);
	rc = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : -EIO;
	if (rc == 0 && with_layers)
		rc = snapshot_layers(r, id, snap);
	if (rc < 0) {
		store_snapshot_free(snap);
		return rc;
	}
	*out = snap;
	return 0;
}

int store_snapshots_foreach(struct store_reader *r, int64_t run_id, store_snapshot_fn fn, void *ctx)
{
	struct store_snapshot snap;
	sqlite3_stmt *st;
	char sql[sizeof(snapshot_sql) + 32];
	int rc = 0, src;

	snprintf(sql, sizeof(sql), "%s ORDER BY label", snapshot_sql);
	if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		memset(&snap, 0, sizeof(snap));
		snapshot_header(st, &snap);
		rc = fn(ctx, &snap);
		if (rc != 0)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = -EIO;
	sqlite3_finalize(st);
	return rc;
}

/* --- one layer across steps --------------------------------------------------------- */

static int row_walk(sqlite3_stmt *st, bool ema, store_row_fn fn, void *ctx)
{
	int rc = 0, src;

	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_row row = {
			.rowid = sqlite3_column_int64(st, 0),
			.step = sqlite3_column_int64(st, 1),
			.domain_id = sqlite3_column_int64(st, 2),
			.n = sqlite3_column_int64(st, 3),
			.batches = ema ? 0 : sqlite3_column_int64(st, 4),
			.seq = ema ? sqlite3_column_int64(st, 4) : 0,
			.nbs_min = ema ? 0 : sqlite3_column_int64(st, 5),
			.nbs_max = ema ? 0 : sqlite3_column_int64(st, 6),
			.worker = ema ? (const char *)sqlite3_column_text(st, 5) : NULL,
		};
		rc = fn(ctx, &row);
		if (rc != 0)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE)
		rc = -EIO;
	sqlite3_finalize(st);
	return rc;
}

/*
 * Run a per-layer row query with parameters ?1 run, ?2 domain, ?3 layer,
 * ?4 and ?5 the step range and, for EMA rows (ema), ?6 the worker when
 * given; hand each row to fn.
 */
static int layer_rows(struct store_reader *r, const char *sql, bool ema, int64_t run_id,
		      int64_t domain_id, int64_t layer_id, int64_t step_lo, int64_t step_hi,
		      const char *worker, store_row_fn fn, void *ctx)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, layer_id);
	sqlite3_bind_int64(st, 4, step_lo);
	sqlite3_bind_int64(st, 5, step_hi);
	if (worker != NULL)
		sqlite3_bind_text(st, 6, worker, -1, SQLITE_STATIC);
	return row_walk(st, ema, fn, ctx);
}

int store_layer_aggs(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t layer_id,
		     int64_t step_lo, int64_t step_hi, store_row_fn fn, void *ctx)
{
	const char *sql =
		domain_id < 0 ? "SELECT id, step, domain_id, n, k, nbs_min, nbs_max FROM aggs"
				" WHERE run_id = ?1 AND layer_id = ?3 AND step > ?4 AND step <= ?5"
				" AND ?2 < 0 ORDER BY step, domain_id"
			      : "SELECT id, step, domain_id, n, k, nbs_min, nbs_max FROM aggs"
				" WHERE run_id = ?1 AND layer_id = ?3 AND domain_id = ?2"
				" AND step > ?4 AND step <= ?5 ORDER BY step";

	return layer_rows(r, sql, false, run_id, domain_id, layer_id, step_lo, step_hi, NULL, fn,
			  ctx);
}

int store_layer_emas(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t layer_id,
		     const char *worker, int64_t step_lo, int64_t step_hi, store_row_fn fn,
		     void *ctx)
{
	const char *sql =
		worker != NULL
			? "SELECT id, step, domain_id, 0, seq, worker FROM emas WHERE run_id = ?1"
			  " AND domain_id = ?2 AND layer_id = ?3 AND worker = ?6"
			  " AND step > ?4 AND step <= ?5 ORDER BY step"
			: "SELECT id, step, domain_id, 0, seq, worker FROM emas WHERE run_id = ?1"
			  " AND domain_id = ?2 AND layer_id = ?3"
			  " AND step > ?4 AND step <= ?5 ORDER BY step, worker";

	return layer_rows(r, sql, true, run_id, domain_id, layer_id, step_lo, step_hi, worker, fn,
			  ctx);
}

int store_row_read(struct store_reader *r, enum store_blob which, int64_t rowid, size_t first,
		   size_t n, double *out)
{
	sqlite3_blob **blob = which == STORE_BLOB_AGG ? &r->agg_blob : &r->ema_blob;
	const char *table = which == STORE_BLOB_AGG ? "aggs" : "emas";
	int rc;

	/* One open blob handle per table, moved from row to row. */
	if (*blob != NULL)
		rc = sqlite3_blob_reopen(*blob, rowid);
	else
		rc = sqlite3_blob_open(r->db, "main", table, "data", rowid, 0, blob);
	if (rc != SQLITE_OK) {
		sqlite3_blob_close(*blob);
		*blob = NULL;
		return -EIO;
	}
	if (sqlite3_blob_read(*blob, out, (int)(n * sizeof(double)),
			      (int)(first * sizeof(double))) != SQLITE_OK)
		return -EIO;
	return 0;
}

int store_ema_first_worker(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step,
			   char *worker, size_t size)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(r->db,
			       "SELECT min(worker) FROM emas WHERE run_id = ?1"
			       " AND domain_id = ?2 AND step = ?3",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, step);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
		snprintf(worker, size, "%s", sqlite3_column_text(st, 0));
	else if (rc == SQLITE_ROW)
		rc = SQLITE_DONE;
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : -EIO;
}

int store_late_gen(struct store_reader *r, int64_t run_id, int64_t *gen)
{
	int rc = query_int64(r->db, "SELECT max(id) FROM late_writes WHERE run_id = ?1 AND ?2 = 0",
			     run_id, 0, NULL, gen);

	if (rc == -ENOENT) {
		*gen = 0;
		rc = 0;
	}
	return rc;
}

int store_late_since(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t gen,
		     int64_t step)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(
		    r->db,
		    "SELECT 1 FROM late_writes WHERE run_id = ?1 AND id > ?2"
		    " AND step <= ?3 AND (?4 < 0 OR domain_id = ?4 OR domain_id < 0) LIMIT 1",
		    -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, gen);
	sqlite3_bind_int64(st, 3, step);
	sqlite3_bind_int64(st, 4, domain_id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -EIO;
}
