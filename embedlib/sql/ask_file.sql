-- One embedded file of the current model version, by sha256 (one clear error when it is not one).
SELECT e.sha256, e.path, e.path_raw, e.location, l.family, e.format, e.size_bytes, e.truncated, e.run_id, e.model_version
FROM embeddings e LEFT JOIN labelled_files l USING (sha256)
WHERE embedlib_check_embedded($sha256) AND e.sha256 = lower($sha256)
LIMIT 1;
