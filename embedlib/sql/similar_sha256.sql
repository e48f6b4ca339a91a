-- k nearest executables to one already embedded (by sha256), cosine distance, the file itself excluded.
WITH q AS (SELECT embedding FROM embeddings WHERE sha256 = $sha256 LIMIT 1)
SELECT e.sha256, e.path, e.family, e.format, e.size_bytes,
       round(array_cosine_distance(e.embedding, q.embedding)::DOUBLE, 6) AS distance
FROM embeddings e, q
WHERE e.sha256 <> $sha256
ORDER BY distance, e.sha256
LIMIT $k;
