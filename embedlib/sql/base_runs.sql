SELECT * FROM embedlib_src_runs
