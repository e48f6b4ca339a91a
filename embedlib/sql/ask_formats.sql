SELECT * FROM format_counts;
