-- requires: neighbors_all, labelled_files, embeddings_all
-- Family attribution from the stored neighbours: for each file, the family most of its k nearest labelled
-- neighbours belong to (ties: the one with the nearer best neighbour, then by name), with
--   confidence = votes / labelled neighbours, and its own family (when labelled) for comparison.
-- A file none of whose neighbours is labelled gets attributed_family NULL and confidence 0.
CREATE OR REPLACE MACRO attribution_of(version) AS TABLE
WITH n AS (
    SELECT nb.sha256, nb.run_id, nb.rank, nb.distance, f.family
    FROM neighbors_all nb LEFT JOIN labelled_files f ON f.sha256 = nb.neighbor
    WHERE nb.model_version = version
),
votes AS (
    SELECT sha256, family, count(*) AS votes, min(rank) AS best_rank, avg(distance) AS mean_distance
    FROM n WHERE family IS NOT NULL GROUP BY ALL
),
per_file AS (
    SELECT sha256, any_value(run_id) AS run_id, count(*) AS neighbors, count(family) AS labelled_neighbors,
           min(distance) AS nearest_distance
    FROM n GROUP BY sha256
),
best AS (
    SELECT * FROM votes
    QUALIFY row_number() OVER (PARTITION BY sha256 ORDER BY votes DESC, best_rank, family) = 1
)
SELECT p.sha256, e.path, own.family AS family, b.family AS attributed_family,
       coalesce(b.votes, 0) AS votes, p.labelled_neighbors, p.neighbors,
       coalesce(b.votes / nullif(p.labelled_neighbors, 0), 0)::DOUBLE AS confidence,
       b.mean_distance AS mean_distance_to_family, p.nearest_distance, p.run_id, version AS model_version
FROM per_file p
LEFT JOIN best b USING (sha256)
LEFT JOIN labelled_files own USING (sha256)
LEFT JOIN (SELECT sha256, any_value(path) AS path FROM embeddings_all WHERE model_version = version GROUP BY sha256) e
       USING (sha256);

CREATE OR REPLACE VIEW attribution AS SELECT * FROM attribution_of(embedlib_current_version());
