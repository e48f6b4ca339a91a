-- The family of every content of a training corpus, from the manifest given to this training run: each manifest
-- row (`listing`) joins the corpus's latest record of its file, by exact identity (the listing's `target` = the
-- rows' `location`: absolute path bytes or object URI, never the displayed path): the sample written for it, or
-- the duplicate row that names the content it shares with another file. `corpus_samples` and `corpus_errors`
-- hold the corpus's committed rows of views version $version.
WITH known AS (
    SELECT location, sha256, run_id FROM corpus_samples
    UNION ALL
    SELECT location, sha256, run_id FROM corpus_errors
    WHERE status = 'duplicate' AND sha256 IS NOT NULL AND model_version = $version
),
latest AS (
    SELECT location, sha256 FROM known
    WHERE location IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY location ORDER BY run_id DESC, sha256) = 1
)
SELECT k.sha256, l.family
FROM listing l JOIN latest k ON l.target = k.location
WHERE l.status IS NULL AND l.family IS NOT NULL AND l.family <> '';
