/*
 * store_snapshot: finalized population statistics under a label
 * (docs/API.md, "Snapshots"): created by the writer inside the group's
 * transaction, recognised when a retry asks for the same again, deleted by
 * the writer (and only so: a stored snapshot is never changed), and read
 * back by readers.
 */
#include "store_private.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

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

	/* against what was asked for: a widened window is still the same request */
	return (!(f & STORE_SNAP_STEP) || want->requested_step == have->requested_step) &&
	       (!(f & STORE_SNAP_WINDOW) ||
		(want->min_batches > 0
			 ? want->min_batches == have->min_batches
			 : have->min_batches == 0 &&
				   want->requested_window == have->requested_window)) &&
	       (!(f & STORE_SNAP_DOMAIN) || strcmp(want->domain, have->domain) == 0) &&
	       (!(f & STORE_SNAP_ESTIMATOR) || strcmp(want->estimator, have->estimator) == 0) &&
	       (!(f & STORE_SNAP_PRIOR) || (strcmp(want->prior, have->prior) == 0 &&
					    want->prior_weight == have->prior_weight)) &&
	       (!(f & STORE_SNAP_TARGET_SE) || want->target_se == have->target_se);
}

/* --- the writer's side ------------------------------------------------------------- */

static int read_params(void *ctx, sqlite3_stmt *st)
{
	struct store_snapshot *have = ctx;

	have->step = sqlite3_column_int64(st, 0);
	have->window = sqlite3_column_int64(st, 1);
	snprintf(have->domain, sizeof(have->domain), "%s", sqlite3_column_text(st, 2));
	snprintf(have->estimator, sizeof(have->estimator), "%s", sqlite3_column_text(st, 3));
	have->requested_step = sqlite3_column_int64(st, 4);
	have->requested_window = sqlite3_column_int64(st, 5);
	have->min_batches = sqlite3_column_int64(st, 6);
	snprintf(have->prior, sizeof(have->prior), "%s", sqlite3_column_text(st, 7));
	have->prior_weight = sqlite3_column_double(st, 8);
	have->target_se = sqlite3_column_double(st, 9);
	return 1;
}

/*
 * Create a snapshot, or recognise a retry: j->res.status becomes 201 or
 * 200; a conflict or a vanished run returns a negative errno with
 * j->res.err filled in.
 */
int store_snapshot_apply(struct store *s, struct store_job *j)
{
	const struct store_snapshot *snap = j->snap;
	struct bn_error *err = &j->res.err;
	struct store_snapshot have;
	sqlite3_stmt *st;
	int64_t run_id, snap_id;
	size_t i;
	int rc;

	rc = store_intern_find_run(s, snap->run, &run_id, err);
	if (rc < 0)
		return rc;

	st = s->wstmt[W_SNAP_GET];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, snap->label, -1, SQLITE_STATIC);
	memset(&have, 0, sizeof(have));
	rc = store_sql_rows(st, read_params, &have);
	if (rc > 0) {
		if (store_snapshot_matches(snap, &have)) {
			j->res.status = 200;
			return 0;
		}
		return bn_error_set(
			err, 409, BN_E_CONFLICT, "label",
			"snapshot %s exists with other parameters (step %lld, window %lld, "
			"domain %s, estimator %s)",
			snap->label, (long long)have.step, (long long)have.window, have.domain,
			have.estimator);
	}
	if (rc < 0)
		return store_sql_error(err, s->wdb, "looking up snapshot");

	st = s->wstmt[W_SNAP_INS];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, snap->label, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, snap->step);
	sqlite3_bind_int64(st, 4, snap->window);
	sqlite3_bind_text(st, 5, snap->domain, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, snap->estimator, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, store_now_ms());
	sqlite3_bind_int64(st, 8, snap->requested_step);
	sqlite3_bind_int64(st, 9, snap->requested_window);
	sqlite3_bind_int64(st, 10, snap->resolution);
	if (snap->min_batches > 0)
		sqlite3_bind_int64(st, 11, snap->min_batches);
	else
		sqlite3_bind_null(st, 11);
	if (snap->prior[0] != '\0') {
		sqlite3_bind_text(st, 12, snap->prior, -1, SQLITE_STATIC);
		sqlite3_bind_double(st, 13, snap->prior_weight);
	} else {
		sqlite3_bind_null(st, 12);
		sqlite3_bind_null(st, 13);
	}
	sqlite3_bind_double(st, 14, snap->target_se);
	if (store_sql_run(st) < 0)
		return store_sql_error(err, s->wdb, "creating snapshot");
	snap_id = sqlite3_last_insert_rowid(s->wdb);
	for (i = 0; i < snap->n_layers; i++) {
		const struct store_snapshot_layer *l = &snap->layers[i];

		st = s->wstmt[W_SNAP_LAYER_INS];
		sqlite3_bind_int64(st, 1, snap_id);
		sqlite3_bind_text(st, 2, l->name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)l->channels);
		sqlite3_bind_int64(st, 4, l->count);
		sqlite3_bind_int64(st, 5, l->batches);
		/* mean and var are one allocation, var right after mean */
		sqlite3_bind_blob(st, 6, l->mean, (int)(2 * l->channels * sizeof(double)),
				  SQLITE_STATIC);
		if (l->has_noise)
			sqlite3_bind_double(st, 7, l->batch_noise);
		else
			sqlite3_bind_null(st, 7);
		if (store_sql_run(st) < 0)
			return store_sql_error(err, s->wdb, "writing snapshot layer");
	}
	j->res.status = 201;
	return 0;
}

/*
 * Delete snapshot j->delete_label of run j->delete_run with its layers:
 * j->res.status becomes 204; an unknown run or label returns a negative
 * errno with a 404 in j->res.err.
 */
int store_snapshot_delete_apply(struct store *s, struct store_job *j)
{
	struct bn_error *err = &j->res.err;
	sqlite3_stmt *st;
	int64_t run_id;
	int rc;

	rc = store_intern_find_run(s, j->delete_run, &run_id, err);
	if (rc < 0)
		return rc;
	st = s->wstmt[W_SNAP_DEL];
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, j->delete_label, -1, SQLITE_STATIC);
	if (store_sql_run(st) < 0)
		return store_sql_error(err, s->wdb, "deleting snapshot");
	if (sqlite3_changes(s->wdb) == 0)
		return bn_error_set(err, 404, BN_E_NOT_FOUND, "label", "run %s has no snapshot %s",
				    j->delete_run, j->delete_label);
	log_info("snapshot_deleted", "run=%s label=%s", j->delete_run, j->delete_label);
	j->res.status = 204;
	return 0;
}

/* --- the readers' side ------------------------------------------------------------ */

static const char snapshot_sql[] =
	"SELECT id, label, step, win, domain, estimator, created, req_step, req_win, resolution,"
	" coalesce(req_auto, 0), coalesce(prior, ''), coalesce(prior_weight, 0), target_se"
	" FROM snapshots WHERE run_id = ?1";

/* The columns of snapshot_sql after the id. */
static void read_header(sqlite3_stmt *st, struct store_snapshot *snap)
{
	snprintf(snap->label, sizeof(snap->label), "%s", sqlite3_column_text(st, 1));
	snap->step = sqlite3_column_int64(st, 2);
	snap->window = sqlite3_column_int64(st, 3);
	snprintf(snap->domain, sizeof(snap->domain), "%s", sqlite3_column_text(st, 4));
	snprintf(snap->estimator, sizeof(snap->estimator), "%s", sqlite3_column_text(st, 5));
	snap->created_ms = sqlite3_column_int64(st, 6);
	snap->requested_step = sqlite3_column_int64(st, 7);
	snap->requested_window = sqlite3_column_int64(st, 8);
	snap->resolution = sqlite3_column_int64(st, 9);
	snap->min_batches = sqlite3_column_int64(st, 10);
	snprintf(snap->prior, sizeof(snap->prior), "%s", sqlite3_column_text(st, 11));
	snap->prior_weight = sqlite3_column_double(st, 12);
	snap->target_se = sqlite3_column_double(st, 13);
}

/* One stored layer, appended to the snapshot (which owns what it gets). */
static int read_layer(void *ctx, sqlite3_stmt *st)
{
	struct store_snapshot *snap = ctx;
	struct store_snapshot_layer *p, *l;
	size_t c = (size_t)sqlite3_column_int64(st, 1);

	if ((size_t)sqlite3_column_bytes(st, 4) != 2 * c * sizeof(double))
		return -EIO;
	p = realloc(snap->layers, (snap->n_layers + 1) * sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	snap->layers = p;
	l = &p[snap->n_layers];
	memset(l, 0, sizeof(*l));
	l->name = strdup((const char *)sqlite3_column_text(st, 0));
	l->mean = malloc(2 * c * sizeof(double));
	if (l->name == NULL || l->mean == NULL) {
		free(l->name);
		free(l->mean);
		return -ENOMEM;
	}
	snap->n_layers++;
	l->channels = c;
	l->count = sqlite3_column_int64(st, 2);
	l->batches = sqlite3_column_int64(st, 3);
	memcpy(l->mean, sqlite3_column_blob(st, 4), 2 * c * sizeof(double));
	l->has_noise = sqlite3_column_type(st, 5) != SQLITE_NULL;
	l->batch_noise = sqlite3_column_double(st, 5);
	l->var = l->mean + c;
	return 0;
}

static int read_layers(struct store_reader *r, int64_t snap_id, struct store_snapshot *snap)
{
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(r->db,
			      "SELECT name, channels, count, batches, data, noise"
			      " FROM snapshot_layers WHERE snapshot_id = ?1 ORDER BY name",
			      &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, snap_id);
	rc = store_sql_rows(st, read_layer, snap);
	sqlite3_finalize(st);
	return rc;
}

struct found_snapshot {
	int64_t id;
	struct store_snapshot *snap;
};

static int read_one(void *ctx, sqlite3_stmt *st)
{
	struct found_snapshot *f = ctx;

	f->id = sqlite3_column_int64(st, 0);
	read_header(st, f->snap);
	return 1;
}

int store_snapshot_get(struct store_reader *r, int64_t run_id, const char *label, bool with_layers,
		       struct store_snapshot **out)
{
	struct found_snapshot f = { 0 };
	sqlite3_stmt *st;
	char sql[sizeof(snapshot_sql) + 32];
	int rc;

	*out = NULL;
	snprintf(sql, sizeof(sql), "%s AND label = ?2", snapshot_sql);
	if (store_sql_prepare(r->db, sql, &st) < 0)
		return -EIO;
	f.snap = calloc(1, sizeof(*f.snap));
	if (f.snap == NULL) {
		sqlite3_finalize(st);
		return -ENOMEM;
	}
	sqlite3_bind_int64(st, 1, run_id);
	sqlite3_bind_text(st, 2, label, -1, SQLITE_STATIC);
	rc = store_sql_rows(st, read_one, &f);
	sqlite3_finalize(st);
	rc = rc > 0 ? 0 : rc == 0 ? -ENOENT : rc;
	if (rc == 0 && with_layers)
		rc = read_layers(r, f.id, f.snap);
	if (rc < 0) {
		store_snapshot_free(f.snap);
		return rc;
	}
	*out = f.snap;
	return 0;
}

struct snapshot_walk {
	store_snapshot_fn fn;
	void *ctx;
};

static int walk_one(void *ctx, sqlite3_stmt *st)
{
	struct snapshot_walk *w = ctx;
	struct store_snapshot snap;

	memset(&snap, 0, sizeof(snap));
	read_header(st, &snap);
	return w->fn(w->ctx, &snap);
}

int store_snapshots_foreach(struct store_reader *r, int64_t run_id, store_snapshot_fn fn, void *ctx)
{
	struct snapshot_walk w = { fn, ctx };
	sqlite3_stmt *st;
	char sql[sizeof(snapshot_sql) + 32];
	int rc;

	snprintf(sql, sizeof(sql), "%s ORDER BY label", snapshot_sql);
	if (store_sql_prepare(r->db, sql, &st) < 0)
		return -EIO;
	sqlite3_bind_int64(st, 1, run_id);
	rc = store_sql_rows(st, walk_one, &w);
	sqlite3_finalize(st);
	return rc;
}
