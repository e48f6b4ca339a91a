SELECT * FROM drift_versions($a, $b);
