CREATE INDEX embeddings_hnsw_index ON embeddings_hnsw USING HNSW (embedding)
WITH (metric = '@METRIC@', M = @M@, ef_construction = @EF_CONSTRUCTION@);
