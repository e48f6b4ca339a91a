-- The current model version of a root whose files all predate the `words` column (schema version 5): the same
-- rows with NULL words, so similar() ranks them by the stored embedding alone, as it does such rows beside newer ones.
SELECT * REPLACE (embedding::FLOAT[@DIM@] AS embedding), NULL::STRUCT(id UINTEGER, weight FLOAT)[] AS words
FROM embedlib_src_embeddings
WHERE model_version = (SELECT model_version FROM embedlib_settings)
