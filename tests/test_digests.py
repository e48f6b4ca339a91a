"""embedlib.eval.digests on real executables of this machine."""

from __future__ import annotations

import glob
import hashlib
import os

import numpy as np
import ppdeep
import pytest
import tlsh

from embedlib.eval import digests
from embedlib.views import digests as file_digests

LS, CP = "/usr/bin/ls", "/usr/bin/cp"
needs_coreutils = pytest.mark.skipif(not (os.path.isfile(LS) and os.path.isfile(CP)), reason="no /usr/bin/ls, cp")


def small_executables(n: int, max_size: int = 200_000) -> list[str]:
    """A few real files, smallest first (ppdeep is pure Python: keep the test fast)."""
    paths = [p for p in glob.glob("/usr/bin/*") if os.path.isfile(p) and not os.path.islink(p)]
    paths = [p for p in paths if 2_000 < os.path.getsize(p) < max_size]
    return sorted(paths, key=lambda p: (os.path.getsize(p), p))[:n]


@needs_coreutils
def test_real_files_against_themselves_and_each_other():
    ls, cp = (file_digests.compute(open(p, "rb").read()) for p in (LS, CP))
    assert ls["tlsh"] and ls["ssdeep"] and cp["tlsh"] and cp["ssdeep"]
    assert tlsh.diff(ls["tlsh"], ls["tlsh"]) == 0
    assert ppdeep.compare(ls["ssdeep"], ls["ssdeep"]) == 100
    assert digests.tlsh_distance(ls["tlsh"], cp["tlsh"]) > 0
    assert digests.ssdeep_similarity(ls["ssdeep"], cp["ssdeep"]) == ppdeep.compare(ls["ssdeep"], cp["ssdeep"])
    m = digests.tlsh_distance_matrix([ls["tlsh"], cp["tlsh"], None])
    assert m[0, 0] == 0 and m[0, 1] == m[1, 0] == tlsh.diff(ls["tlsh"], cp["tlsh"])
    assert np.isnan(m[2]).all() and np.isnan(m[:, 2]).all()


def test_short_and_flat_inputs_have_no_tlsh():
    assert file_digests.compute(b"0123456789")["tlsh"] is None
    assert file_digests.tlsh_digest(b"\0" * 4096) is None  # no variety: TLSH says TNULL
    assert file_digests.compute(b"0123456789")["ssdeep"] == ppdeep.hash(b"0123456789")
    assert file_digests.ssdeep_digest(b"") is None
    assert np.isnan(digests.tlsh_distance("TNULL", "TNULL"))
    assert np.isnan(digests.ssdeep_similarity("not a digest", "3:a:b"))


def test_ssdeep_matrix_equals_ppdeep_compare_on_every_pair():
    files = small_executables(40)
    assert len(files) >= 10
    hashes = [ppdeep.hash(open(p, "rb").read()) for p in files]
    # variants that share text with real digests, and odd ones: block size x2, equal first strings, short strings
    bs, s1, s2 = hashes[0].split(":")
    hashes += [f"{int(bs) * 2}:{s2}:{s2[:10]}", f"{bs}:{s1}:zzzzzzzz", f"{bs}:{s1[:-3]}xyz:{s2}", "3:ab:c", "3:ab:d"]
    m = digests.ssdeep_score_matrix(hashes)
    expected = np.array([[ppdeep.compare(a, b) for b in hashes] for a in hashes], dtype=float)
    assert np.array_equal(m, expected)
    assert (expected > 0).sum() > len(hashes)  # some non-trivial pairs were actually scored


def test_ssdeep_matrix_missing_digests_are_nan():
    m = digests.ssdeep_score_matrix(["3:abcdefgh:abc", None, "garbage"])
    assert m[0, 0] == 100
    assert np.isnan(m[1]).all() and np.isnan(m[2]).all() and np.isnan(m[:, 1]).all()


def test_digest_file_reads_bounded_bytes_and_checks_identity(tmp_path):
    path = small_executables(1)[0]
    data = open(path, "rb").read()
    sha = hashlib.sha256(data).hexdigest()
    full = digests.digest_file(path, max_bytes=len(data) + 10, expected_sha256=sha)
    assert full["reason"] == "" and full["bytes"] == len(data)
    assert full["tlsh"] == file_digests.tlsh_digest(data) and full["ssdeep"] == ppdeep.hash(data)
    assert full["tlsh_cpu_s"] >= 0 and full["ssdeep_wall_s"] >= 0
    head = digests.digest_file(path, max_bytes=1000)
    assert head["bytes"] == 1000 and head["ssdeep"] == ppdeep.hash(data[:1000])
    changed = digests.digest_file(path, max_bytes=1000, expected_sha256="0" * 64)
    assert changed["tlsh"] is None and "changed" in changed["reason"]
    missing = digests.digest_file(str(tmp_path / "nope"), max_bytes=1000)
    assert missing["tlsh"] is None and missing["reason"]
    both = digests.digest_files([path, path], 1000, workers=2)
    assert [r["ssdeep"] for r in both] == [head["ssdeep"]] * 2


def test_the_compiled_ssdeep_digest_is_ppdeeps_and_much_faster():
    """The pipeline's and the evaluate job's ssdeep (libfuzzy via pydeep2) is the pure-Python ppdeep's digest."""
    import time

    files = small_executables(12) + [p for p in (LS, CP) if os.path.isfile(p)]
    for p in files:
        data = open(p, "rb").read()
        assert file_digests.ssdeep_digest(data) == ppdeep.hash(data), p
    data = b"".join(open(p, "rb").read() for p in files)
    t = time.process_time()
    slow = ppdeep.hash(data)
    slow_s = time.process_time() - t
    t = time.process_time()
    fast = file_digests.ssdeep_digest(data)
    fast_s = time.process_time() - t
    assert fast == slow and fast_s * 5 < slow_s
