-- The family of every content of a training corpus, from the manifest given to this training run: each manifest
-- row (`listing`) joins the corpus's latest record of its file: the sample written for it, or the duplicate row
-- that names the content it shares with another file. `corpus_samples` and `corpus_errors` hold the corpus's
-- committed rows of views version $version.
WITH known AS (
    SELECT path, sha256, run_id FROM corpus_samples
    UNION ALL
    SELECT path, sha256, run_id FROM corpus_errors
    WHERE status = 'duplicate' AND sha256 IS NOT NULL AND model_version = $version
),
latest AS (
    SELECT path, sha256 FROM known
    QUALIFY row_number() OVER (PARTITION BY path ORDER BY run_id DESC, sha256) = 1
)
SELECT k.sha256, l.family
FROM listing l JOIN latest k ON l.path = k.path
WHERE l.status IS NULL AND l.family IS NOT NULL AND l.family <> '';
