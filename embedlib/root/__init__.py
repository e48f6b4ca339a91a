"""An output root as a table that years of nightly runs can trust: the one filesystem layer over it (`store`:
atomic writes, exact listing, conditional writes), what is committed and visible (`catalog`: names, runs,
commit records, the snapshot every reader uses), who may write now (`lease`), compaction and retention
(`compact`), and DuckDB over a root's exact files (`duck`). The pipeline, training and the query layer all read
and write roots through it.
May import: errors, config, schema, sql, files.
"""
