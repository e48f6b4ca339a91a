SELECT * FROM drift_runs($a, $b);
