-- What can be queried: tables, views and table macros (embedlib's internals left out).
SELECT name, kind FROM (
    SELECT table_name AS name, 'table' AS kind FROM duckdb_tables() WHERE NOT internal AND NOT temporary
    UNION ALL
    SELECT view_name, 'view' FROM duckdb_views() WHERE NOT internal AND NOT temporary
    UNION ALL
    SELECT DISTINCT function_name, 'macro' FROM duckdb_functions()
    WHERE function_type IN ('table_macro', 'macro') AND NOT internal
)
WHERE name NOT LIKE 'embedlib%'
ORDER BY kind, name;
