-- A private copy of the current embeddings for the HNSW index (see embedlib/query/hnsw.py for why a copy).
CREATE OR REPLACE TABLE embeddings_hnsw AS SELECT sha256, embedding::FLOAT[@DIM@] AS embedding FROM embeddings;
