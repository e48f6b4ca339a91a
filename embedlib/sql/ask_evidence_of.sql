-- The evidence kept with one embedded file (NULL when it has none).
SELECT evidence FROM evidence WHERE sha256 = lower($sha256) LIMIT 1;
