-- The one shape DuckDB answers from the HNSW index: ORDER BY distance to a constant, LIMIT k, no filter.
SELECT sha256 FROM embeddings_hnsw ORDER BY array_cosine_distance(embedding, $v::FLOAT[@DIM@]) LIMIT $k
