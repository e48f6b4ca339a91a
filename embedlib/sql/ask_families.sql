SELECT * FROM family_counts LIMIT embedlib_limit($k, 1000000);
