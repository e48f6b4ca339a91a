-- Every hashed path of this run -> what to do with it, deterministically:
--   skip       unchanged since an earlier run of this version, and its content is written: nothing to add
--   known      its content was written by an earlier run (under another path): a duplicate row
--   write      the representative of a new content: the smallest path, then the first listed
--   duplicate  another path of this run has the same content and comes first
-- `done` holds the (sha256, path) rows written under this version by earlier runs.
WITH written AS (SELECT sha256, min(path) AS done_path FROM done GROUP BY sha256),
ranked AS (
    SELECT h.*, w.done_path,
           row_number() OVER (PARTITION BY h.sha256 ORDER BY h.path, h.ordinal) AS rank_in_run,
           first_value(h.path) OVER (PARTITION BY h.sha256 ORDER BY h.path, h.ordinal) AS first_path
    FROM hashed h LEFT JOIN written w ON h.sha256 = w.sha256
)
SELECT * EXCLUDE (done_path, rank_in_run, first_path),
       CASE WHEN done_path IS NOT NULL AND unchanged AND known_version = $version THEN 'skip'
            WHEN done_path IS NOT NULL THEN 'known'
            WHEN rank_in_run = 1 THEN 'write'
            ELSE 'duplicate' END AS action,
       coalesce(done_path, first_path) AS same_as
FROM ranked
ORDER BY action, path, ordinal;
