-- Run ids are never reused, even after DELETE /v1/runs/{run}: in-memory
-- caches keyed by run id (replayed EMA states) must not mistake a new run
-- for a deleted one. AUTOINCREMENT on a side table gives a high-water mark;
-- the writer takes each new run's id from it.
CREATE TABLE run_ids (id INTEGER PRIMARY KEY AUTOINCREMENT);
INSERT INTO run_ids (id) SELECT max(id) FROM runs WHERE EXISTS (SELECT 1 FROM runs);
DELETE FROM run_ids;

-- Retention drops old per-step rows by step.
CREATE INDEX batches_by_step ON batches (run_id, step);

PRAGMA user_version = 4;
