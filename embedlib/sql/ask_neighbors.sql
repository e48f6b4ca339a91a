-- Stored neighbours of one file ($sha256) or of every file of a run ($run), with the neighbour's path and family.
SELECT n.sha256, n.rank, n.neighbor, n.distance, e.path AS neighbor_path, f.family AS neighbor_family, n.run_id
FROM neighbors n
LEFT JOIN (SELECT sha256, any_value(path) AS path FROM embeddings GROUP BY sha256) e ON e.sha256 = n.neighbor
LEFT JOIN labelled_files f ON f.sha256 = n.neighbor
WHERE ($sha256 IS NULL OR (embedlib_check_sha256($sha256) AND n.sha256 = lower($sha256)))
  AND ($run IS NULL OR n.run_id = $run)
ORDER BY n.sha256, n.rank
LIMIT embedlib_limit($k, 100000000);
