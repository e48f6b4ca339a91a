-- requires: embeddings
-- The evidence kept with each embedding of the current model version (schema.EVIDENCE: the file's most
-- distinctive strings, names and words, heaviest first). NULL for rows written before evidence was kept.
CREATE OR REPLACE VIEW evidence AS
SELECT sha256, evidence FROM embeddings;
