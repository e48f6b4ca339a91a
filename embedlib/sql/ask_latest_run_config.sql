-- The config (JSON text) of the latest finished run: which model embedded it and how files were read.
SELECT config FROM runs ORDER BY finished DESC NULLS LAST, run_id DESC LIMIT 1;
