-- requires: embeddings_all
-- One family per labelled content (sha256): the family recorded when it was embedded (the most frequent one
-- if copies disagree; ties by name). Attribution and purity count these files as labelled.
CREATE OR REPLACE VIEW labelled_files AS
SELECT sha256, first(family ORDER BY n DESC, family) AS family
FROM (SELECT sha256, family, count(*) AS n FROM embeddings_all WHERE family IS NOT NULL GROUP BY ALL)
GROUP BY sha256;
