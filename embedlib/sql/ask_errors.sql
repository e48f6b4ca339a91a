-- Errors by status, over every run or one run ($run).
SELECT status, count(*) AS files, count(DISTINCT run_id) AS runs, any_value(reason) AS example_reason
FROM errors
WHERE $run IS NULL OR run_id = $run
GROUP BY status
ORDER BY files DESC, status;
