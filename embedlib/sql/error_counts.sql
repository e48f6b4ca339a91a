-- Why files produced no embedding.
SELECT status, count(*) AS files, any_value(reason) AS example_reason
FROM errors
GROUP BY status
ORDER BY files DESC;
