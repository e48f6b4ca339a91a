-- The error rows themselves, newest run first (the page's errors table), at most $k.
SELECT run_id, status, path, reason, sha256, size_bytes
FROM errors
ORDER BY run_id DESC, status, path
LIMIT embedlib_limit($k, 100000);
