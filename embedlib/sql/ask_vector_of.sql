-- The embedding of one content in the current model version.
SELECT embedding FROM embeddings WHERE sha256 = lower($sha256) LIMIT 1;
