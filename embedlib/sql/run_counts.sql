-- requires: runs, embeddings_all, errors
-- Every finished run: what its summary row says next to what its tables hold (rows embedded, errors by status).
CREATE OR REPLACE VIEW run_counts AS
WITH emb AS (SELECT run_id, count(*) AS embedded_rows FROM embeddings_all GROUP BY run_id),
err AS (
    SELECT run_id, sum(n)::BIGINT AS error_rows, string_agg(status || ':' || n, ' ' ORDER BY status) AS errors_by_status
    FROM (SELECT run_id, status, count(*) AS n FROM errors GROUP BY ALL) GROUP BY run_id
)
SELECT r.run_id, r.model_version, r.started, r.finished, r.files_seen, r.skipped_known, r.embedded, r.duplicates,
       r.failed, coalesce(emb.embedded_rows, 0) AS embedded_rows, coalesce(err.error_rows, 0) AS error_rows,
       err.errors_by_status, r.bytes_read, r.seconds
FROM runs r LEFT JOIN emb USING (run_id) LEFT JOIN err USING (run_id)
ORDER BY r.run_id;
