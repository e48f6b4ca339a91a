-- Every model version. `embedding` stays FLOAT[] here: versions may differ in size.
SELECT * FROM embedlib_src_embeddings_all
