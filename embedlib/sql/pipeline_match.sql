-- The latest state of every listed path in earlier runs (the written table of any version, and errors):
-- size and mtime/etag tell an unchanged file without reading it; sha256, outcome and version say what it was.
-- One row per listing row, in listing order, numbered with its chunk (listing rows come in $shard_size).
WITH prior AS (
    SELECT path, size_bytes, mtime_ns, etag, sha256, 'ok' AS status, model_version, run_id FROM prior_written
    UNION ALL
    SELECT path, size_bytes, mtime_ns, etag, sha256, status, model_version, run_id FROM prior_errors
),
latest AS (
    SELECT *
    FROM prior
    WHERE path IN (SELECT path FROM listing)
    QUALIFY row_number() OVER (PARTITION BY path ORDER BY run_id DESC, (status = 'ok') DESC, sha256) = 1
)
SELECT l.*,
       l.ordinal // $shard_size AS chunk,
       k.size_bytes AS known_size, k.mtime_ns AS known_mtime_ns, k.etag AS known_etag, k.sha256 AS known_sha256,
       k.status AS known_status, k.model_version AS known_version
FROM listing l LEFT JOIN latest k ON l.path = k.path
ORDER BY l.ordinal;
