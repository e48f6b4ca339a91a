-- A labels manifest in Parquet: the file name is bound into @VARIABLE@; path and family are read as text.
CREATE OR REPLACE VIEW embedlib_src_labels AS
SELECT * REPLACE (path::VARCHAR AS path, family::VARCHAR AS family)
FROM read_parquet(getvariable('@VARIABLE@'), hive_partitioning = false);
