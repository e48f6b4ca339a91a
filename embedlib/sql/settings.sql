-- What this connection was opened on; macros read the current model version and embedding size from here.
-- embedlib_missing: objects the root could not provide, and why (queries naming them report it).
CREATE OR REPLACE TABLE embedlib_missing (name VARCHAR, reason VARCHAR);
CREATE OR REPLACE TABLE embedlib_settings AS
SELECT $root::VARCHAR AS root, $model_version::VARCHAR AS model_version, $dim::INTEGER AS embedding_dim,
       $labels::VARCHAR AS labels, $materialized::BOOLEAN AS materialized, $embedlib_version::VARCHAR AS embedlib_version,
       now() AS opened;
