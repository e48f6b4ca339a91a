SELECT 'embeddings_hnsw' AS table_name, count(*) AS rows FROM embeddings_hnsw;
