SELECT * FROM similar($sha256, $k, metric := $metric, from_version := $from_version, cross_version := $cross_version);
