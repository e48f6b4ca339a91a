-- The manifest given to connect(): every cell is text; an empty family is no family.
SELECT * REPLACE (nullif(trim(family), '') AS family) FROM embedlib_src_labels
