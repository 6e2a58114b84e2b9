-- Snapshots: named, immutable precise estimates, frozen for evaluation or
-- FrozenBN fine-tuning. The parameters are stored as resolved when the
-- snapshot was created (the latest step at that time, and so on); later
-- uploads never change a snapshot.

CREATE TABLE snapshots (
	id        INTEGER PRIMARY KEY,
	run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
	label     TEXT NOT NULL,
	step      INTEGER NOT NULL,
	win       INTEGER NOT NULL,         -- the window
	domain    TEXT NOT NULL,            -- a domain name or "*"
	estimator TEXT NOT NULL,            -- population | mean_of_batch_var
	created   INTEGER NOT NULL,         -- unix time, milliseconds
	UNIQUE (run_id, label)
);

-- data = mean then var, `channels` doubles each.
CREATE TABLE snapshot_layers (
	id          INTEGER PRIMARY KEY,
	snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
	name        TEXT NOT NULL,
	channels    INTEGER NOT NULL,
	count       INTEGER NOT NULL,       -- elements per channel merged
	batches     INTEGER NOT NULL,
	data        BLOB NOT NULL,
	UNIQUE (snapshot_id, name)
);

PRAGMA user_version = 2;
