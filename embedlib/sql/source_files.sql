-- A source over Parquet files whose exact names (listed with fsspec, glob characters escaped) are bound into the
-- session variable @VARIABLE@ by embedlib.query.connect: no path is ever pasted into SQL text.
-- Partition values are columns inside the files, so DuckDB's own hive partitioning is off (it would add `run`).
CREATE OR REPLACE VIEW @NAME@ AS
SELECT * FROM read_parquet(getvariable('@VARIABLE@'), hive_partitioning = false, union_by_name = true);
