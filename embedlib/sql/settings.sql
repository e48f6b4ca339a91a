-- What this connection was opened on; macros read the current model version and embedding size from here, and
-- how similar() re-scores its nearest candidates (learned_dim: the leading numbers of an embedding that are its
-- learned part; rerank_depth: how many candidates; embedlib/model/exact.py).
-- embedlib_missing: objects the root could not provide, and why (queries naming them report it).
CREATE OR REPLACE TABLE embedlib_missing (name VARCHAR, reason VARCHAR);
CREATE OR REPLACE TABLE embedlib_settings AS
SELECT $root::VARCHAR AS root, $model_version::VARCHAR AS model_version, $dim::INTEGER AS embedding_dim,
       $learned_dim::INTEGER AS learned_dim, $rerank_depth::INTEGER AS rerank_depth,
       $labels::VARCHAR AS labels, $materialized::BOOLEAN AS materialized, $embedlib_version::VARCHAR AS embedlib_version,
       now() AS opened;
