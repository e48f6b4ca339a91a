-- A labels manifest in CSV: the file name is bound into @VARIABLE@; every cell is read as text.
CREATE OR REPLACE VIEW embedlib_src_labels AS
SELECT * FROM read_csv(getvariable('@VARIABLE@'), header = true, all_varchar = true, delim = ',', quote = '"',
                       escape = '"');
