SELECT * FROM family_changes($a, $b) WHERE changed;
