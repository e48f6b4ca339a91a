-- requires: errors
-- Why files produced no embedding, by status, over every run.
CREATE OR REPLACE VIEW error_counts AS
SELECT status, count(*) AS files, count(DISTINCT run_id) AS runs, any_value(reason) AS example_reason
FROM errors
GROUP BY status
ORDER BY files DESC, status;
