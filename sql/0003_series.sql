-- Indexes for reading one layer across many steps (series, simulated EMA),
-- and the log of late writes that keeps cached EMA replays exact.

CREATE INDEX aggs_by_layer ON aggs (run_id, layer_id, domain_id, step);
CREATE INDEX emas_by_step ON emas (run_id, domain_id, step, worker);

-- A batch that lands in a step lower than the run's highest step at that
-- time changes history: replayed EMA states cached at or after that step
-- are no longer valid. The writer records such writes here, in the same
-- transaction as the data; readers compare against it (see query.c).
CREATE TABLE late_writes (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
	domain_id INTEGER NOT NULL,
	step      INTEGER NOT NULL
);
CREATE INDEX late_writes_by_run ON late_writes (run_id, id);

PRAGMA user_version = 3;
