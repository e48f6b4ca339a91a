-- Attributed families of one run's files ($run) or of every file, at least $min_confidence sure.
SELECT * FROM attribution
WHERE ($run IS NULL OR run_id = $run) AND confidence >= $min_confidence
ORDER BY confidence DESC, sha256
LIMIT embedlib_limit($k, 100000000);
