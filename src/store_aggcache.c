/*
 * store_aggcache: the writer's cache of per-step aggregates.
 *
 * Uploads of one step from many workers all merge into the same (run,
 * domain, step, layer) rows; reading and writing each row once per upload
 * would move the whole blob through SQLite every time. Instead a group
 * merges into these in-memory copies and flushes each dirty one once, just
 * before COMMIT. Entries stay cached after the commit (clean), so the next
 * group of the same step does not read them back; entries not touched by
 * the last two groups are dropped, and past a budget (open-steps-mb) every
 * entry is written early and dropped. After a failed commit the whole cache is
 * dropped, since it may hold merges that never reached the disk (see
 * docs/DESIGN.md, "Data flow"). Writer thread only.
 */
#include "store_private.h"

#include <string.h>

struct store_aggcache_entry {
	struct store_aggcache_entry *next; /* bucket chain */
	int64_t run_id, domain_id, step, layer_id;
	size_t channels;
	int64_t n, batches, nbs_min, nbs_max;
	double *data; /* STATS_AGG_ARRAYS * channels */
	bool dirty;
	bool stored;	/* its row exists (else the flush inserts it: store_bytes.c) */
	uint64_t group; /* last group that touched it */
};

static size_t bucket_of(int64_t run_id, int64_t domain_id, int64_t step, int64_t layer_id)
{
	uint64_t h = (uint64_t)run_id * 0x9E3779B97F4A7C15ull;

	h ^= (uint64_t)domain_id * 0xC2B2AE3D27D4EB4Full;
	h ^= (uint64_t)step * 0x165667B19E3779F9ull;
	h ^= (uint64_t)layer_id * 0x27D4EB2F165667C5ull;
	return (size_t)(h >> 40) % STORE_AGGCACHE_BUCKETS;
}

static size_t entry_bytes(const struct store_aggcache_entry *e)
{
	return STATS_AGG_ARRAYS * e->channels * sizeof(double);
}

static void entry_free(struct store_aggcache_entry *e)
{
	free(e->data);
	free(e);
}

/* Drop every entry that `drop` selects. */
static void drop_if(struct store_aggcache *c,
		    bool (*drop)(const struct store_aggcache *c,
				 const struct store_aggcache_entry *e, int64_t arg),
		    int64_t arg)
{
	size_t i;

	for (i = 0; i < STORE_AGGCACHE_BUCKETS; i++) {
		struct store_aggcache_entry **pp = &c->buckets[i];

		while (*pp != NULL) {
			struct store_aggcache_entry *e = *pp;

			if (drop(c, e, arg)) {
				*pp = e->next;
				c->bytes -= entry_bytes(e);
				entry_free(e);
			} else {
				pp = &e->next;
			}
		}
	}
}

/* Every entry (all), or those no group touched since the one before last. */
static bool idle_or_all(const struct store_aggcache *c, const struct store_aggcache_entry *e,
			int64_t all)
{
	return all || e->group + 1 < c->group;
}

static bool of_run(const struct store_aggcache *c, const struct store_aggcache_entry *e,
		   int64_t run_id)
{
	return e->run_id == run_id;
}

struct agg_read {
	struct store_aggcache_entry *e;
	size_t bytes;
	bool wrong_size;
};

static int read_agg(void *ctx, sqlite3_stmt *st)
{
	struct agg_read *a = ctx;
	struct store_aggcache_entry *e = a->e;

	if ((size_t)sqlite3_column_bytes(st, 4) != a->bytes) {
		a->wrong_size = true;
		return -EIO;
	}
	e->n = sqlite3_column_int64(st, 0);
	e->batches = sqlite3_column_int64(st, 1);
	e->nbs_min = sqlite3_column_int64(st, 2);
	e->nbs_max = sqlite3_column_int64(st, 3);
	memcpy(e->data, sqlite3_column_blob(st, 4), a->bytes);
	return 1;
}

/* Find the cached aggregate, reading it from the database on first use. */
static struct store_aggcache_entry *entry_get(struct store *s, int64_t run_id, int64_t domain_id,
					      int64_t step, int64_t layer_id, size_t channels,
					      struct bn_error *err)
{
	struct store_aggcache *c = &s->aggcache;
	size_t bytes = STATS_AGG_ARRAYS * channels * sizeof(double);
	size_t b = bucket_of(run_id, domain_id, step, layer_id);
	sqlite3_stmt *st = s->wstmt[W_AGG_GET];
	struct store_aggcache_entry *e;
	struct agg_read rd;
	int rc;

	for (e = c->buckets[b]; e != NULL; e = e->next)
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
	e->channels = channels;

	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, step);
	sqlite3_bind_int64(st, 4, layer_id);
	rd.e = e;
	rd.bytes = bytes;
	rd.wrong_size = false;
	rc = store_sql_rows(st, read_agg, &rd);
	e->stored = rc > 0;
	if (rc == 0) {
		memset(e->data, 0, bytes);
	} else if (rc < 0) {
		entry_free(e);
		store_sql_error(err, s->wdb,
				rd.wrong_size ? "stored aggregate has the wrong size"
					      : "reading aggregate");
		return NULL;
	}
	e->next = c->buckets[b];
	c->buckets[b] = e;
	c->bytes += bytes;
	return e;
}

int store_aggcache_merge(struct store *s, int64_t run_id, int64_t domain_id, int64_t step,
			 int64_t layer_id, enum stats_var_kind kind, const struct ingest_layer *l,
			 struct bn_error *err)
{
	struct store_aggcache_entry *e =
		entry_get(s, run_id, domain_id, step, layer_id, l->channels, err);
	struct stats_agg a;

	if (e == NULL)
		return -EIO;
	stats_agg_view(&a, e->data, e->channels);
	a.n = e->n;
	a.k = e->batches;
	a.nbs_min = e->nbs_min;
	a.nbs_max = e->nbs_max;
	stats_agg_add_batch(&a, l->count, l->mean, l->var, kind);
	e->n = a.n;
	e->batches = a.k;
	e->nbs_min = a.nbs_min;
	e->nbs_max = a.nbs_max;
	e->dirty = true;
	e->group = s->aggcache.group;
	return 0;
}

int store_aggcache_flush(struct store *s, size_t *rows)
{
	sqlite3_stmt *st = s->wstmt[W_AGG_PUT];
	size_t i;

	*rows = 0;
	for (i = 0; i < STORE_AGGCACHE_BUCKETS; i++) {
		struct store_aggcache_entry *e;

		for (e = s->aggcache.buckets[i]; e != NULL; e = e->next) {
			if (!e->dirty)
				continue;
			sqlite3_bind_int64(st, 1, e->run_id);
			sqlite3_bind_int64(st, 2, e->domain_id);
			sqlite3_bind_int64(st, 3, e->step);
			sqlite3_bind_int64(st, 4, e->layer_id);
			sqlite3_bind_int64(st, 5, e->n);
			sqlite3_bind_int64(st, 6, e->batches);
			sqlite3_bind_int64(st, 7, e->nbs_min);
			sqlite3_bind_int64(st, 8, e->nbs_max);
			sqlite3_bind_blob(st, 9, e->data, (int)entry_bytes(e), SQLITE_STATIC);
			if (store_sql_run(st) < 0)
				return -EIO;
			if (!e->stored)
				store_bytes_add(s, e->run_id, (int64_t)entry_bytes(e));
			e->stored = true;
			e->dirty = false;
			(*rows)++;
		}
	}
	return 0;
}

int store_aggcache_bound(struct store *s)
{
	size_t rows;

	if (s->aggcache.bytes <= s->opt.open_steps_bytes)
		return 0;
	if (store_aggcache_flush(s, &rows) < 0)
		return -EIO;
	drop_if(&s->aggcache, idle_or_all, true);
	return 0;
}

void store_aggcache_end_group(struct store_aggcache *c, bool failed)
{
	drop_if(c, idle_or_all, failed);
	c->group++;
}

void store_aggcache_drop_run(struct store_aggcache *c, int64_t run_id)
{
	drop_if(c, of_run, run_id);
}

void store_aggcache_clear(struct store_aggcache *c)
{
	drop_if(c, idle_or_all, true);
}
