-- requires: neighbors, labelled_files, embeddings
-- The families a family's files have their stored neighbours in (python -m jobs.neighbors), its own first when
-- it leads: for each family, how many of the stored neighbours of the family's files belong to it, their
-- share, and their mean distance. Unlabelled neighbours count as '(unlabelled)'.
CREATE OR REPLACE MACRO family_neighbors(fam, k := 10) AS TABLE
WITH members AS (
    SELECT l.sha256 FROM labelled_files l JOIN embeddings e USING (sha256) WHERE l.family = fam
),
checked AS (
    SELECT CASE WHEN fam IS NULL THEN error('the family is NULL')
                WHEN NOT EXISTS (SELECT 1 FROM members)
                    THEN error('unknown family ''' || fam || ''': no file of the current model version has it '
                               || '(family_counts lists the families)')
                ELSE embedlib_check_k(k, 10000) END AS ok
),
votes AS (
    SELECT coalesce(f.family, '(unlabelled)') AS family, count(*) AS neighbors, avg(n.distance) AS mean_distance,
           count(DISTINCT n.sha256) AS from_files
    FROM neighbors n JOIN members m ON m.sha256 = n.sha256
    LEFT JOIN labelled_files f ON f.sha256 = n.neighbor
    GROUP BY ALL
)
SELECT (row_number() OVER (ORDER BY neighbors DESC, mean_distance, family))::INTEGER AS rank, family, neighbors,
       round(neighbors / sum(neighbors) OVER (), 4) AS share, mean_distance::FLOAT AS mean_distance, from_files
FROM votes, checked
WHERE checked.ok
ORDER BY rank
LIMIT k;
