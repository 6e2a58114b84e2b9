-- Bounded history (docs/DESIGN.md, "History"): old steps are merged, exactly,
-- into aligned buckets. A row of `aggs` covers the steps (step - width, step]:
-- width 1 is one step, as before; a bucket of width w (10, 100, ...) sits at
-- its last step, a multiple of w.
ALTER TABLE aggs ADD COLUMN width INTEGER NOT NULL DEFAULT 1;

-- Per (run, domain) and tier t (width 10^t): the end of the last bucket of
-- that tier formed so far. Every step <= the tier-1 end is in a bucket.
CREATE TABLE history (
	run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
	domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
	tier      INTEGER NOT NULL,
	done      INTEGER NOT NULL,
	PRIMARY KEY (run_id, domain_id, tier)
) WITHOUT ROWID;
CREATE INDEX history_by_domain_id ON history (domain_id);

-- The simulated EMA's replay state at bucket ends, for the momenta the
-- daemon keeps (sim-momenta), taken from the per-step history before it was
-- merged: a replay resumes from it and stays exact.
-- data = mean then var, `channels` doubles each.
CREATE TABLE sim_states (
	run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
	domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
	layer_id  INTEGER NOT NULL REFERENCES layers(id) ON DELETE CASCADE,
	momentum  REAL NOT NULL,
	step      INTEGER NOT NULL,
	applied   INTEGER NOT NULL,         -- steps with data replayed up to here
	data      BLOB NOT NULL,
	PRIMARY KEY (run_id, domain_id, layer_id, momentum, step)
);
CREATE INDEX sim_states_by_layer_id ON sim_states (layer_id);
-- a late upload drops the states at and after its step
CREATE INDEX sim_states_by_step ON sim_states (run_id, domain_id, step);
CREATE INDEX sim_states_by_domain_id ON sim_states (domain_id);

-- A snapshot over bucketed history may use a wider window than was asked
-- for: step and win are what was used, these what was asked (a retry is
-- recognised by them) and the width of the entry at the window's oldest end.
ALTER TABLE snapshots ADD COLUMN req_step INTEGER;
ALTER TABLE snapshots ADD COLUMN req_win INTEGER;
ALTER TABLE snapshots ADD COLUMN resolution INTEGER NOT NULL DEFAULT 1;
UPDATE snapshots SET req_step = step, req_win = win;

-- When the run last accepted a batch (unix ms): retain-runs-days expires
-- runs by it.
ALTER TABLE runs ADD COLUMN updated INTEGER;
UPDATE runs SET updated = coalesce((SELECT max(received) FROM batches b
                                    WHERE b.run_id = runs.id), created);

-- The bytes of each run's stored arrays (GET /v1/runs/{run}), kept by the
-- writer as it inserts and deletes rows (store_bytes.c).
ALTER TABLE runs ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET bytes =
	coalesce((SELECT sum(length(data)) FROM aggs WHERE aggs.run_id = runs.id), 0) +
	coalesce((SELECT sum(length(data)) FROM emas WHERE emas.run_id = runs.id), 0);

PRAGMA user_version = 6;
