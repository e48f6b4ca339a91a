"""jobs.evaluate end to end on a tiny synthetic embedding table over real files of this machine."""

from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlib import digests, schema
from jobs import evaluate

DIM = 8
FAMILIES = ("a", "b", "c")
PER_FAMILY = 4


def real_files(n: int) -> list[str]:
    paths = [p for p in glob.glob("/usr/bin/*") if os.path.isfile(p) and not os.path.islink(p)]
    paths = sorted((p for p in paths if 2_000 < os.path.getsize(p) < 150_000), key=lambda p: (os.path.getsize(p), p))
    if len(paths) < n:
        pytest.skip(f"need {n} small files in /usr/bin")
    return paths[:n]


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def build_run(tmp_path, with_digests: bool = False):
    """3 families x 4 files near their own axis, except a3, placed next to family b; one single-file family
    ("solo"); one unlabelled file. Expected by construction: P@1 = MAP@R = 11/12 over 12 queries."""
    paths = real_files(len(FAMILIES) * PER_FAMILY + 2)
    rng = np.random.default_rng(0)
    rows, manifest = [], []
    for i, path in enumerate(paths):
        data = open(path, "rb").read()
        if i < len(FAMILIES) * PER_FAMILY:
            family_index, member = divmod(i, PER_FAMILY)
            family = FAMILIES[family_index]
            center = np.eye(DIM)[family_index]
            if (family, member) == ("a", 3):
                center = np.eye(DIM)[1] + 0.6 * np.eye(DIM)[0]  # cos 0.86 to b, 0.51 to a: its nearest are b's
        elif i == len(FAMILIES) * PER_FAMILY:
            family, center = "solo", np.eye(DIM)[3]
        else:
            family, center = "", np.eye(DIM)[4]  # unlabelled: not evaluated
        vector = unit(center + 0.01 * rng.standard_normal(DIM))
        row = {"sha256": hashlib.sha256(data).hexdigest(), "path": path, "size_bytes": len(data), "format": "elf",
               "family": None, "truncated": False, "tlsh": None, "ssdeep": None, "model_version": "m-test", "run_id": "r1",
               "embedding": vector.tolist()}
        if with_digests:
            row.update(digests.compute(data))
        rows.append(row)
        manifest.append((path, family))
    out = tmp_path / "run"
    (out / "embeddings").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.embeddings_schema(DIM)),
                   out / "embeddings" / "part-000000.parquet")
    labels = tmp_path / "manifest.csv"
    labels.write_text("path,family\n" + "".join(f"{p},{f}\n" for p, f in manifest))
    return str(out), str(labels), rows, manifest


def summary_by_method(output: str) -> dict[str, dict]:
    return {r["method"]: r for r in pq.read_table(os.path.join(output, "summary.parquet")).to_pylist()}


def test_end_to_end_all_methods(tmp_path, capsys):
    out, labels, rows, _ = build_run(tmp_path)
    output = str(tmp_path / "eval")
    evaluate.main(["--embeddings", out, "--labels", labels, "--output", output, "--workers", "1",
                   "--timing-sample", "4"])
    for name in ("summary", "per_family"):
        for ext in ("parquet", "csv", "md"):
            assert os.path.getsize(os.path.join(output, f"{name}.{ext}")) > 0
    for png in ("byteplots.png", "pca.png", "retrieval.png"):
        with open(os.path.join(output, png), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.exists(os.path.join(output, "per_query.parquet"))

    summary = summary_by_method(output)
    assert set(summary) == {"embedding", "tlsh", "ssdeep"}
    emb = summary["embedding"]
    assert emb["queries"] == 12
    assert emb["p_at_1"] == pytest.approx(11 / 12)
    assert emb["map_at_r"] == pytest.approx(11 / 12)
    assert emb["p_at_10"] == pytest.approx(3 / 10)  # R = 3 for every query: at most 3 of the top 10
    assert emb["roc_auc"] > 0.8
    assert emb["p_at_1_expected"] == emb["p_at_1"]  # no ties among cosine distances here
    for method in ("tlsh", "ssdeep"):
        assert 0.0 <= summary[method]["p_at_1"] <= summary[method]["p_at_1_expected"] <= 1.0
        assert summary[method]["cpu_ms_per_file"] >= 0

    per_family = pq.read_table(os.path.join(output, "per_family.parquet")).to_pylist()
    emb_a = next(r for r in per_family if r["family"] == "a" and r["method"] == "embedding")
    assert emb_a["queries"] == 4 and emb_a["p_at_1"] == pytest.approx(3 / 4)
    assert {r["family"] for r in per_family} == set(FAMILIES)  # solo and unlabelled are no queries

    report = json.load(open(os.path.join(output, "evaluation.json")))
    assert report["counts"]["unlabelled_dropped"] == 1
    assert report["single_file_families_skipped"] == ["solo"]
    assert report["digests"]["computed"] == 13 and report["digests"]["from_table"] == 0
    printed = capsys.readouterr().out
    assert "solo" in printed and "MAP@R" in printed and "embedding" in printed


def test_digests_from_the_table_and_max_files(tmp_path):
    out, labels, rows, _ = build_run(tmp_path, with_digests=True)
    output = str(tmp_path / "eval")
    report = evaluate.main(["--embeddings", out, "--labels", labels, "--output", output, "--methods", "tlsh,ssdeep",
                            "--workers", "1", "--timing-sample", "2", "--max-files", "10"])
    assert report["counts"]["labelled"] == 13 and report["counts"]["evaluated"] == 10
    assert report["digests"]["from_table"] == 10 and report["digests"]["computed"] == 0
    assert report["digests"]["timed_files"] == 2
    assert set(summary_by_method(output)) == {"tlsh", "ssdeep"}


def test_model_holdout_and_family_disjoint_queries(tmp_path):
    from embedlib.split import bucket

    out, labels, rows, manifest = build_run(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    fraction = 0.5
    meta = {"config": {"train": {"holdout_fraction": fraction}, "raster": {"size": 32}, "input": {"max_bytes": 4096}},
            "families": ["a", "b"], "model_version": "m-test"}
    (model / "meta.json").write_text(json.dumps(meta))  # no weights: timing says so, metrics do not need them
    fam = dict(manifest)
    labelled = [r for r in rows if fam[r["path"]] in FAMILIES]

    held_out = evaluate.main(["--embeddings", out, "--labels", labels, "--output", str(tmp_path / "e1"),
                              "--model", str(model), "--methods", "embedding", "--timing-sample", "2"])
    assert held_out["queries"] == sum(bucket(r["sha256"]) < fraction for r in labelled)
    assert "not timed" in held_out["embedding_timing"]["note"]

    disjoint = evaluate.main(["--embeddings", out, "--labels", labels, "--output", str(tmp_path / "e2"),
                              "--model", str(model), "--family-disjoint", "--methods", "embedding"])
    assert disjoint["queries"] == PER_FAMILY  # family c; solo has one file
    per_query = pq.read_table(str(tmp_path / "e2" / "per_query.parquet")).to_pylist()
    assert {r["family"] for r in per_query} == {"c"} and all(r["p_at_1"] == 1.0 for r in per_query)

    with pytest.raises(SystemExit):
        evaluate.main(["--embeddings", out, "--labels", labels, "--output", str(tmp_path / "e3"),
                       "--family-disjoint"])


def test_embedding_timing_with_a_real_checkpoint(tmp_path):
    from embedlib import checkpoint
    from embedlib.config import Config, from_dict
    from embedlib.model import build_model

    out, labels, _, _ = build_run(tmp_path)
    cfg = from_dict({"raster": {"size": 16}, "model": {"embedding_dim": DIM, "channels": (4, 4, 4, 4)}}, Config())
    checkpoint.save(str(tmp_path / "model"), build_model(cfg.model, 2), cfg, ["a", "b"], {})
    report = evaluate.main(["--embeddings", out, "--labels", labels, "--output", str(tmp_path / "e"),
                            "--model", str(tmp_path / "model"), "--methods", "embedding", "--timing-sample", "3"])
    timing = report["embedding_timing"]
    assert timing["timed_files"] == 3 and timing["cpu_ms_per_file"] > 0 and "note" not in timing
    assert -1.0 <= timing["reembedded_mean_cosine_to_table"] <= 1.0


def test_pca_2d_recovers_the_main_axes():
    from embedlib.plots import pca_2d

    rng = np.random.default_rng(1)
    x = np.zeros((50, 5))
    x[:, 2] = np.linspace(-3, 3, 50)  # the widest spread
    x[:, 4] = 0.5 * rng.standard_normal(50)
    coords, ratio = pca_2d(x)
    assert ratio[0] > ratio[1] > 0 and ratio.sum() == pytest.approx(1.0)
    assert abs(np.corrcoef(coords[:, 0], x[:, 2])[0, 1]) > 0.999
    assert pca_2d(np.ones((1, 3)))[0].shape == (1, 2)
