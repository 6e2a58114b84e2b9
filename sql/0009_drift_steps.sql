-- Per-step drift metrics (docs/DESIGN.md, "Drift metrics"): for each stored
-- entry below its domain's latest step, the metrics /drift gives by default
-- (the worker EMA of the entry's first worker by name against the entry's
-- own pooled statistics), computed once by the writer, so that /drift
-- reads one small row per entry instead of every channel's arrays.
-- worker: the first worker by name with an EMA at the entry, NULL when none.
-- data: per layer with a value (in no set order), four 8-byte fields:
--   the layer id (int64), then mean_err, var_err, kl (doubles).
CREATE TABLE drift_steps (
	run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
	domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
	step      INTEGER NOT NULL,
	width     INTEGER NOT NULL,         -- the entry's: 1, or a bucket's width
	worker    TEXT,
	data      BLOB NOT NULL,
	PRIMARY KEY (run_id, domain_id, step)
) WITHOUT ROWID;
CREATE INDEX drift_steps_by_domain_id ON drift_steps (domain_id);

PRAGMA user_version = 9;
