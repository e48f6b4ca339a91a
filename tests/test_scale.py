"""bench/scale.py end to end at a small size: the nightly cycle on the synthetic object store (synth://), its
table and the invariants it checks (every file embedded exactly once, every run's counts as the corpus says, k
neighbours per new row). Tasks run in each run's own process (--executor local): the Ray path of the same
cycle is what the benchmark itself measures."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_scale_bench_runs_a_small_nightly_cycle(tmp_path):
    cmd = [sys.executable, "bench/scale.py", "--files", "200", "--nights", "1", "--executor", "local",
           "--shard-size", "64", "--pool", "40", "--queries", "3", "--tlsh-files", "20", "--materialize-max", "0",
           "-k", "5", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "r.json")]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout
    assert "night 0: 200 files, 200 embedded (200 new, 0 changed), 0 known" in text
    night1 = re.search(r"night 1: 202 files, (\d+) embedded \(2 new, (\d+) changed\), (\d+) known", text)
    assert night1 and int(night1[1]) == 2 + int(night1[2]) and int(night1[3]) == 200 - int(night1[2])
    assert f"neighbours night 1: {night1[1]} new rows x {200 + int(night1[1])} rows" in text
    for row in ("first run  listing", "nightly    neighbours", "bytes per embeddings row", "similar() median"):
        assert row in text
    assert "invariants: every file embedded exactly once across the runs" in text
    assert not os.path.exists(tmp_path / "work" / "n200" / "root")  # each size's root removed unless --keep
