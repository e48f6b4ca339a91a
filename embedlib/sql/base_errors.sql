SELECT * FROM embedlib_src_errors
