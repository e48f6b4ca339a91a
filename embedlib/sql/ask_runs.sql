SELECT * FROM run_counts;
