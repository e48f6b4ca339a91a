-- Files per family and format, largest families first.
SELECT coalesce(family, '(unknown)') AS family, count(*) AS files,
       count(*) FILTER (WHERE format = 'elf') AS elf, count(*) FILTER (WHERE format = 'pe') AS pe,
       count(*) FILTER (WHERE format = 'macho') AS macho, round(sum(size_bytes) / 1e6, 1) AS mb
FROM embeddings
GROUP BY ALL
ORDER BY files DESC, family
LIMIT $k;
