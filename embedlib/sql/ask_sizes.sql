SELECT * FROM size_distribution;
