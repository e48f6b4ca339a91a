SELECT * FROM family_profile($family, k := $k);
