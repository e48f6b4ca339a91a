-- k nearest executables to a query vector (a file embedded on the fly with the same model).
SELECT e.sha256, e.path, e.family, e.format, e.size_bytes,
       round(array_cosine_distance(e.embedding, $vector::FLOAT[{dim}])::DOUBLE, 6) AS distance
FROM embeddings e
ORDER BY distance, e.sha256
LIMIT $k;
