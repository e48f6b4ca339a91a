-- requires: embeddings, evidence, errors, labelled_files
-- Why two files are near, from the evidence kept with each embedding (embedlib/views/evidence.py): an item's
-- weight is its share of its view's TF-IDF unit vector under the model's IDF, so for an item both files keep,
-- weight_a * weight_b is what it adds to their TF-IDF cosine in that view (`contribution`).
--   SELECT * FROM explain('<sha256 a>', '<sha256 b>');          -- shared items first, then each side's own
--   SELECT * FROM similar('<sha256>', 10, shared := true);       -- adds `shared`: the top shared items
--   SELECT * FROM family_profile('<family>');                    -- the items most characteristic of a family
-- Items are matched by their text. Rows embedded before evidence was kept have NULL evidence: explain() says
-- so in one line, similar()'s `shared` is NULL for them, family_profile() counts only files with evidence.

-- One clear error unless `sha` is a sha256 embedded under the current model version (the same reasons as
-- similar()'s: malformed, of another version only, an error row, unknown).
CREATE OR REPLACE MACRO embedlib_check_embedded(sha) AS
    CASE WHEN NOT embedlib_check_sha256(sha) THEN false
         WHEN EXISTS (SELECT 1 FROM embeddings WHERE sha256 = lower(sha)) THEN true
         WHEN EXISTS (SELECT 1 FROM embeddings_all WHERE sha256 = lower(sha))
             THEN error('sha256 ' || lower(sha) || ' is not embedded under the current model version '
                        || embedlib_current_version() || ' (only under '
                        || (SELECT string_agg(DISTINCT model_version, ', ') FROM embeddings_all WHERE sha256 = lower(sha))
                        || ')')
         WHEN EXISTS (SELECT 1 FROM errors WHERE sha256 = lower(sha))
             THEN error('sha256 ' || lower(sha) || ' was not embedded: errors lists it with status '
                        || (SELECT string_agg(DISTINCT status, ', ') FROM errors WHERE sha256 = lower(sha)))
         ELSE error('unknown sha256 ' || lower(sha) || ': no such file in embeddings') END;

-- The evidence of an embedded file, or one clear error when it has none.
CREATE OR REPLACE MACRO embedlib_evidence_of(sha) AS
    CASE WHEN embedlib_check_embedded(sha)
         THEN coalesce((SELECT any_value(evidence) FROM evidence WHERE sha256 = lower(sha)),
                       error('sha256 ' || lower(sha) || ' has no evidence: it was embedded before evidence was '
                             || 'kept (or by a model without sketch views); embed it again with this release '
                             || 'into a new output root to see why it is near')) END;

-- The texts of the (at most n) items two evidence lists share, by contribution (weight_a * weight_b), then text;
-- NULL when either list is (a row without evidence), so that "shares nothing" and "cannot tell" differ.
CREATE OR REPLACE MACRO embedlib_shared_items(ev_a, ev_b, n) AS
    CASE WHEN ev_a IS NOT NULL AND ev_b IS NOT NULL THEN list_transform(
        list_sort(list_transform(
            list_filter(ev_a, x -> list_contains(list_transform(ev_b, y -> y.item), x.item)),
            x -> {'c': -(x.weight * list_filter(ev_b, y -> y.item = x.item)[1].weight), 'item': x.item})),
        z -> z.item)[1:n] END;

-- The shared items of two files, ranked by contribution, then the items only one of them keeps (heaviest first),
-- at most k rows of each of the three sides ('both', 'a', 'b').
CREATE OR REPLACE MACRO explain(sha_a, sha_b, k := 20) AS TABLE
WITH ok AS (SELECT embedlib_check_k(k, 1024) AS ok),
a AS (SELECT unnest(embedlib_evidence_of(sha_a), recursive := true) FROM ok WHERE ok.ok),
b AS (SELECT unnest(embedlib_evidence_of(sha_b), recursive := true) FROM ok WHERE ok.ok),
sides AS (
    SELECT coalesce(a.item, b.item) AS item, coalesce(a.kind, b.kind) AS kind,
           CASE WHEN a.item IS NOT NULL AND b.item IS NOT NULL THEN 'both' WHEN a.item IS NOT NULL THEN 'a' ELSE 'b' END
               AS side,
           a.weight AS weight_a, b.weight AS weight_b,
           (a.weight * b.weight)::FLOAT AS contribution
    FROM a FULL OUTER JOIN b ON a.item = b.item
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY side ORDER BY coalesce(contribution, weight_a, weight_b) DESC, item)
              AS side_rank
    FROM sides
)
SELECT (row_number() OVER (ORDER BY CASE side WHEN 'both' THEN 0 WHEN 'a' THEN 1 ELSE 2 END, side_rank))::INTEGER
           AS rank,
       side, item, kind, weight_a, weight_b, contribution
FROM ranked
WHERE side_rank <= k
ORDER BY rank;

-- The items most characteristic of a family: over the evidence of its files (labelled_files), those that many
-- of its files keep (coverage) and few files of the whole table keep (table_idf = ln(files / files keeping it)):
-- score = coverage * table_idf. `elsewhere` counts the files of other families (or none) that keep the item.
CREATE OR REPLACE MACRO family_profile(fam, k := 30) AS TABLE
WITH files AS (
    SELECT ev.sha256, l.family, ev.evidence
    FROM evidence ev LEFT JOIN labelled_files l USING (sha256)
    WHERE ev.evidence IS NOT NULL
),
checked AS (
    SELECT CASE
        WHEN fam IS NULL THEN error('the family is NULL')
        WHEN NOT EXISTS (SELECT 1 FROM labelled_files l JOIN embeddings e USING (sha256) WHERE l.family = fam)
            THEN error('unknown family ''' || fam || ''': no file of the current model version has it '
                       || '(family_counts lists the families)')
        WHEN NOT EXISTS (SELECT 1 FROM files WHERE family = fam)
            THEN error('no file of family ''' || fam || ''' has evidence: they were embedded before evidence '
                       || 'was kept')
        ELSE embedlib_check_k(k, 1024) END AS ok
),
items AS (
    SELECT f.sha256, f.family, x.item, x.kind, x.weight
    FROM files f, unnest(f.evidence) AS u(x)
),
totals AS (SELECT count(*) AS n, count(*) FILTER (WHERE family = fam) AS n_family FROM files),
per_item AS (
    SELECT item, any_value(kind ORDER BY weight DESC) AS kind,
           count(DISTINCT sha256) FILTER (WHERE family = fam) AS family_files,
           count(DISTINCT sha256) AS table_files,
           avg(weight) FILTER (WHERE family = fam) AS mean_weight
    FROM items
    GROUP BY item
    HAVING count(*) FILTER (WHERE family = fam) > 0
),
scored AS (
    SELECT p.*, p.family_files / t.n_family AS coverage, ln(t.n / p.table_files) AS table_idf, t.n_family
    FROM per_item p, totals t
)
SELECT (row_number() OVER (ORDER BY coverage * table_idf DESC, item))::INTEGER AS rank, item, kind,
       family_files, n_family AS family_files_with_evidence, table_files - family_files AS elsewhere,
       round(coverage, 4) AS coverage, round(table_idf, 4) AS table_idf, round(coverage * table_idf, 4) AS score,
       mean_weight::FLOAT AS mean_weight
FROM scored, checked
WHERE checked.ok
ORDER BY rank
LIMIT k;
