-- For the benchmark only: a WHERE filter on the indexed table (DuckDB applies it after the index's top-k).
SELECT sha256 FROM embeddings_hnsw WHERE sha256 LIKE $pattern
ORDER BY array_cosine_distance(embedding, $v::FLOAT[@DIM@]) LIMIT $k
