-- The current model version, one row per sha256 (the writer embeds a content once per version).
-- Parquet gives the embedding back as FLOAT[]; array_cosine_distance and HNSW need FLOAT[@DIM@].
SELECT * REPLACE (embedding::FLOAT[@DIM@] AS embedding)
FROM embedlib_src_embeddings
WHERE model_version = (SELECT model_version FROM embedlib_settings)
