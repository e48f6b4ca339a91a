-- requires: embeddings
-- The evidence view of a root whose files all predate the evidence column: every row's evidence is NULL, so the
-- macros that read it answer as they do for such rows in a newer root.
CREATE OR REPLACE VIEW evidence AS
SELECT sha256, NULL::STRUCT(item VARCHAR, kind VARCHAR, weight FLOAT)[] AS evidence FROM embeddings;
