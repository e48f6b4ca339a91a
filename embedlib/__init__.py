"""embedlib: executables -> views of their bytes (sketches of strings, identifier names and the words inside them;
the byteplot as an option) -> an embedding network with BatchNorm made honest -> Parquet -> similarity in SQL.

Packages by stage, lowest first (imports flow one way: tests/test_architecture.py):
  config, schema, sql   every setting, every column, every statement
  files                 what the user asked for; bounded reads of one file
  views                 pure: bytes -> fixed-shape views
  root                  an output root as a table: storage, commits, the lease, compaction
  model                 the network, checkpoints, the embedder
  train                 split, labels, batches, the loop, precise BN, health, the training job
  pipeline, query       files -> committed runs; DuckDB over committed runs
  eval, study           retrieval against training-free baselines; the BatchNorm study
  ray_io                the only Ray code
  demo                  the main job on this machine
"""

__version__ = "0.1.0"
