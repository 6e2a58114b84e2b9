/*
 * store_history: bounded history (docs/DESIGN.md, "History"). The newest
 * history_full_steps steps of each (run, domain) stay per step; older ones
 * are merged, exactly, into aligned buckets whose width grows ×10 per tier:
 * a tier-t bucket (e - 10^t, e], e a multiple of 10^t, is formed once
 * latest - e >= t * history_full_steps. A bucket row is the Chan merge of
 * the rows it replaces, stored at its last step with its width; per worker
 * and layer only the bucket's last worker EMA stays (moved to the bucket's
 * end); and before tier-1 buckets replace per-step rows, the simulated
 * EMA's replay state at the bucket end is computed from them for every
 * momentum of sim_momenta, so that replays over bucketed history stay
 * exact for those momenta.
 *
 * The writer runs bounded passes between groups, each in its own
 * transaction, over the (run, domain) pairs that received uploads (and,
 * after a start, over every pair once). Writer thread only.
 */
#include "store_private.h"

#include <string.h>

#include "log.h"

/*
 * Work per pass at most, so that uploads never wait long behind one: a
 * bucket costs 1 (it reads 10 rows per layer), a checkpoint the whole
 * budget (it reads 64).
 */
#define HISTORY_BUDGET 8

static int64_t pow10_i64(int t)
{
	int64_t w = 1;

	while (t-- > 0)
		w *= 10;
	return w;
}

/* A one-row query with an int64 (or NULL) in column 0. */
struct opt_i64 {
	bool have;
	int64_t v;
};

static int read_opt_i64(void *ctx, sqlite3_stmt *st)
{
	struct opt_i64 *o = ctx;

	if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
		o->have = true;
		o->v = sqlite3_column_int64(st, 0);
	}
	return 1;
}

/* Run st (its ?1.. bound to a[0..n)) for an optional int64: 0, or -EIO. */
static int query_opt(sqlite3_stmt *st, const int64_t *a, int n, struct opt_i64 *out)
{
	*out = (struct opt_i64){ 0 };
	store_sql_bind_ints(st, a, n);
	return store_sql_rows(st, read_opt_i64, out) < 0 ? -EIO : 0;
}

/* Run st with ?1.. bound to a[0..n), expecting no row: 0 or -EIO. */
static int run_ints(sqlite3_stmt *st, const int64_t *a, int n)
{
	store_sql_bind_ints(st, a, n);
	return store_sql_run(st);
}

/* --- the pending (run, domain) pairs ------------------------------------------ */

void store_history_touch(struct store *s, int64_t run_id, int64_t domain_id, int64_t late_step)
{
	struct store_history_pair *p;
	size_t i;

	for (i = s->history.n; i > 0; i--) {
		p = &s->history.pending[i - 1];
		if (p->run_id == run_id && p->domain_id == domain_id) {
			if (late_step < p->late_floor)
				p->late_floor = late_step;
			return;
		}
	}
	if (s->history.n == s->history.cap) {
		size_t cap = s->history.cap ? 2 * s->history.cap : 64;

		p = realloc(s->history.pending, cap * sizeof(*p));
		if (p == NULL)
			return; /* bucketed on its next upload instead */
		s->history.pending = p;
		s->history.cap = cap;
	}
	s->history.pending[s->history.n].run_id = run_id;
	s->history.pending[s->history.n].domain_id = domain_id;
	s->history.pending[s->history.n].late_floor = late_step;
	s->history.pending[s->history.n].not_before = 0;
	s->history.n++;
}

static int touch_row(void *ctx, sqlite3_stmt *st)
{
	store_history_touch(ctx, sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
			    INT64_MAX);
	return 0;
}

void store_history_touch_all(struct store *s)
{
	(void)store_sql_rows(s->wstmt[W_HIST_DOMAINS], touch_row, s);
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool store_history_due(const struct store *s)
{
	int64_t now;
	size_t i;

	if (s->history.n == 0)
		return false;
	now = mono_ms();
	for (i = 0; i < s->history.n; i++)
		if (s->history.pending[i].not_before <= now)
			return true;
	return false;
}

int store_history_bucketed_through(struct store *s, int64_t run_id, int64_t domain_id, bool *have,
				   int64_t *step)
{
	struct opt_i64 o;
	int64_t a[2] = { run_id, domain_id };

	if (query_opt(s->wstmt[W_HIST_DONE1], a, 2, &o) < 0)
		return -EIO;
	*have = o.have;
	*step = o.v;
	return 0;
}

/* --- forming one bucket ----------------------------------------------------------- */

/* One layer of the bucket being formed. */
struct bucket_layer {
	int64_t layer_id;
	struct stats_agg agg;
	/* tier 1: the replay state per kept momentum, [2 * channels] each */
	double *sim;
	int64_t applied[STORE_SIM_MOMENTA_MAX];
	bool sim_ok[STORE_SIM_MOMENTA_MAX];
};

struct bucket {
	struct store *s;
	int64_t run_id, domain_id, lo, end;
	int tier;
	struct bucket_layer *layers;
	size_t n, cap;
	double *row; /* scratch: one row's arrays */
	size_t row_cap;
	int64_t row_bytes; /* of the rows read (the ones a bucket replaces) */
	int rc;
};

static void bucket_free(struct bucket *b)
{
	size_t i;

	for (i = 0; i < b->n; i++) {
		stats_agg_free(&b->layers[i].agg);
		free(b->layers[i].sim);
	}
	free(b->layers);
	free(b->row);
}

struct sim_read {
	double *state;
	size_t bytes;
	int64_t applied, step;
};

static int read_sim(void *ctx, sqlite3_stmt *st)
{
	struct sim_read *r = ctx;

	if ((size_t)sqlite3_column_bytes(st, 1) != r->bytes)
		return 2;
	r->applied = sqlite3_column_int64(st, 0);
	r->step = sqlite3_column_int64(st, 2);
	memcpy(r->state, sqlite3_column_blob(st, 1), r->bytes);
	return 1;
}

/*
 * The replay state each kept momentum starts the range (lo, end] from: the
 * initial 0/1 when the layer has no data at or before lo, else the latest
 * kept state at or before lo, provided no data of the layer lies between
 * it and lo; a momentum without one (added to sim_momenta later) is left
 * out for this layer.
 */
static int sim_start(struct bucket *b, struct bucket_layer *l)
{
	struct store *s = b->s;
	size_t c = l->agg.channels, m, i;
	struct opt_i64 prev;
	int64_t a[4] = { b->run_id, b->domain_id, l->layer_id, b->lo };

	l->sim = malloc(s->opt.n_sim_momenta * 2 * c * sizeof(double) + 1);
	if (l->sim == NULL)
		return -ENOMEM;
	if (query_opt(s->wstmt[W_HIST_PREV_STEP], a, 4, &prev) < 0)
		return -EIO;
	for (m = 0; m < s->opt.n_sim_momenta; m++) {
		double *st = l->sim + m * 2 * c;
		sqlite3_stmt *q = s->wstmt[W_HIST_SIM_GET];
		struct sim_read rd = { st, 2 * c * sizeof(double), 0, 0 };
		int rc;

		l->applied[m] = 0;
		l->sim_ok[m] = true;
		if (!prev.have) {
			for (i = 0; i < c; i++) {
				st[i] = 0.0;
				st[c + i] = 1.0;
			}
			continue;
		}
		sqlite3_bind_int64(q, 1, b->run_id);
		sqlite3_bind_int64(q, 2, b->domain_id);
		sqlite3_bind_int64(q, 3, l->layer_id);
		sqlite3_bind_double(q, 4, s->opt.sim_momenta[m]);
		sqlite3_bind_int64(q, 5, b->lo);
		rc = store_sql_rows(q, read_sim, &rd);
		if (rc < 0)
			return -EIO;
		l->sim_ok[m] = rc == 1 && rd.step >= prev.v;
		l->applied[m] = rd.applied;
	}
	return 0;
}

static struct bucket_layer *bucket_layer_get(struct bucket *b, int64_t layer_id, size_t channels)
{
	struct bucket_layer *l;

	if (b->n > 0 && b->layers[b->n - 1].layer_id == layer_id)
		return b->layers[b->n - 1].agg.channels == channels ? &b->layers[b->n - 1] : NULL;
	if (b->n == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 64;

		l = realloc(b->layers, cap * sizeof(*l));
		if (l == NULL)
			return NULL;
		b->layers = l;
		b->cap = cap;
	}
	l = &b->layers[b->n];
	memset(l, 0, sizeof(*l));
	l->layer_id = layer_id;
	if (stats_agg_init(&l->agg, channels) < 0)
		return NULL;
	b->n++;
	if (b->tier <= 1 && b->s->opt.n_sim_momenta > 0 && sim_start(b, l) < 0)
		return NULL;
	return l;
}

/* One row of the bucket (rows come by layer, then step): merge it in. */
static int bucket_row(void *ctx, sqlite3_stmt *st)
{
	struct bucket *b = ctx;
	struct store *s = b->s;
	size_t bytes = (size_t)sqlite3_column_bytes(st, 6);
	size_t c = bytes / (STATS_AGG_ARRAYS * sizeof(double)), m, i;
	struct bucket_layer *l;
	struct stats_agg row;

	if (c == 0 || bytes % (STATS_AGG_ARRAYS * sizeof(double)) != 0)
		return -EIO;
	if (store_scratch_reserve(&b->row, &b->row_cap, c) < 0)
		return -ENOMEM;
	l = bucket_layer_get(b, sqlite3_column_int64(st, 0), c);
	if (l == NULL)
		return -ENOMEM;
	memcpy(b->row, sqlite3_column_blob(st, 6), bytes);
	b->row_bytes += (int64_t)bytes;
	stats_agg_view(&row, b->row, c);
	row.n = sqlite3_column_int64(st, 2);
	row.k = sqlite3_column_int64(st, 3);
	row.nbs_min = sqlite3_column_int64(st, 4);
	row.nbs_max = sqlite3_column_int64(st, 5);
	if (b->tier >= 1)
		stats_agg_merge(&l->agg, &row);
	/*
	 * Tier 1 replaces per-step rows, and a checkpoint (tier 0) sums them up:
	 * replay them, as replay.c would, one step each.
	 */
	for (m = 0; b->tier <= 1 && m < s->opt.n_sim_momenta; m++) {
		double *rm = l->sim + m * 2 * c, *rv = rm + c;

		if (!l->sim_ok[m])
			continue;
		for (i = 0; i < c; i++)
			stats_ema_step(s->opt.sim_momenta[m], row.n, row.mean[i], row.m2[i], &rm[i],
				       &rv[i]);
		l->applied[m]++;
	}
	return 0;
}

static int bucket_write(struct bucket *b)
{
	struct store *s = b->s;
	int64_t range[4] = { b->run_id, b->domain_id, b->lo, b->end }, gone;
	size_t i, m;

	if (b->tier >= 1) {
		if (run_ints(s->wstmt[W_HIST_AGGS_DEL], range, 4) < 0)
			return -EIO;
		store_bytes_add(s, b->run_id, -b->row_bytes);
	}
	/* the checkpoints inside a new tier-1 bucket would resume before its row */
	if (b->tier == 1) {
		if (store_bytes_of(s->wstmt[W_SUM_SIMS_RANGE], range, 4, &gone) < 0 ||
		    run_ints(s->wstmt[W_HIST_SIM_CLEAR], range, 4) < 0)
			return -EIO;
		store_bytes_add(s, b->run_id, -gone);
	}
	for (i = 0; i < b->n; i++) {
		const struct bucket_layer *l = &b->layers[i];
		sqlite3_stmt *st = s->wstmt[W_HIST_AGG_INS];
		size_t c = l->agg.channels;

		/* a checkpoint (tier 0) writes replay states only */
		if (b->tier >= 1) {
			sqlite3_bind_int64(st, 1, b->run_id);
			sqlite3_bind_int64(st, 2, b->domain_id);
			sqlite3_bind_int64(st, 3, b->end);
			sqlite3_bind_int64(st, 4, l->layer_id);
			sqlite3_bind_int64(st, 5, l->agg.n);
			sqlite3_bind_int64(st, 6, l->agg.k);
			sqlite3_bind_int64(st, 7, l->agg.nbs_min);
			sqlite3_bind_int64(st, 8, l->agg.nbs_max);
			sqlite3_bind_blob(st, 9, l->agg.mean,
					  (int)(STATS_AGG_ARRAYS * c * sizeof(double)),
					  SQLITE_STATIC);
			sqlite3_bind_int64(st, 10, b->end - b->lo);
			if (store_sql_run(st) < 0)
				return -EIO;
			store_bytes_add(s, b->run_id,
					(int64_t)(STATS_AGG_ARRAYS * c * sizeof(double)));
		}
		for (m = 0; b->tier <= 1 && m < s->opt.n_sim_momenta; m++) {
			if (!l->sim_ok[m])
				continue;
			st = s->wstmt[W_HIST_SIM_PUT];
			sqlite3_bind_int64(st, 1, b->run_id);
			sqlite3_bind_int64(st, 2, b->domain_id);
			sqlite3_bind_int64(st, 3, l->layer_id);
			sqlite3_bind_double(st, 4, s->opt.sim_momenta[m]);
			sqlite3_bind_int64(st, 5, b->end);
			sqlite3_bind_int64(st, 6, l->applied[m]);
			sqlite3_bind_blob(st, 7, l->sim + m * 2 * c, (int)(2 * c * sizeof(double)),
					  SQLITE_STATIC);
			if (store_sql_run(st) < 0)
				return -EIO;
			store_bytes_add(s, b->run_id, (int64_t)(2 * c * sizeof(double)));
		}
	}
	if (b->tier == 0)
		return 0;
	if (store_bytes_of(s->wstmt[W_SUM_EMAS_INNER], range, 4, &gone) < 0 ||
	    run_ints(s->wstmt[W_HIST_EMAS_DEL], range, 4) < 0 ||
	    run_ints(s->wstmt[W_HIST_EMAS_MOVE], range, 4) < 0)
		return -EIO;
	store_bytes_add(s, b->run_id, -gone);
	if (b->tier > 1) {
		if (store_bytes_of(s->wstmt[W_SUM_SIMS_INNER], range, 4, &gone) < 0 ||
		    run_ints(s->wstmt[W_HIST_SIM_DEL], range, 4) < 0 ||
		    run_ints(s->wstmt[W_HIST_SIM_MOVE], range, 4) < 0)
			return -EIO;
		store_bytes_add(s, b->run_id, -gone);
	}
	return store_drift_bucket(s, b->run_id, b->domain_id, b->lo, b->end);
}

/*
 * Merge the rows of (lo, end] of the domain into one tier-`tier` bucket;
 * tier 0: take the replay checkpoint at `end` from them, merging nothing.
 */
static int bucket_form(struct store *s, int64_t run_id, int64_t domain_id, int tier, int64_t lo,
		       int64_t end)
{
	struct bucket b = {
		.s = s, .run_id = run_id, .domain_id = domain_id, .lo = lo, .end = end, .tier = tier
	};
	sqlite3_stmt *st = s->wstmt[W_HIST_ROWS];
	int rc;

	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	sqlite3_bind_int64(st, 3, lo);
	sqlite3_bind_int64(st, 4, end);
	rc = store_sql_rows(st, bucket_row, &b);
	if (rc == 0)
		rc = bucket_write(&b);
	bucket_free(&b);
	return rc < 0 ? rc : 0;
}

/* --- one domain ------------------------------------------------------------------ */

struct tiers {
	bool have[STORE_HISTORY_TIERS + 1];
	int64_t done[STORE_HISTORY_TIERS + 1];
};

static int read_tier(void *ctx, sqlite3_stmt *st)
{
	struct tiers *t = ctx;
	int64_t tier = sqlite3_column_int64(st, 0);

	if (tier >= 0 && tier <= STORE_HISTORY_TIERS) {
		t->have[tier] = true;
		t->done[tier] = sqlite3_column_int64(st, 1);
	}
	return 0;
}

/*
 * Replay checkpoints in the per-step part (tier 0 of the history table: the
 * last one taken): the state of every kept momentum at each multiple of
 * STORE_HISTORY_CKPT_EVERY, once the domain is STORE_HISTORY_CKPT_EVERY steps past it,
 * so that a simulated EMA after a restart replays at most that many steps.
 * A late write deletes those at or after its step (store_batch.c); while
 * late uploads keep coming (a backfill, a lagging worker), no checkpoint is
 * taken at or above the lowest step they reached since the last pass, which
 * the next one would delete again.
 */
static int checkpoints(struct store *s, int64_t run_id, int64_t domain_id, int64_t latest,
		       int64_t late_floor, struct tiers *tiers, int *budget, bool dry)
{
	int64_t from = -1;

	if (s->opt.n_sim_momenta == 0)
		return 0;
	if (tiers->have[0])
		from = tiers->done[0];
	if (tiers->have[1] && tiers->done[1] > from)
		from = tiers->done[1]; /* bucketed: the bucket ends hold the states */
	while (*budget > 0) {
		int64_t q[3] = { run_id, domain_id, from }, put[4], at;
		struct opt_i64 next;

		if (query_opt(s->wstmt[W_HIST_NEXT_STEP], q, 3, &next) < 0)
			return -EIO;
		if (!next.have || next.v > INT64_MAX - STORE_HISTORY_CKPT_EVERY)
			return 0;
		at = (next.v + STORE_HISTORY_CKPT_EVERY - 1) / STORE_HISTORY_CKPT_EVERY *
		     STORE_HISTORY_CKPT_EVERY;
		if (at > latest - STORE_HISTORY_CKPT_EVERY)
			return 0;
		if (at >= late_floor)
			return 2; /* held back: look again once the late uploads stop */
		if (dry)
			return 1;
		if (bucket_form(s, run_id, domain_id, 0, from, at) < 0)
			return -EIO;
		put[0] = run_id;
		put[1] = domain_id;
		put[2] = 0;
		put[3] = at;
		if (run_ints(s->wstmt[W_HIST_PUT], put, 4) < 0)
			return -EIO;
		tiers->have[0] = true;
		tiers->done[0] = from = at;
		*budget = 0;
	}
	return 1;
}

/*
 * Form the buckets of one domain that are due, at most *budget of them.
 * Returns 1 when the budget ran out (more may be due), 0 when none is
 * left, or a negative errno. With dry, form none: 1 when one is due.
 */
static int compact_domain(struct store *s, int64_t run_id, int64_t domain_id, int64_t late_floor,
			  int *budget, bool dry)
{
	int64_t h = s->opt.history_full_steps, ids[2] = { run_id, domain_id };
	struct tiers tiers;
	struct opt_i64 latest;
	sqlite3_stmt *st = s->wstmt[W_HIST_GET];
	int t, rc, drift;

	if (query_opt(s->wstmt[W_HIST_MAX_STEP], ids, 2, &latest) < 0)
		return -EIO;
	if (!latest.have)
		return 0;
	memset(&tiers, 0, sizeof(tiers));
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_int64(st, 2, domain_id);
	if (store_sql_rows(st, read_tier, &tiers) < 0)
		return -EIO;
	for (t = 1; h > 0 && t <= STORE_HISTORY_TIERS; t++) {
		int64_t w = pow10_i64(t), limit;

		/* Tier t takes the buckets ending at least t * h steps before the latest. */
		if (latest.v / t < h)
			break;
		limit = latest.v - (int64_t)t * h;
		while (*budget > 0) {
			int64_t from = tiers.have[t] ? tiers.done[t] : -1, end;
			int64_t next_q[3] = { run_id, domain_id, from };
			int64_t put[4];
			struct opt_i64 next;

			if (query_opt(s->wstmt[W_HIST_NEXT_STEP], next_q, 3, &next) < 0)
				return -EIO;
			if (!next.have || next.v > INT64_MAX - w)
				break;
			end = (next.v + w - 1) / w * w; /* steps are >= 0 */
			if (end > limit)
				break;
			/* a coarser tier merges only what the finer one finished */
			if (t > 1 && (!tiers.have[t - 1] || end > tiers.done[t - 1]))
				break;
			if (dry)
				return 1;
			if (bucket_form(s, run_id, domain_id, t, end - w, end) < 0)
				return -EIO;
			tiers.have[t] = true;
			tiers.done[t] = end;
			put[0] = run_id;
			put[1] = domain_id;
			put[2] = t;
			put[3] = end;
			if (run_ints(s->wstmt[W_HIST_PUT], put, 4) < 0)
				return -EIO;
			(*budget)--;
		}
		if (*budget == 0)
			return 1;
	}
	rc = checkpoints(s, run_id, domain_id, latest.v, late_floor, &tiers, budget, dry);
	if (rc < 0 || (rc == 1 && (dry || *budget == 0)))
		return rc;
	drift = store_drift_pass(s, run_id, domain_id, latest.v, late_floor, budget, dry);
	if (drift < 0 || drift == 1)
		return drift;
	return rc > drift ? rc : drift; /* 2 (held back) over 0 (nothing left) */
}

void store_history_run(struct store *s)
{
	struct bn_error err;
	int budget = HISTORY_BUDGET, formed;
	size_t i = 0, kept = 0, due = 0;
	int64_t now;

	/*
	 * Most looks find nothing due (a bucket closes every 10 steps): find
	 * out with plain reads, and take the write lock only for real work.
	 */
	now = mono_ms();
	while (i < s->history.n) {
		struct store_history_pair p = s->history.pending[i++];
		int one = 1, rc;

		if (p.not_before > now) {
			s->history.pending[kept++] = p; /* held: not yet */
			continue;
		}
		rc = compact_domain(s, p.run_id, p.domain_id, p.late_floor, &one, true);
		if (rc < 0) {
			s->history.n = 0;
			return;
		}
		if (rc == 2) {
			/* only checkpoints above the late uploads are due: in a second, without the
			 * floor, unless more late uploads come meanwhile */
			p.late_floor = INT64_MAX;
			p.not_before = now + 1000;
			s->history.pending[kept++] = p;
			continue;
		}
		if (rc > 0) {
			p.not_before = 0;
			s->history.pending[kept++] = p;
			due++;
		}
	}
	s->history.n = kept;
	if (due == 0)
		return;
	i = kept = 0;
	if (store_sql_exec(s->wdb, "BEGIN IMMEDIATE", &err) < 0) {
		s->history.n = 0; /* looked at again on the next upload, not in a loop now */
		return;
	}
	while (i < s->history.n) {
		struct store_history_pair p = s->history.pending[i++];
		int rc;

		if (p.not_before > now) {
			s->history.pending[kept++] = p;
			continue;
		}
		rc = budget > 0 ? compact_domain(s, p.run_id, p.domain_id, p.late_floor, &budget,
						 false)
				: 1;

		if (rc < 0)
			goto fail;
		if (rc == 2) {
			p.late_floor = INT64_MAX;
			p.not_before = now + 1000;
			s->history.pending[kept++] = p;
		} else if (rc > 0) {
			p.late_floor =
				INT64_MAX; /* the next uploads say again how low they reach */
			s->history.pending[kept++] = p; /* more to do: its turn again */
		}
	}
	s->history.n = kept;
	formed = HISTORY_BUDGET - budget;
	if (store_bytes_flush(s) < 0 || store_sql_exec(s->wdb, "COMMIT", &err) < 0)
		goto fail;
	/* The freed pages are reused by the next steps: no vacuum here. */
	if (formed > 0)
		log_debug("history", "buckets=%d pending=%zu", formed, s->history.n);
	return;
fail:
	log_error("history_failed", "error=\"%s\"", sqlite3_errmsg(s->wdb));
	sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
	store_bytes_drop(s);
	/* Try again on the next upload of each pair, not in a loop now. */
	s->history.n = 0;
}
