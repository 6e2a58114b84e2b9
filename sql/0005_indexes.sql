-- Deleting a run cascades from its layers and domains to their rows in
-- aggs, emas and batches; without an index on those child keys SQLite scans
-- the whole table once per layer and per domain (seconds, inside the
-- writer). These make DELETE /v1/runs/{run} proportional to the run.
CREATE INDEX aggs_by_layer_id ON aggs (layer_id);
CREATE INDEX aggs_by_domain_id ON aggs (domain_id);
CREATE INDEX emas_by_layer_id ON emas (layer_id);
CREATE INDEX emas_by_domain_id ON emas (domain_id);
CREATE INDEX batches_by_domain_id ON batches (domain_id);

-- /series reads one layer's worker EMAs by step (every worker).
CREATE INDEX emas_by_layer_step ON emas (run_id, domain_id, layer_id, step);

PRAGMA user_version = 5;
