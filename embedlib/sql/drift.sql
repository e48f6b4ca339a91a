-- requires: embeddings, embeddings_all, labelled_files
-- Drift, per labelled family.
--
-- drift_runs(run_a, run_b): two runs of the current model version (same space). centroid_shift is the cosine
-- distance between the family's mean embedding in run a and in run b; spread_* the mean cosine distance of
-- a run's files to their family's mean in that run.
-- embedlib_centroids(version, runs): each labelled file's cosine distance to its family's mean embedding, the
-- mean taken per run when `runs` lists run ids, over the whole version when it is NULL.

CREATE OR REPLACE MACRO embedlib_centroids(version, runs) AS TABLE
WITH x AS (
    SELECT f.family, CASE WHEN runs IS NULL THEN '*' ELSE e.run_id END AS run_id, e.sha256, e.embedding::FLOAT[] AS v
    FROM embeddings_all e JOIN labelled_files f USING (sha256)
    WHERE e.model_version = version AND (runs IS NULL OR list_contains(runs, e.run_id))
),
u AS (SELECT family, run_id, unnest(v) AS x, generate_subscripts(v, 1) AS i FROM x),
c AS (SELECT family, run_id, i, avg(x) AS x FROM u GROUP BY ALL),
centroid AS (SELECT family, run_id, list(x ORDER BY i) AS centroid FROM c GROUP BY ALL)
SELECT x.family, x.run_id, x.sha256, list_cosine_distance(x.v, centroid.centroid) AS to_centroid, centroid.centroid
FROM x JOIN centroid USING (family, run_id);

CREATE OR REPLACE MACRO drift_runs(run_a, run_b) AS TABLE
WITH chk AS (
    SELECT CASE
        WHEN run_a IS NULL OR run_b IS NULL THEN error('drift_runs needs two run ids')
        WHEN NOT EXISTS (SELECT 1 FROM embeddings WHERE run_id = run_a)
            THEN error('run ' || run_a || ' has no embeddings under the current model version ' || embedlib_current_version())
        WHEN NOT EXISTS (SELECT 1 FROM embeddings WHERE run_id = run_b)
            THEN error('run ' || run_b || ' has no embeddings under the current model version ' || embedlib_current_version())
        ELSE true END AS ok
),
c AS (SELECT * FROM embedlib_centroids(embedlib_current_version(), [run_a, run_b]), chk WHERE chk.ok),
per AS (
    SELECT family, run_id, count(*) AS files, avg(to_centroid) AS spread, any_value(centroid) AS centroid
    FROM c GROUP BY ALL
),
a AS (SELECT * FROM per WHERE run_id = run_a),
b AS (SELECT * FROM per WHERE run_id = run_b)
SELECT family, coalesce(a.files, 0) AS files_a, coalesce(b.files, 0) AS files_b,
       list_cosine_distance(a.centroid, b.centroid)::DOUBLE AS centroid_shift,
       a.spread::DOUBLE AS spread_a, b.spread::DOUBLE AS spread_b
FROM a FULL JOIN b USING (family)
ORDER BY centroid_shift DESC NULLS LAST, family;

