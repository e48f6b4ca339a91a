-- Small statements embedlib.query runs on its own connections, one per `-- name:` section
-- (embedlib.query.connect.statement(name) returns one).

-- name: set_files
SET VARIABLE @VARIABLE@ = $files;

-- name: no_python_replacements
-- A table name that happens to match a Python variable must not silently read that variable.
SET python_enable_replacements = false;

-- name: labels_columns
SELECT column_name FROM (DESCRIBE embedlib_src_labels);

-- name: checkpoint
CHECKPOINT;

-- name: missing_insert
INSERT INTO embedlib_missing VALUES ($name, $reason);

-- name: missing_list
SELECT name, reason FROM embedlib_missing;

-- name: is_view
SELECT count(*) FROM duckdb_views() WHERE view_name = $name AND NOT internal;

-- name: drop_view
DROP VIEW IF EXISTS @NAME@;

-- name: is_embedlib_database
SELECT count(*) FROM duckdb_tables() WHERE table_name = 'embedlib_settings';

-- name: embedding_dim
SELECT embedding_dim FROM embedlib_settings;

-- name: hnsw_persistence
-- An HNSW index in a database file is experimental in vss (a crash can lose it): asked for explicitly.
SET hnsw_enable_experimental_persistence = true;

-- name: hnsw_indexes
SELECT count(*) FROM duckdb_indexes() WHERE table_name = 'embeddings_hnsw';

-- name: hnsw_ef_search
-- Candidates an index probe looks at: 128 measured recall@10 >= 0.95 at 1M rows (64: 0.88).
SET hnsw_ef_search = @EF@;
