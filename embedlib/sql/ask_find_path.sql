-- Embedded files of the current model version whose path is $path exactly, else those whose path contains it
-- (literally: no pattern characters), smallest path first.
WITH exact AS (SELECT sha256, path FROM embeddings WHERE path = $path)
SELECT sha256, path FROM exact
UNION ALL
SELECT sha256, path FROM embeddings WHERE NOT EXISTS (SELECT 1 FROM exact) AND contains(path, $path)
ORDER BY path, sha256
LIMIT embedlib_limit($k, 10000);
