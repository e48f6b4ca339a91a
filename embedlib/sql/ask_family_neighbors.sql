SELECT * FROM family_neighbors($family, k := $k);
