"""The BatchNorm study (`bn`: the seed's train-vs-eval gap on real executables, for every norm, with and without
precise BN; `run`: the job's library). Research kept beside the product because the product's health verdict
and its tests are calibrated on it.
May import: files, views, model, train.
"""
