-- requires: embeddings_all, labelled_files, neighbors_all
-- drift_versions(version_a, version_b): contents embedded under both model versions, per labelled family.
-- Vectors of two versions are never compared with each other: spread_* is measured within each version's own
-- space (embedlib_centroids, drift.sql), and changed_share is the share of files whose attributed family
-- (majority of stored neighbours) differs. family_changes(version_a, version_b) lists the files.

CREATE OR REPLACE MACRO family_changes(version_a, version_b) AS TABLE
WITH chk AS (
    SELECT CASE
        WHEN version_a IS NULL OR version_b IS NULL THEN error('family_changes needs two model versions')
        WHEN NOT EXISTS (SELECT 1 FROM neighbors_all WHERE model_version = version_a)
            THEN error('no stored neighbours for model version ' || version_a || ': run python -m jobs.neighbors first')
        WHEN NOT EXISTS (SELECT 1 FROM neighbors_all WHERE model_version = version_b)
            THEN error('no stored neighbours for model version ' || version_b || ': run python -m jobs.neighbors first')
        ELSE true END AS ok
)
SELECT a.sha256, coalesce(a.path, b.path) AS path, coalesce(a.family, b.family) AS family,
       a.attributed_family AS attributed_a, a.confidence AS confidence_a,
       b.attributed_family AS attributed_b, b.confidence AS confidence_b,
       a.attributed_family IS DISTINCT FROM b.attributed_family AS changed
FROM attribution_of(version_a) a JOIN attribution_of(version_b) b USING (sha256), chk
WHERE chk.ok
ORDER BY changed DESC, sha256;

CREATE OR REPLACE MACRO drift_versions(version_a, version_b) AS TABLE
WITH ch AS (SELECT * FROM family_changes(version_a, version_b)),
both_versions AS (
    SELECT sha256 FROM embeddings_all WHERE model_version = version_a
    INTERSECT
    SELECT sha256 FROM embeddings_all WHERE model_version = version_b
),
sa AS (SELECT family, avg(to_centroid) AS spread FROM embedlib_centroids(version_a, NULL)
       WHERE sha256 IN (SELECT sha256 FROM both_versions) GROUP BY family),
sb AS (SELECT family, avg(to_centroid) AS spread FROM embedlib_centroids(version_b, NULL)
       WHERE sha256 IN (SELECT sha256 FROM both_versions) GROUP BY family),
chf AS (
    SELECT f.family, count(*) AS files, count(*) FILTER (WHERE ch.changed) AS changed
    FROM ch JOIN labelled_files f USING (sha256) GROUP BY f.family
)
SELECT family, coalesce(chf.files, 0) AS files_with_neighbors, coalesce(chf.changed, 0) AS changed,
       (chf.changed / nullif(chf.files, 0))::DOUBLE AS changed_share,
       sa.spread::DOUBLE AS spread_a, sb.spread::DOUBLE AS spread_b, (sb.spread - sa.spread)::DOUBLE AS spread_shift
FROM sa FULL JOIN sb USING (family) LEFT JOIN chf USING (family)
ORDER BY changed_share DESC NULLS LAST, family;
