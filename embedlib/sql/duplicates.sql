-- requires: embeddings
-- Integrity check: contents with more than one row in the current model version (the writer guarantees none).
CREATE OR REPLACE VIEW embedding_duplicates AS
SELECT sha256, count(*) AS rows, list(run_id ORDER BY run_id) AS runs
FROM embeddings GROUP BY sha256 HAVING count(*) > 1;
