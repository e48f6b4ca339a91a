"""Training, and what keeps a trained model honest: the one data `split`, `labels` read from a manifest at training
time, the corpus as blocks and per-rank row shares (`dataset`), the pure torch `loop`, `precise_bn`, the BN and
training-record `health` verdicts, the Ray Train `attempts` a training may resume, and the `trainer` that runs
them in order (block passes are handed in: Ray lives in embedlib.ray_io).
May import: errors, config, schema, sql, files, views, root, model.
"""
