-- The files of one family (labelled_files: the manifest's family when one was given) in the current model version.
SELECT e.sha256, e.path, e.format, e.size_bytes, e.run_id
FROM embeddings e JOIN labelled_files l USING (sha256)
WHERE l.family = $family
ORDER BY e.path, e.sha256
LIMIT embedlib_limit($k, 100000);
