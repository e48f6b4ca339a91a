-- The latest state of every listed file in earlier runs (the written table of any version, and errors):
-- size and mtime/etag tell an unchanged file without reading it; sha256, outcome and version say what it was.
-- A file is known by its exact identity (`location` = the listing's `target`: absolute path bytes or object
-- URI), never by its displayed `path` text; rows written before `location` existed (NULL) never match.
-- One row per listing row, in listing order, numbered with its chunk (listing rows come in $shard_size).
WITH prior AS (
    SELECT location, size_bytes, mtime_ns, etag, sha256, 'ok' AS status, NULL::VARCHAR AS judged_under,
           model_version, run_id
    FROM prior_written
    UNION ALL
    SELECT location, size_bytes, mtime_ns, etag, sha256, status, judged_under, model_version, run_id
    FROM prior_errors
),
latest AS (
    SELECT *
    FROM prior
    WHERE location IN (SELECT target FROM listing)
    QUALIFY row_number() OVER (PARTITION BY location ORDER BY run_id DESC, (status = 'ok') DESC, sha256) = 1
)
SELECT l.*,
       l.ordinal // $shard_size AS chunk,
       k.size_bytes AS known_size, k.mtime_ns AS known_mtime_ns, k.etag AS known_etag, k.sha256 AS known_sha256,
       k.status AS known_status, k.model_version AS known_version, k.judged_under AS known_judged_under
FROM listing l LEFT JOIN latest k ON l.target = k.location
ORDER BY l.ordinal;
