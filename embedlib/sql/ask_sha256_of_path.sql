-- The content embedded for a path (current model version).
SELECT sha256 FROM embeddings WHERE path = $path ORDER BY run_id DESC LIMIT 1;
