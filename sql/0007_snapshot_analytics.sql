-- Snapshots of window=auto, of BN-adapt, and with their precision
-- (docs/API.md, "Snapshots", "window=auto", "Precision", "Adapting to a
-- target domain").
--
-- req_auto: the min_batches of a snapshot asked for with window=auto (NULL:
-- a number of steps, req_win). prior, prior_weight: the prior domain mixed
-- in and its weight (NULL: none). target_se: the goal of batches_for.
ALTER TABLE snapshots ADD COLUMN req_auto INTEGER;
ALTER TABLE snapshots ADD COLUMN prior TEXT;
ALTER TABLE snapshots ADD COLUMN prior_weight REAL;
ALTER TABLE snapshots ADD COLUMN target_se REAL NOT NULL DEFAULT 0.01;

-- A layer's batch noise (NULL: fewer than two batches, or no channel with a
-- population variance), from which mean_se and batches_for follow.
ALTER TABLE snapshot_layers ADD COLUMN noise REAL;

PRAGMA user_version = 7;
