-- The rows an HNSW probe returned, with their exact distance to the query vector, nearest first; marked
-- approximate (the index may have missed closer rows).
SELECT (row_number() OVER (ORDER BY distance, sha256))::INTEGER AS rank, distance, sha256, path, family, format,
       size_bytes, run_id, true AS approximate
FROM (
    SELECT array_cosine_distance(embedding, $v::FLOAT[@DIM@]) AS distance, sha256, path, family, format, size_bytes,
           run_id
    FROM embeddings WHERE list_contains($candidates, sha256) AND sha256 <> coalesce(lower($exclude), '')
    ORDER BY distance, sha256
    LIMIT $k
)
ORDER BY rank;
