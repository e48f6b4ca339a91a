-- requires: embeddings_all, errors, labels
-- One family per labelled content (sha256). The manifest given to connect() wins: its paths are matched to
-- contents through embeddings (every version) and errors (duplicates name their sha256); contents it does
-- not label keep the family recorded when they were embedded.
CREATE OR REPLACE VIEW labelled_files AS
WITH paths AS (
    SELECT path, sha256 FROM embeddings_all
    UNION
    SELECT path, sha256 FROM errors WHERE sha256 IS NOT NULL
),
from_manifest AS (
    SELECT p.sha256, l.family, count(*) AS n
    FROM labels l JOIN paths p ON p.path = l.path
    WHERE l.family IS NOT NULL
    GROUP BY ALL
),
from_embedding AS (
    SELECT sha256, family, count(*) AS n FROM embeddings_all
    WHERE family IS NOT NULL AND sha256 NOT IN (SELECT sha256 FROM from_manifest)
    GROUP BY ALL
)
SELECT sha256, first(family ORDER BY n DESC, family) AS family
FROM (SELECT * FROM from_manifest UNION ALL SELECT * FROM from_embedding)
GROUP BY sha256;
