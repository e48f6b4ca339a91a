-- requires: embeddings, evidence
-- ("similar" is quoted where it is created: SIMILAR is an SQL keyword. Calls need no quotes.)
-- Similarity in plain SQL, over the current model version (`embeddings`, FLOAT[@DIM@]):
--   SELECT * FROM similar('<sha256>', 10);                      -- the file itself excluded
--   SELECT * FROM similar_to_vector([0.1, ...], 10, metric := 'l2');
-- Columns: rank (1 = nearest), distance (cosine distance by default, 'l2' = Euclidean), sha256, path, family
-- (as recorded when embedded), format, size_bytes, run_id. Ties are broken by sha256. A query vector taken
-- from another model version is refused unless cross_version := true (the spaces are not comparable).
-- Every check raises one clear error instead of returning no rows. The metric picks one of two UNION ALL
-- branches by a constant filter (the other is pruned when the plan is made): no per-row CASE. The distance
-- pass orders by distance alone (a sha256 tie-break would read every sha256 string) and keeps sha256; the k
-- winners are joined back for their other columns and ranked by (distance, sha256). Rows tied at the k-th
-- distance may be chosen in any order. A query vector given as a value stays a constant in the distance.
-- The join back is on rowid for a materialised table (a direct fetch), on sha256 for the Parquet views.
-- shared := true adds a column `shared`: the texts of the (at most 8) evidence items the file and each
-- neighbour both keep, by contribution (embedlib/sql/explain.sql; NULL where either has no evidence). The column
-- exists only when asked, and the evidence is read only then.
-- Re-scoring (cosine, the current model version, rows that keep their `words`; embedlib/model/exact.py): the
-- embedlib_rerank_depth() nearest by the stored embedding are re-scored as
--   1 - (learned slice . learned slice + sum over the word ids both keep of weight x weight)
-- (the fixed part compared exactly instead of through its fold) and the k best of them returned. A candidate or
-- query without words (written before the column) keeps its stored cosine distance. metric := 'l2' and
-- cross-version queries are not re-scored.

CREATE OR REPLACE MACRO "similar"(sha, k := 10, metric := 'cosine', from_version := NULL, cross_version := false,
                                  shared := false) AS TABLE
WITH q0 AS (
    SELECT
        (SELECT {'v': v, 'words': words} FROM (
            SELECT embedding AS v, words FROM embeddings
            WHERE sha256 = lower(sha) AND coalesce(from_version, embedlib_current_version()) = embedlib_current_version()
            UNION ALL
            SELECT try_cast(a.embedding AS FLOAT[@DIM@]) AS v, NULL AS words FROM embeddings_all a
            WHERE a.sha256 = lower(sha) AND a.model_version = from_version
              AND from_version <> embedlib_current_version()
        ) LIMIT 1) AS hit,
        embedlib_check_sha256(sha) AND embedlib_check_k(k, embedlib_max_k()) AND embedlib_check_metric(metric)
        AND CASE WHEN from_version IS NOT NULL AND from_version <> embedlib_current_version() AND NOT cross_version
                 THEN error('comparing embeddings of model version ' || from_version || ' with the current model version '
                            || embedlib_current_version() || ' is refused: pass cross_version := true to do it anyway')
                 ELSE true END AS ok
),
q AS (
    SELECT hit.v AS v, (hit.v::FLOAT[])[1:embedlib_learned_dim()] AS learned, hit.words AS words,
           words IS NOT NULL AND lower(metric) <> 'l2' AND embedlib_learned_dim() < @DIM@ AS rescore,
           CASE WHEN ok AND hit.v IS NULL THEN error(CASE
        WHEN from_version IS NOT NULL AND from_version <> embedlib_current_version()
             AND EXISTS (SELECT 1 FROM embeddings_all WHERE sha256 = lower(sha) AND model_version = from_version)
            THEN 'model version ' || from_version || ' embeds '
                 || (SELECT any_value(len(embedding)) FROM embeddings_all WHERE model_version = from_version)
                 || ' dimensions and the current model version ' || embedlib_current_version() || ' @DIM@: they cannot be compared'
        WHEN from_version IS NOT NULL AND from_version <> embedlib_current_version()
            THEN 'sha256 ' || lower(sha) || ' is not embedded under model version ' || from_version
        WHEN EXISTS (SELECT 1 FROM embeddings_all WHERE sha256 = lower(sha))
            THEN 'sha256 ' || lower(sha) || ' is not embedded under the current model version '
                 || embedlib_current_version() || ' (only under '
                 || (SELECT string_agg(DISTINCT model_version, ', ') FROM embeddings_all WHERE sha256 = lower(sha))
                 || '): compare across versions with from_version := ..., cross_version := true'
        WHEN EXISTS (SELECT 1 FROM errors WHERE sha256 = lower(sha))
            THEN 'sha256 ' || lower(sha) || ' was not embedded: errors lists it with status '
                 || (SELECT string_agg(DISTINCT status, ', ') FROM errors WHERE sha256 = lower(sha))
        ELSE 'unknown sha256 ' || lower(sha) || ': no such file in embeddings' END) ELSE ok END AS ok
    FROM q0
),
top AS (
    SELECT * FROM (
        SELECT array_cosine_distance(e.embedding, q.v) AS distance, e.@KEY@ AS key
        FROM embeddings e, q WHERE q.ok AND lower(metric) <> 'l2'
        UNION ALL
        SELECT array_distance(e.embedding, q.v), e.@KEY@
        FROM embeddings e, q WHERE q.ok AND lower(metric) = 'l2'
    )
    ORDER BY distance
    -- the file itself is (nearly always) among them: dropped below
    LIMIT greatest(k, CASE WHEN (SELECT rescore FROM q) THEN embedlib_rerank_depth() ELSE 1 END) + 1
),
candidates AS (
    SELECT top.key, top.distance, e.sha256, e.path, e.family, e.format, e.size_bytes, e.run_id, e.words,
           (e.embedding::FLOAT[])[1:embedlib_learned_dim()] AS learned
    FROM top JOIN embeddings e ON e.@KEY@ = top.key
    WHERE e.sha256 <> lower(sha)
),
exact AS (  -- the exact dot product of each re-scored candidate's words with the file's
    SELECT c.key, sum(c.weight * f.weight) AS dot
    FROM (SELECT key, unnest(words, recursive := true) FROM candidates WHERE (SELECT rescore FROM q)) c
    JOIN (SELECT unnest(words, recursive := true) FROM q WHERE rescore) f ON f.id = c.id
    GROUP BY c.key
),
ranked AS (
    SELECT (row_number() OVER (ORDER BY r.distance, r.sha256))::INTEGER AS rank, r.*
    FROM (
        SELECT CASE WHEN q.rescore AND c.words IS NOT NULL
                    THEN 1 - (list_dot_product(q.learned, c.learned) + coalesce(x.dot, 0))
                    ELSE c.distance END AS distance,
               c.sha256, c.path, c.family, c.format, c.size_bytes, c.run_id
        FROM candidates c CROSS JOIN q LEFT JOIN exact x ON x.key = c.key
    ) r
    QUALIFY rank <= greatest(k, 1)
),
own AS (SELECT any_value(evidence) AS evidence FROM evidence WHERE shared AND sha256 = lower(sha))
SELECT COLUMNS(c -> c <> 'shared' OR coalesce(shared, false)) FROM (
    SELECT ranked.*, embedlib_shared_items(own.evidence, ev.evidence, 8) AS shared
    FROM ranked CROSS JOIN own LEFT JOIN evidence ev ON shared AND ev.sha256 = ranked.sha256
)
ORDER BY rank;

CREATE OR REPLACE MACRO similar_to_vector(vec, k := 10, metric := 'cosine', from_version := NULL, cross_version := false) AS TABLE
WITH q AS (
    SELECT
        CASE WHEN vec IS NULL THEN error('the query vector is NULL')
             WHEN len(vec) <> @DIM@
                 THEN error('the query vector has ' || len(vec) || ' dimensions; model version '
                            || embedlib_current_version() || ' embeds @DIM@')
             WHEN len(list_filter(vec::DOUBLE[], x -> x IS NULL OR isnan(x) OR isinf(x))) > 0
                 THEN error('the query vector holds NULL, NaN or infinite values')
             WHEN lower(metric) = 'cosine' AND list_dot_product(vec::DOUBLE[], vec::DOUBLE[]) = 0
                 THEN error('the query vector is all zeros: it has no cosine distance')
             WHEN from_version IS NOT NULL AND from_version <> embedlib_current_version() AND NOT cross_version
                 THEN error('comparing an embedding of model version ' || from_version || ' with the current model version '
                            || embedlib_current_version() || ' is refused: pass cross_version := true to do it anyway')
             ELSE embedlib_check_k(k, embedlib_max_k()) AND embedlib_check_metric(metric) END AS ok
),
top AS (
    SELECT * FROM (
        SELECT array_cosine_distance(e.embedding, try_cast(vec AS FLOAT[@DIM@])) AS distance, e.@KEY@ AS key
        FROM embeddings e WHERE (SELECT ok FROM q) AND lower(metric) <> 'l2'
        UNION ALL
        SELECT array_distance(e.embedding, try_cast(vec AS FLOAT[@DIM@])), e.@KEY@
        FROM embeddings e WHERE (SELECT ok FROM q) AND lower(metric) = 'l2'
    )
    ORDER BY distance
    LIMIT greatest(k, 1)
)
SELECT (row_number() OVER (ORDER BY top.distance, e.sha256))::INTEGER AS rank, top.distance, e.sha256, e.path,
       e.family, e.format, e.size_bytes, e.run_id
FROM top JOIN embeddings e ON e.@KEY@ = top.key
ORDER BY rank;
