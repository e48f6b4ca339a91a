-- The (at most $n) evidence items that a given evidence list ($evidence, e.g. of an uploaded file) shares with
-- each of the files $sha256s, by contribution.
SELECT sha256, embedlib_shared_items($evidence::STRUCT(item VARCHAR, kind VARCHAR, weight FLOAT)[], evidence, $n) AS shared
FROM evidence
WHERE sha256 IN (SELECT unnest($sha256s::VARCHAR[]));
