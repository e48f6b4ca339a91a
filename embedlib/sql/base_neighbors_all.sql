SELECT * FROM embedlib_src_neighbors
