/*
 * store_schema: the database's schema — the migrations compiled in from
 * sql/ (applied in order, each in its own transaction) — and the SQL of
 * every statement the writer prepares once at start.
 */
#include "store_private.h"

#include "log.h"

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
	[W_SNAP_GET] = "SELECT step, win, domain, estimator, req_step, req_win,"
		       " coalesce(req_auto, 0), coalesce(prior, ''), coalesce(prior_weight, 0),"
		       " target_se FROM snapshots"
		       " WHERE run_id = ?1 AND label = ?2",
	[W_SNAP_INS] =
		"INSERT INTO snapshots (run_id, label, step, win, domain, estimator, created,"
		" req_step, req_win, resolution, req_auto, prior, prior_weight, target_se)"
		" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
	[W_SNAP_LAYER_INS] = "INSERT INTO snapshot_layers (snapshot_id, name, channels, count,"
			     " batches, data, noise) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
	/* snapshot_layers go with it: ON DELETE CASCADE */
	[W_SNAP_DEL] = "DELETE FROM snapshots WHERE run_id = ?1 AND label = ?2",
	[W_RUN_MAX_STEP] = "SELECT max(step) FROM aggs WHERE run_id = ?1",
	[W_LATE_INS] = "INSERT INTO late_writes (run_id, domain_id, step) VALUES (?1, ?2, ?3)",
	[W_RUN_ID_NEW] = "INSERT INTO run_ids DEFAULT VALUES",
	[W_RUN_ID_DROP] = "DELETE FROM run_ids",
	[W_RUN_DEL] = "DELETE FROM runs WHERE id = ?1",
	[W_RUN_TOUCH] = "UPDATE runs SET bytes = bytes + ?2, updated = ?3 WHERE id = ?1",
	[W_RUN_BYTES] = "UPDATE runs SET bytes = bytes + ?2 WHERE id = ?1",
	[W_RUN_BYTES_RECOUNT] =
		"UPDATE runs SET bytes ="
		" coalesce((SELECT sum(length(data)) FROM aggs WHERE run_id = ?1), 0) +"
		" coalesce((SELECT sum(length(data)) FROM emas WHERE run_id = ?1), 0) +"
		" coalesce((SELECT sum(length(data)) FROM sim_states WHERE run_id = ?1), 0)"
		" WHERE id = ?1",
	[W_SUM_EMAS_RANGE] = "SELECT coalesce(sum(length(data)), 0) FROM emas WHERE run_id = ?1"
			     " AND domain_id = ?2 AND step > ?3 AND step <= ?4",
	[W_SUM_SIMS_RANGE] = "SELECT coalesce(sum(length(data)), 0) FROM sim_states"
			     " WHERE run_id = ?1 AND domain_id = ?2 AND step > ?3 AND step <= ?4",
	[W_SUM_SIMS_LATE] = "SELECT coalesce(sum(length(data)), 0) FROM sim_states"
			    " WHERE run_id = ?1 AND domain_id = ?2 AND step >= ?3",
	/* what W_HIST_SIM_DEL and W_HIST_EMAS_DEL delete */
	[W_SUM_SIMS_INNER] = "SELECT coalesce(sum(length(data)), 0) FROM sim_states"
			     " WHERE run_id = ?1 AND domain_id = ?2"
			     " AND step > ?3 AND step <= ?4 AND step < (SELECT max(x.step)"
			     " FROM sim_states x WHERE x.run_id = sim_states.run_id AND"
			     " x.domain_id = sim_states.domain_id AND x.layer_id ="
			     " sim_states.layer_id AND x.momentum = sim_states.momentum AND"
			     " x.step > ?3 AND x.step <= ?4)",
	[W_SUM_EMAS_INNER] = "SELECT coalesce(sum(length(data)), 0) FROM emas WHERE run_id = ?1"
			     " AND domain_id = ?2 AND step > ?3 AND step <= ?4 AND step <"
			     " (SELECT max(e.step) FROM emas e WHERE e.run_id = emas.run_id AND"
			     " e.domain_id = emas.domain_id AND e.layer_id = emas.layer_id AND"
			     " e.worker = emas.worker AND e.step > ?3 AND e.step <= ?4)",
	[W_RUN_EXPIRED] = "SELECT id, name FROM runs WHERE coalesce(updated, created) < ?1"
			  " ORDER BY id LIMIT 1",
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
	[W_RET_SIMS] = "DELETE FROM sim_states WHERE run_id = ?1 AND step <= ?2",
	/* history (store_history.c): tier t's last bucket end per (run, domain) */
	[W_HIST_GET] = "SELECT tier, done FROM history WHERE run_id = ?1 AND domain_id = ?2",
	[W_HIST_PUT] = "INSERT INTO history (run_id, domain_id, tier, done) VALUES (?1, ?2, ?3, ?4)"
		       " ON CONFLICT (run_id, domain_id, tier) DO UPDATE SET done = excluded.done",
	[W_HIST_DONE1] =
		"SELECT done FROM history WHERE run_id = ?1 AND domain_id = ?2 AND tier = 1",
	[W_HIST_DOMAINS] = "SELECT run_id, id FROM domains ORDER BY run_id, id",
	[W_HIST_MAX_STEP] = "SELECT max(step) FROM aggs WHERE run_id = ?1 AND domain_id = ?2",
	[W_HIST_NEXT_STEP] = "SELECT min(step) FROM aggs WHERE run_id = ?1 AND domain_id = ?2"
			     " AND step > ?3",
	[W_HIST_ROWS] = "SELECT layer_id, step, n, k, nbs_min, nbs_max, data FROM aggs"
			" WHERE run_id = ?1 AND domain_id = ?2 AND step > ?3 AND step <= ?4"
			" ORDER BY layer_id, step",
	[W_HIST_AGGS_DEL] = "DELETE FROM aggs WHERE run_id = ?1 AND domain_id = ?2"
			    " AND step > ?3 AND step <= ?4",
	[W_HIST_AGG_INS] =
		"INSERT INTO aggs (run_id, domain_id, step, layer_id, n, k, nbs_min,"
		" nbs_max, data, width) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
	/* per layer and worker, only the last EMA of the bucket stays, moved to its end */
	[W_HIST_EMAS_DEL] = "DELETE FROM emas WHERE run_id = ?1 AND domain_id = ?2"
			    " AND step > ?3 AND step <= ?4 AND step < (SELECT max(e.step)"
			    " FROM emas e WHERE e.run_id = emas.run_id AND e.domain_id ="
			    " emas.domain_id AND e.layer_id = emas.layer_id AND e.worker ="
			    " emas.worker AND e.step > ?3 AND e.step <= ?4)",
	[W_HIST_EMAS_MOVE] = "UPDATE emas SET step = ?4 WHERE run_id = ?1 AND domain_id = ?2"
			     " AND step > ?3 AND step < ?4",
	[W_HIST_PREV_STEP] = "SELECT max(step) FROM aggs WHERE run_id = ?1 AND layer_id = ?3"
			     " AND domain_id = ?2 AND step <= ?4",
	[W_HIST_SIM_GET] = "SELECT applied, data, step FROM sim_states WHERE run_id = ?1"
			   " AND domain_id = ?2 AND layer_id = ?3 AND momentum = ?4 AND step <= ?5"
			   " ORDER BY step DESC LIMIT 1",
	[W_HIST_SIM_CLEAR] = "DELETE FROM sim_states WHERE run_id = ?1 AND domain_id = ?2"
			     " AND step > ?3 AND step <= ?4",
	/* a late write: the replay checkpoints at or after its step are stale */
	[W_HIST_SIM_LATE] = "DELETE FROM sim_states WHERE run_id = ?1 AND domain_id = ?2"
			    " AND step >= ?3",
	[W_HIST_CKPT_LATE] = "UPDATE history SET done = ?3 WHERE run_id = ?1 AND domain_id = ?2"
			     " AND tier = 0 AND done > ?3",
	[W_HIST_SIM_PUT] = "INSERT OR REPLACE INTO sim_states (run_id, domain_id, layer_id,"
			   " momentum, step, applied, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
	/* like the EMAs: per layer and momentum, the last state of the bucket, at its end */
	[W_HIST_SIM_DEL] = "DELETE FROM sim_states WHERE run_id = ?1 AND domain_id = ?2"
			   " AND step > ?3 AND step <= ?4 AND step < (SELECT max(x.step)"
			   " FROM sim_states x WHERE x.run_id = sim_states.run_id AND"
			   " x.domain_id = sim_states.domain_id AND x.layer_id ="
			   " sim_states.layer_id AND x.momentum = sim_states.momentum AND"
			   " x.step > ?3 AND x.step <= ?4)",
	[W_HIST_SIM_MOVE] = "UPDATE sim_states SET step = ?4 WHERE run_id = ?1 AND domain_id = ?2"
			    " AND step > ?3 AND step < ?4",
	[W_RET_DRIFT] = "DELETE FROM drift_steps WHERE run_id = ?1 AND step <= ?2",
	/* drift metrics (store_drift.c) */
	[W_DRIFT_FIRST] = "SELECT min(worker) FROM emas WHERE run_id = ?1 AND domain_id = ?2"
			  " AND step = ?3",
	/* without INDEXED BY the planner may walk emas_by_layer_step: every step's rows */
	[W_DRIFT_EMAS] = "SELECT layer_id, data FROM emas INDEXED BY emas_by_step"
			 " WHERE run_id = ?1 AND domain_id = ?2 AND step = ?3 AND worker = ?4",
	[W_DRIFT_PUT] = "INSERT OR REPLACE INTO drift_steps (run_id, domain_id, step, worker, data,"
			" width) VALUES (?1, ?2, ?3, ?4, ?5, (SELECT max(width) FROM aggs"
			" WHERE run_id = ?1 AND domain_id = ?2 AND step = ?3))",
	[W_DRIFT_DEL] = "DELETE FROM drift_steps WHERE run_id = ?1 AND domain_id = ?2 AND step = ?3",
	[W_DRIFT_DEL_RANGE] = "DELETE FROM drift_steps WHERE run_id = ?1 AND domain_id = ?2"
			      " AND step > ?3 AND step <= ?4",
	[W_DRIFT_BACK] = "UPDATE history SET done = ?3 - 1 WHERE run_id = ?1 AND domain_id = ?2"
			 " AND tier = -1 AND done >= ?3",
	[W_DRIFT_MARK] = "SELECT done FROM history WHERE run_id = ?1 AND domain_id = ?2"
			 " AND tier = -1",
	[W_DRIFT_HAS] = "SELECT 1 FROM drift_steps WHERE run_id = ?1 AND domain_id = ?2"
			" AND step = ?3",
};

static int read_int(void *ctx, sqlite3_stmt *st)
{
	*(int *)ctx = sqlite3_column_int(st, 0);
	return 1;
}

/* A PRAGMA that yields one integer: 0 and *out, or -EIO. */
static int pragma_int(sqlite3 *db, const char *sql, int *out)
{
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(db, sql, &st) < 0)
		return -EIO;
	rc = store_sql_rows(st, read_int, out);
	sqlite3_finalize(st);
	return rc > 0 ? 0 : -EIO;
}

int store_schema_migrate(struct store *s, struct bn_error *err)
{
	int version = 0;
	int latest = 0;
	size_t i;

	if (pragma_int(s->wdb, "PRAGMA user_version", &version) < 0)
		return store_sql_error(err, s->wdb, "reading schema version");
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
		if (store_sql_exec(s->wdb, "BEGIN IMMEDIATE", err) < 0)
			return -EIO;
		if (store_sql_exec(s->wdb, m->sql, err) < 0) {
			sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
			return -EIO;
		}
		if (store_sql_exec(s->wdb, "COMMIT", err) < 0) {
			sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
			return -EIO;
		}
		log_info("migrated", "version=%d name=%s", m->version, m->name);
		version = m->version;
	}
	s->schema_version = version;
	return 0;
}

int store_schema_prepare(struct store *s, struct bn_error *err)
{
	int i;

	for (i = 0; i < W_COUNT; i++) {
		if (sqlite3_prepare_v3(s->wdb, wstmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
				       &s->wstmt[i], NULL) != SQLITE_OK)
			return store_sql_error(err, s->wdb, "preparing statements");
	}
	return 0;
}

void store_schema_finalize(struct store *s)
{
	int i;

	for (i = 0; i < W_COUNT; i++)
		sqlite3_finalize(s->wstmt[i]);
}
