-- requires: neighbors_all, labelled_files, embeddings_all
-- Near-duplicate groups: connected components of the stored neighbour graph (current model version) keeping
-- only edges within max_distance. Groups chain: two members may be further apart than max_distance.
--   SELECT * FROM near_duplicate_groups(0.01);     -- group_id (smallest sha256), size, purity, ...
--   SELECT * FROM near_duplicate_members(0.01);    -- sha256 -> group_id
-- Components by minimum-label propagation (a recursive CTE keyed by node: each pass only moves labels
-- that got smaller), so the work grows with the graph's diameter, not with its number of paths.
CREATE OR REPLACE MACRO near_duplicate_members(max_distance := 0.01) AS TABLE
WITH RECURSIVE
t AS (SELECT embedlib_check_distance(max_distance) AS t),
edges AS (
    SELECT nb.sha256 AS a, nb.neighbor AS b FROM neighbors_all nb, t
    WHERE nb.model_version = embedlib_current_version() AND nb.distance <= t.t AND nb.sha256 <> nb.neighbor
),
und AS (SELECT a, b FROM edges UNION SELECT b, a FROM edges),
cc(node, grp) USING KEY (node) AS (
    SELECT DISTINCT a, a FROM und
    UNION
    SELECT u.b, min(c.grp)
    FROM cc c JOIN und u ON u.a = c.node JOIN recurring.cc r ON r.node = u.b
    GROUP BY u.b
    HAVING min(c.grp) < min(r.grp)
)
SELECT node AS sha256, grp AS group_id FROM cc;

CREATE OR REPLACE MACRO near_duplicate_groups(max_distance := 0.01) AS TABLE
WITH m AS (SELECT * FROM near_duplicate_members(max_distance)),
lab AS (SELECT m.group_id, m.sha256, f.family FROM m LEFT JOIN labelled_files f USING (sha256)),
fam AS (SELECT group_id, family, count(*) AS n FROM lab WHERE family IS NOT NULL GROUP BY ALL),
top AS (
    SELECT group_id, first(family ORDER BY n DESC, family) AS majority_family, max(n) AS majority,
           sum(n) AS labelled, count(*) AS families
    FROM fam GROUP BY group_id
),
paths AS (
    SELECT sha256, any_value(path) AS path FROM embeddings_all
    WHERE model_version = embedlib_current_version() GROUP BY sha256
)
SELECT g.group_id, g.size, top.majority_family, coalesce(top.labelled, 0) AS labelled,
       coalesce(top.families, 0) AS families, (top.majority / top.labelled)::DOUBLE AS purity, g.members
FROM (
    SELECT m.group_id, count(*) AS size, list(coalesce(p.path, m.sha256) ORDER BY m.sha256) AS members
    FROM m LEFT JOIN paths p USING (sha256) GROUP BY m.group_id
) g LEFT JOIN top USING (group_id)
ORDER BY g.size DESC, g.group_id;
