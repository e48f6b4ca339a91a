SELECT * FROM explain($sha_a, $sha_b, k := $k);
