SELECT * FROM near_duplicate_groups($max_distance) LIMIT embedlib_limit($k, 1000000);
