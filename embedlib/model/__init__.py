"""The embedding network (`network`: one encoder per view, a learned and a fixed training-free part), checkpoints
(`checkpoint`: atomic, verified on load, the model version) and the `embedder` that turns views into vectors
the same way in the pipeline and in the query layer.
May import: errors, config, schema, views, root (checkpoints are written through a root's store).
"""
