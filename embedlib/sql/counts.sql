-- requires: embeddings, labelled_files
-- Files of the current model version per family (the manifest's family when one was given), format and size.
CREATE OR REPLACE VIEW family_counts AS
SELECT coalesce(f.family, '(unlabelled)') AS family, count(*) AS files,
       count(*) FILTER (WHERE e.format = 'elf') AS elf, count(*) FILTER (WHERE e.format = 'pe') AS pe,
       count(*) FILTER (WHERE e.format = 'macho') AS macho, count(*) FILTER (WHERE e.format = 'other') AS other,
       sum(e.size_bytes) AS bytes
FROM embeddings e LEFT JOIN labelled_files f USING (sha256)
GROUP BY ALL
ORDER BY files DESC, family;

CREATE OR REPLACE VIEW format_counts AS
SELECT format, count(*) AS files, sum(size_bytes) AS bytes, count(*) FILTER (WHERE truncated) AS truncated
FROM embeddings
GROUP BY format
ORDER BY files DESC, format;

-- Sizes in power-of-two buckets [low, high) per format, with the share of the format's files.
CREATE OR REPLACE VIEW size_distribution AS
WITH b AS (
    SELECT format, CASE WHEN size_bytes < 1 THEN 0 ELSE (2::BIGINT ** floor(log2(size_bytes)))::BIGINT END AS low
    FROM embeddings
)
SELECT format, low AS low_bytes, greatest(2 * low, 1) AS high_bytes, files,
       round(files / sum(files) OVER (PARTITION BY format), 4) AS share
FROM (SELECT format, low, count(*) AS files FROM b GROUP BY format, low)
ORDER BY format, low_bytes;
