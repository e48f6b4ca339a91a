-- requires: neighbors_all
-- The stored nearest neighbours (python -m jobs.neighbors) of the current model version:
-- sha256, rank (1 = nearest), neighbor (a sha256), distance, metric, model_version, run_id (of the query row).
CREATE OR REPLACE VIEW neighbors AS
SELECT * FROM neighbors_all WHERE model_version = embedlib_current_version();
