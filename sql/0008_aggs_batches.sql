-- window=auto counts the batches of each stored entry (docs/API.md,
-- "window=auto"): the index by step now carries each row's k and width, so
-- that the count reads the index alone. Without them every row was read
-- whole (width follows the data blob), the statistics of every step walked.
-- Building it reads the table once.
DROP INDEX aggs_by_step;
CREATE INDEX aggs_by_step ON aggs (run_id, step, layer_id, domain_id, k, width);

PRAGMA user_version = 8;
