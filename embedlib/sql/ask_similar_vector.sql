SELECT * FROM similar_to_vector($vector, $k, metric := $metric, from_version := $from_version,
                                cross_version := $cross_version);
