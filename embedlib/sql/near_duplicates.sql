-- Pairs of distinct files whose embeddings are nearly identical (cosine distance below $max_distance).
-- Quadratic: meant for a family or a sample; at scale, restrict with a WHERE on family or format.
SELECT a.sha256 AS sha256_a, b.sha256 AS sha256_b, a.path AS path_a, b.path AS path_b,
       a.family AS family_a, b.family AS family_b,
       round(array_cosine_distance(a.embedding, b.embedding)::DOUBLE, 6) AS distance
FROM embeddings a JOIN embeddings b ON a.sha256 < b.sha256
WHERE array_cosine_distance(a.embedding, b.embedding) < $max_distance
ORDER BY distance, sha256_a, sha256_b
LIMIT $k;
