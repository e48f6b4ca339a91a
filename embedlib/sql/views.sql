-- Views over one embedding run's Parquet folders. {root} and {dim} are filled in by embedlib.query
-- (a folder path and the model's embedding size); everything else is plain DuckDB SQL.
-- Parquet gives embedding back as FLOAT[] (a list); array functions and HNSW need FLOAT[{dim}].
CREATE OR REPLACE VIEW embeddings AS
SELECT * REPLACE (embedding::FLOAT[{dim}] AS embedding)
FROM read_parquet('{root}/embeddings/**/*.parquet', hive_partitioning = false);

CREATE OR REPLACE VIEW errors AS
SELECT * FROM read_parquet('{root}/errors/**/*.parquet', hive_partitioning = false);
