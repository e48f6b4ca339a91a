"""The Ray fan-out of jobs.neighbors on a real local Ray cluster gives exactly the in-process answer."""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow.parquet as pq
import pytest

import query_fixtures as qf
from embedlib.query.neighbors import compute_neighbors
from embedlib.ray_io import knn_ray


@pytest.mark.slow
def test_ray_tasks_give_the_same_neighbours(ray_local, tmp_path):
    fx = qf.write_root(str(tmp_path / "ray [1]"))
    local = compute_neighbors(fx.root, run=qf.RUN2, k=6)
    want = pq.read_table(local.parts[0]).to_pylist()
    fanned = compute_neighbors(fx.root, run=qf.RUN2, k=6, fan_out=partial(knn_ray, num_tasks=3))
    got = pq.read_table(fanned.parts[0]).to_pylist()
    assert fanned.backend.endswith("+fan-out") and len(got) == 36 * 6
    assert [(r["sha256"], r["rank"], r["neighbor"]) for r in got] == [(r["sha256"], r["rank"], r["neighbor"]) for r in want]
    assert np.allclose([r["distance"] for r in got], [r["distance"] for r in want])
