-- Checks that stop a query with one clear line (error()) instead of a silently empty or wrong answer,
-- Used by the macros of the other files; usable from any query.

-- k between 1 and `most`, a whole number.
CREATE OR REPLACE MACRO embedlib_check_k(k, most) AS
    CASE WHEN k IS NULL OR k < 1 OR k > most OR k <> floor(k)
         THEN error('k must be a whole number between 1 and ' || most || ' (got ' || coalesce(k::VARCHAR, 'NULL') || ')')
         ELSE true END;

-- A sha256 as 64 hex digits (either case).
CREATE OR REPLACE MACRO embedlib_check_sha256(s) AS
    CASE WHEN s IS NULL OR NOT regexp_full_match(s, '[0-9a-fA-F]{64}')
         THEN error('malformed sha256 ' || coalesce('''' || s || '''', 'NULL') || ': expected 64 hex digits')
         ELSE true END;

-- A distance threshold: a finite number >= 0 (NaN compares greater than everything in DuckDB, so
-- `distance <= NaN` would make every pair a match).
CREATE OR REPLACE MACRO embedlib_check_distance(t) AS
    CASE WHEN t IS NULL OR isnan(t::DOUBLE) OR isinf(t::DOUBLE) OR t < 0
         THEN error('the distance threshold must be a finite number >= 0 (got ' || coalesce(t::VARCHAR, 'NULL') || ')')
         ELSE t::DOUBLE END;

-- The metric name, checked.
CREATE OR REPLACE MACRO embedlib_check_metric(metric) AS
    CASE WHEN metric IS NULL OR lower(metric) NOT IN ('cosine', 'l2')
         THEN error('unknown metric ' || coalesce('''' || metric || '''', 'NULL') || ': use ''cosine'' or ''l2''')
         ELSE true END;

-- The current model version (of the latest finished run unless connect() was given one).
CREATE OR REPLACE MACRO embedlib_current_version() AS (SELECT model_version FROM embedlib_settings);

-- How similar() re-scores (settings.sql): the learned part's length and how many nearest candidates.
CREATE OR REPLACE MACRO embedlib_learned_dim() AS (SELECT learned_dim FROM embedlib_settings);
CREATE OR REPLACE MACRO embedlib_rerank_depth() AS (SELECT rerank_depth FROM embedlib_settings);

-- The most neighbours one similarity query returns (a larger k is a mistake, not a question).
CREATE OR REPLACE MACRO embedlib_max_k() AS 10000;

-- k itself once checked, for a LIMIT.
CREATE OR REPLACE MACRO embedlib_limit(k, most) AS CASE WHEN embedlib_check_k(k, most) THEN k END;
