/*
 * store_runfile: the rows of one run as the run file carries them
 * (docs/API.md, "Moving a run"): which tables and columns, how the reader
 * walks them for an export, and the SQL the writer's import inserts them
 * with (store_import.c).
 *
 * Left out on purpose: the drift metrics rows and their mark (the writer's
 * history pass computes them again for the imported run), the late-write
 * log (it only invalidates replays cached under the old run id) and the
 * run's bytes (counted again from the imported rows).
 */
#include "store_private.h"

#include <string.h>

#define COLS(a) a, sizeof(a) / sizeof(a[0])

static const struct store_rf_column c_runs[] = {
	{ "created", STORE_RF_INT, false },
	{ "updated", STORE_RF_INT, true },
};
static const struct store_rf_column c_domains[] = {
	{ "id", STORE_RF_ID, false },
	{ "name", STORE_RF_TEXT, false },
};
static const struct store_rf_column c_layers[] = {
	{ "id", STORE_RF_ID, false },
	{ "name", STORE_RF_TEXT, false },
	{ "channels", STORE_RF_INT, false },
};
static const struct store_rf_column c_batches[] = {
	{ "domain", STORE_RF_DOMAIN, false }, { "worker", STORE_RF_TEXT, false },
	{ "step", STORE_RF_INT, false },      { "seq", STORE_RF_INT, false },
	{ "hash", STORE_RF_BLOB, false },     { "layers", STORE_RF_INT, false },
	{ "received", STORE_RF_INT, false },
};
static const struct store_rf_column c_aggs[] = {
	{ "domain", STORE_RF_DOMAIN, false }, { "step", STORE_RF_INT, false },
	{ "layer", STORE_RF_LAYER, false },   { "n", STORE_RF_INT, false },
	{ "k", STORE_RF_INT, false },	      { "nbs_min", STORE_RF_INT, false },
	{ "nbs_max", STORE_RF_INT, false },   { "width", STORE_RF_INT, false },
	{ "data", STORE_RF_BLOB, false },
};
static const struct store_rf_column c_emas[] = {
	{ "domain", STORE_RF_DOMAIN, false }, { "layer", STORE_RF_LAYER, false },
	{ "worker", STORE_RF_TEXT, false },   { "step", STORE_RF_INT, false },
	{ "seq", STORE_RF_INT, false },	      { "data", STORE_RF_BLOB, false },
};
static const struct store_rf_column c_history[] = {
	{ "domain", STORE_RF_DOMAIN, false },
	{ "tier", STORE_RF_INT, false },
	{ "done", STORE_RF_INT, false },
};
static const struct store_rf_column c_sims[] = {
	{ "domain", STORE_RF_DOMAIN, false }, { "layer", STORE_RF_LAYER, false },
	{ "momentum", STORE_RF_REAL, false }, { "step", STORE_RF_INT, false },
	{ "applied", STORE_RF_INT, false },   { "data", STORE_RF_BLOB, false },
};
static const struct store_rf_column c_snapshots[] = {
	{ "id", STORE_RF_ID, false },
	{ "label", STORE_RF_TEXT, false },
	{ "step", STORE_RF_INT, false },
	{ "win", STORE_RF_INT, false },
	{ "domain", STORE_RF_TEXT, false },
	{ "estimator", STORE_RF_TEXT, false },
	{ "created", STORE_RF_INT, false },
	{ "req_step", STORE_RF_INT, true },
	{ "req_win", STORE_RF_INT, true },
	{ "resolution", STORE_RF_INT, false },
	{ "req_auto", STORE_RF_INT, true },
	{ "prior", STORE_RF_TEXT, true },
	{ "prior_weight", STORE_RF_REAL, true },
	{ "target_se", STORE_RF_REAL, false },
};
static const struct store_rf_column c_snapshot_layers[] = {
	{ "snapshot", STORE_RF_SNAPSHOT, false }, { "name", STORE_RF_TEXT, false },
	{ "channels", STORE_RF_INT, false },	  { "count", STORE_RF_INT, false },
	{ "batches", STORE_RF_INT, false },	  { "data", STORE_RF_BLOB, false },
	{ "noise", STORE_RF_REAL, true },
};

const struct store_rf_table store_rf_tables[STORE_RF_TABLES] = {
	[STORE_RF_T_RUNS] = { "runs", COLS(c_runs) },
	[STORE_RF_T_DOMAINS] = { "domains", COLS(c_domains) },
	[STORE_RF_T_LAYERS] = { "layers", COLS(c_layers) },
	[STORE_RF_T_BATCHES] = { "batches", COLS(c_batches) },
	[STORE_RF_T_AGGS] = { "aggs", COLS(c_aggs) },
	[STORE_RF_T_EMAS] = { "emas", COLS(c_emas) },
	[STORE_RF_T_HISTORY] = { "history", COLS(c_history) },
	[STORE_RF_T_SIMS] = { "sim_states", COLS(c_sims) },
	[STORE_RF_T_SNAPSHOTS] = { "snapshots", COLS(c_snapshots) },
	[STORE_RF_T_SNAPSHOT_LAYERS] = { "snapshot_layers", COLS(c_snapshot_layers) },
};

/*
 * Per table: the rows of run ?1, columns as above, in the order they were
 * written (ids, and so every order the queries take by id, come out the
 * same on import).
 */
static const char *const select_sql[STORE_RF_TABLES] = {
	[STORE_RF_T_RUNS] = "SELECT created, updated FROM runs WHERE id = ?1",
	[STORE_RF_T_DOMAINS] = "SELECT id, name FROM domains WHERE run_id = ?1 ORDER BY id",
	[STORE_RF_T_LAYERS] = "SELECT id, name, channels FROM layers WHERE run_id = ?1 ORDER BY id",
	[STORE_RF_T_BATCHES] = "SELECT domain_id, worker, step, seq, hash, layers, received"
			       " FROM batches WHERE run_id = ?1"
			       " ORDER BY domain_id, worker, step, seq",
	[STORE_RF_T_AGGS] = "SELECT domain_id, step, layer_id, n, k, nbs_min, nbs_max, width, data"
			    " FROM aggs WHERE run_id = ?1 ORDER BY id",
	[STORE_RF_T_EMAS] = "SELECT domain_id, layer_id, worker, step, seq, data"
			    " FROM emas WHERE run_id = ?1 ORDER BY id",
	/* tier STORE_DRIFT_TIER is the drift metrics' mark: computed again */
	[STORE_RF_T_HISTORY] = "SELECT domain_id, tier, done FROM history"
			       " WHERE run_id = ?1 AND tier >= 0 ORDER BY domain_id, tier",
	[STORE_RF_T_SIMS] = "SELECT domain_id, layer_id, momentum, step, applied, data"
			    " FROM sim_states WHERE run_id = ?1 ORDER BY rowid",
	[STORE_RF_T_SNAPSHOTS] =
		"SELECT id, label, step, win, domain, estimator, created, req_step, req_win,"
		" resolution, req_auto, prior, prior_weight, target_se"
		" FROM snapshots WHERE run_id = ?1 ORDER BY id",
	[STORE_RF_T_SNAPSHOT_LAYERS] =
		"SELECT l.snapshot_id, l.name, l.channels, l.count, l.batches, l.data, l.noise"
		" FROM snapshot_layers l JOIN snapshots s ON s.id = l.snapshot_id"
		" WHERE s.run_id = ?1 ORDER BY l.id",
};

/*
 * Per table but runs (inserted by store_import.c itself): ?1 the new run's
 * id, ?2.. the columns but the row's own id, references already turned
 * into the new ids.
 */
const char *const store_rf_insert_sql[STORE_RF_TABLES] = {
	[STORE_RF_T_DOMAINS] = "INSERT INTO domains (run_id, name) VALUES (?1, ?2)",
	[STORE_RF_T_LAYERS] = "INSERT INTO layers (run_id, name, channels) VALUES (?1, ?2, ?3)",
	[STORE_RF_T_BATCHES] = "INSERT INTO batches (run_id, domain_id, worker, step, seq, hash,"
			       " layers, received) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
	[STORE_RF_T_AGGS] = "INSERT INTO aggs (run_id, domain_id, step, layer_id, n, k, nbs_min,"
			    " nbs_max, width, data)"
			    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
	[STORE_RF_T_EMAS] = "INSERT INTO emas (run_id, domain_id, layer_id, worker, step, seq,"
			    " data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
	[STORE_RF_T_HISTORY] =
		"INSERT INTO history (run_id, domain_id, tier, done) VALUES (?1, ?2, ?3, ?4)",
	[STORE_RF_T_SIMS] = "INSERT INTO sim_states (run_id, domain_id, layer_id, momentum, step,"
			    " applied, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
	[STORE_RF_T_SNAPSHOTS] =
		"INSERT INTO snapshots (run_id, label, step, win, domain, estimator, created,"
		" req_step, req_win, resolution, req_auto, prior, prior_weight, target_se)"
		" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
	/* ?1 is not used: a snapshot's layers hang off the snapshot */
	[STORE_RF_T_SNAPSHOT_LAYERS] =
		"INSERT INTO snapshot_layers (snapshot_id, name, channels, count, batches, data,"
		" noise) VALUES (?2, ?3, ?4, ?5, ?6, ?7, ?8)",
};

struct walk {
	size_t table;
	store_rf_row_fn fn;
	void *ctx;
	struct store_rf_value vals[16];
};

static int read_row(void *ctx, sqlite3_stmt *st)
{
	struct walk *w = ctx;
	const struct store_rf_table *t = &store_rf_tables[w->table];
	size_t i;

	for (i = 0; i < t->n_cols; i++) {
		struct store_rf_value *v = &w->vals[i];
		int col = (int)i;

		memset(v, 0, sizeof(*v));
		v->null = sqlite3_column_type(st, col) == SQLITE_NULL;
		if (v->null)
			continue;
		switch (t->cols[i].type) {
		case STORE_RF_REAL:
			v->d = sqlite3_column_double(st, col);
			break;
		case STORE_RF_TEXT:
			v->p = sqlite3_column_text(st, col);
			v->len = (size_t)sqlite3_column_bytes(st, col);
			break;
		case STORE_RF_BLOB:
			v->p = sqlite3_column_blob(st, col);
			v->len = (size_t)sqlite3_column_bytes(st, col);
			if (v->p == NULL)
				v->p = "";
			break;
		default:
			v->i = sqlite3_column_int64(st, col);
			break;
		}
	}
	return w->fn(w->ctx, w->table, w->vals);
}

int store_runfile_walk(struct store_reader *r, int64_t run_id, store_rf_row_fn fn, void *ctx)
{
	struct walk w = { .fn = fn, .ctx = ctx };
	int rc = 0;

	for (w.table = 0; w.table < STORE_RF_TABLES && rc == 0; w.table++) {
		sqlite3_stmt *st;

		if (store_sql_prepare(r->db, select_sql[w.table], &st) < 0)
			return -EIO;
		sqlite3_bind_int64(st, 1, run_id);
		rc = store_sql_rows(st, read_row, &w);
		sqlite3_finalize(st);
	}
	return rc;
}

void store_runfile_free(struct store_runfile *rf)
{
	size_t t, i, c;

	if (rf == NULL)
		return;
	for (t = 0; t < STORE_RF_TABLES; t++) {
		const struct store_rf_table *tab = &store_rf_tables[t];

		for (i = 0; rf->rows[t] != NULL && i < rf->n_rows[t]; i++)
			for (c = 0; c < tab->n_cols; c++)
				free((void *)rf->rows[t][i * tab->n_cols + c].p);
		free(rf->rows[t]);
	}
	free(rf);
}
