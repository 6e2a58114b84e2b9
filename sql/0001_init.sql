-- bnstat schema, version 1.
-- Every name a client gives (run, domain, layer) is interned once; the
-- statistics themselves live in `aggs`, one row per (run, domain, step,
-- layer) holding the merged aggregate of every batch of that step, and the
-- raw uploads are not kept: `batches` only remembers each batch identity and
-- the hash of its content, so that a retry is recognised and a conflicting
-- resend refused.
--
-- Blobs of doubles are IEEE-754 binary64 in little-endian order.

CREATE TABLE runs (
	id      INTEGER PRIMARY KEY,
	name    TEXT NOT NULL UNIQUE,
	created INTEGER NOT NULL            -- unix time, milliseconds
);

CREATE TABLE domains (
	id     INTEGER PRIMARY KEY,
	run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
	name   TEXT NOT NULL,
	UNIQUE (run_id, name)
);

CREATE TABLE layers (
	id       INTEGER PRIMARY KEY,
	run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
	name     TEXT NOT NULL,
	channels INTEGER NOT NULL CHECK (channels > 0),  -- fixed by the first upload naming it
	UNIQUE (run_id, name)
);

-- One row per accepted batch identity: the dedup and conflict record.
CREATE TABLE batches (
	run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
	domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
	worker    TEXT NOT NULL,
	step      INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	hash      BLOB NOT NULL,            -- 16-byte content hash (ingest.h)
	layers    INTEGER NOT NULL,
	received  INTEGER NOT NULL,         -- unix time, milliseconds
	PRIMARY KEY (run_id, domain_id, worker, step, seq)
) WITHOUT ROWID;

-- The merged statistics of every batch of one step, per layer and domain.
-- data = five arrays of `channels` doubles, in this order:
--   mean, m2 (pooled), bmean, bm2 (of the batch means), uvar (sum of the
--   unbiased batch variances); see include/bnstat/stats.h.
CREATE TABLE aggs (
	id        INTEGER PRIMARY KEY,
	run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
	domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
	step      INTEGER NOT NULL,
	layer_id  INTEGER NOT NULL REFERENCES layers(id) ON DELETE CASCADE,
	n         INTEGER NOT NULL,         -- elements per channel
	k         INTEGER NOT NULL,         -- batches
	nbs_min   INTEGER NOT NULL,
	nbs_max   INTEGER NOT NULL,
	data      BLOB NOT NULL,
	UNIQUE (run_id, domain_id, step, layer_id)
);
-- Windows over every domain at once (domain "*") walk this one.
CREATE INDEX aggs_by_step ON aggs (run_id, step, layer_id, domain_id);

-- The EMA a worker reported with its batches: per (run, domain, layer,
-- worker, step) the one sent with the highest seq.
-- data = two arrays of `channels` doubles: ema_mean, ema_var.
CREATE TABLE emas (
	id        INTEGER PRIMARY KEY,
	run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
	domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
	layer_id  INTEGER NOT NULL REFERENCES layers(id) ON DELETE CASCADE,
	worker    TEXT NOT NULL,
	step      INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	data      BLOB NOT NULL,
	UNIQUE (run_id, domain_id, layer_id, worker, step)
);

PRAGMA user_version = 1;
