"""jobs.evaluate end to end: embedding variants beside the strings sketch, TLSH and ssdeep, on real files."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlib import schema
from jobs import evaluate

DIM = 8
FAMILIES = ("a", "b", "c")
PER_FAMILY = 4


def real_files(n: int) -> list[str]:
    paths = [p for p in glob.glob("/usr/bin/*") if os.path.isfile(p) and not os.path.islink(p)]
    paths = sorted((p for p in paths if 2_000 < os.path.getsize(p) < 150_000), key=lambda p: (os.path.getsize(p), p))
    seen: set[str] = set()
    distinct = []
    for p in paths:  # distinct contents (gunzip and uncompress are one file on some systems)
        digest = hashlib.sha256(open(p, "rb").read()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            distinct.append(p)
    paths = distinct
    if len(paths) < n:
        pytest.skip(f"need {n} small files in /usr/bin")
    return paths[:n]


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def write_table(root, rows, dim=DIM, model=None):
    (root / "embeddings").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.embeddings_schema(dim)),
                   root / "embeddings" / "part-000000.parquet")
    if model:
        (root / "_run.json").write_text(json.dumps({"model": model}))


def build_run(tmp_path):
    """3 families x 4 files near their own axis, except a3, placed next to family b; one single-file family
    ("solo"); one unlabelled file. File a1 is a copy of a0 under the same name in another folder with one byte
    appended (the "same program, other architecture" case), with a0's vector."""
    src = real_files(len(FAMILIES) * PER_FAMILY + 2)
    rng = np.random.default_rng(0)
    rows, manifest = [], []
    for i, path in enumerate(src):
        if i == 1:  # a1: a0's namesake in another folder
            os.makedirs(tmp_path / "other", exist_ok=True)
            path = str(tmp_path / "other" / os.path.basename(src[0]))
            shutil.copyfile(src[0], path)
            with open(path, "ab") as fh:
                fh.write(b"\0")
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
        if i == 1:
            vector = rows[0]["embedding"]
        rows.append({"sha256": hashlib.sha256(data).hexdigest(), "path": path, "size_bytes": len(data),
                     "format": "elf", "family": None, "truncated": False, "tlsh": None, "ssdeep": None,
                     "model_version": "m-test", "run_id": "r1", "embedding": list(vector)})
        manifest.append((path, family))
    labels = tmp_path / "manifest.csv"
    labels.write_text("path,family\n" + "".join(f"{p},{f}\n" for p, f in manifest))
    write_table(tmp_path / "run", rows)
    return str(tmp_path / "run"), str(labels), rows


def table(report, method, split="unseen", mode="all", subset="all"):
    return next(r for r in report["rows"] if (r["method"], r["split"], r["mode"], r["subset"]) ==
                (method, split, mode, subset))


def test_variants_beside_every_baseline(tmp_path, capsys):
    out, labels, rows = build_run(tmp_path)
    # a second variant: the same table with a3 put back in its family
    rows2 = [dict(r) for r in rows]
    rows2[3]["embedding"] = list(unit(np.eye(DIM)[0] + 0.01))
    write_table(tmp_path / "run2", rows2)
    output = str(tmp_path / "eval")
    report = evaluate.main(["--labels", labels, "--variant", f"first={out}", "--variant",
                            f"second={tmp_path / 'run2'}", "--output", output, "--workers", "1",
                            "--unseen-fraction", "1.0"])  # every family unseen: every labelled file is a query
    for name in ("ablation.md", "ablation.csv", "ablation.parquet", "ablation.json"):
        assert os.path.getsize(os.path.join(output, name)) > 0
    for png in ("retrieval.png", "embedding_map.png"):
        assert open(os.path.join(output, png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    methods = {r["method"] for r in report["rows"]}
    assert methods == {"first", "second", "strings sketch (no training)", "dynamic symbol names TF-IDF (no training)",
                       "words TF-IDF, IDF^2 (no training)", "TLSH", "ssdeep"}
    first, second = table(report, "first"), table(report, "second")
    assert first["queries"] == second["queries"] == 12  # solo and the unlabelled file are no queries
    assert first["p_at_1"] == pytest.approx(11 / 12) and second["p_at_1"] == 1.0
    assert table(report, "first", split="known")["queries"] == 0
    # other programs only: a0 and a1 lose each other, so each finds 2 of its family in its top 10 instead of 3
    other = table(report, "first", mode="other-programs")
    assert other["queries"] == 12 and other["p_at_1"] == pytest.approx(11 / 12)
    assert first["p_at_10"] == pytest.approx(0.3)
    assert other["p_at_10"] == pytest.approx(0.3 - 2 * 0.1 / 12)
    assert {r["subset"] for r in report["rows"]} == {"all", "string-poor"}
    for m in ("strings sketch (no training)", "dynamic symbol names TF-IDF (no training)",
              "words TF-IDF, IDF^2 (no training)", "TLSH", "ssdeep"):
        assert 0.0 <= table(report, m)["map_at_r"] <= 1.0
    cost = report["baseline_cost"]
    assert cost["strings_cpu_ms"] > 0 and cost["tlsh_cpu_ms"] > 0 and cost["symbols_cpu_ms"] > 0
    assert cost["words_cpu_ms"] > 0
    elf = sum(open(r["path"], "rb").read(4) == b"\x7fELF" for r in rows[:-1])  # the last (unlabelled) is no query
    assert sum(cost["symbol_status"].values()) == 13 and cost["symbol_status"].get("ok", 0) == elf
    printed = capsys.readouterr().out
    assert "MAP@R" in printed and "baselines (" in printed and "13/13" in printed  # progress lines


def test_baselines_alone_and_bad_arguments(tmp_path):
    _, labels, _ = build_run(tmp_path)
    report = evaluate.main(["--labels", labels, "--output", str(tmp_path / "e"), "--baselines", "strings,tlsh",
                            "--workers", "1", "--unseen-fraction", "0", "--holdout-fraction", "0.5"])
    assert {r["method"] for r in report["rows"]} == {"strings sketch (no training)", "TLSH"}
    assert table(report, "TLSH", split="unseen")["queries"] == 0
    with pytest.raises(SystemExit):
        evaluate.main(["--labels", labels, "--output", str(tmp_path / "e2"), "--baselines", "nope"])


def test_embedding_cost_with_a_real_multi_view_checkpoint(tmp_path):
    from embedlib.model import checkpoint
    from embedlib.config import Config, from_dict
    from embedlib.model.network import build_model
    from embedlib.views import view_specs

    out, labels, rows = build_run(tmp_path)
    cfg = from_dict({"raster": {"size": 16}, "views": {"names": ["image", "strings", "idents"], "buckets": 64},
                     "model": {"embedding_dim": DIM, "channels": (4, 4, 4, 4), "hidden": 8, "skip_dim": DIM // 2}}, Config())
    checkpoint.save(str(tmp_path / "model"), build_model(cfg.model, 2, view_specs(cfg)), cfg, ["a", "b"], {})
    report = evaluate.main(["--labels", labels, "--variant", f"v={out}", "--model", str(tmp_path / "model"),
                            "--output", str(tmp_path / "e"), "--baselines", "tlsh", "--timing-files", "3",
                            "--workers", "1"])
    cost = next(c for c in report["costs"] if c["method"].startswith("v "))
    assert cost["cpu_ms_per_file"] > 0 and cost["views_cpu_ms"] > 0 and cost["model_cpu_ms"] > 0


def test_pca_2d_recovers_the_main_axes():
    from embedlib.eval.plots import pca_2d

    rng = np.random.default_rng(1)
    x = np.zeros((50, 5))
    x[:, 2] = np.linspace(-3, 3, 50)  # the widest spread
    x[:, 4] = 0.5 * rng.standard_normal(50)
    coords, ratio = pca_2d(x)
    assert ratio[0] > ratio[1] > 0 and ratio.sum() == pytest.approx(1.0)
    assert abs(np.corrcoef(coords[:, 0], x[:, 2])[0, 1]) > 0.999
    assert pca_2d(np.ones((1, 3)))[0].shape == (1, 2)


def trained_checkpoint(path, unseen_fraction: float, holdout_fraction: float = 0.2) -> str:
    """A real (tiny, untrained) checkpoint whose training settings kept `unseen_fraction` of families out."""
    import torch

    from embedlib.config import Config, from_dict
    from embedlib.model import checkpoint
    from embedlib.model.network import build_model

    torch.manual_seed(0)
    cfg = from_dict({"raster": {"size": 16}, "views": {"names": ["image"]},
                     "model": {"embedding_dim": 8, "channels": (4, 4, 4, 4)},
                     "train": {"unseen_family_fraction": unseen_fraction, "holdout_fraction": holdout_fraction}},
                    Config())
    checkpoint.save(str(path), build_model(cfg.model, 2).eval(), cfg, ["fam0", "fam1"], {})
    return str(path)


def test_the_unseen_split_is_the_one_of_the_checkpoint_that_made_the_embeddings(tmp_path, capsys):
    """Without --model, the split comes from the checkpoint the root's embed run recorded: a model that trained on
    every family has no unseen queries (it used to call 20% of its trained families "unseen")."""
    from embedlib.train.split import FAMILY_SALT, bucket
    from query_fixtures import write_embedded_root

    families = ("fam5", "fam0", "fam1")  # name hashes 0.07, 0.34, 0.52: fam5 is "unseen" under the old default 0.2
    assert bucket("fam5", FAMILY_SALT) < 0.2 < bucket("fam0", FAMILY_SALT) < 0.4 < bucket("fam1", FAMILY_SALT)
    paths = real_files(9)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,family\n" + "".join(f"{p},{families[i // 3]}\n" for i, p in enumerate(paths)))
    args = ["--labels", str(labels), "--output", str(tmp_path / "e"), "--baselines", "strings", "--workers", "1",
            "--timing-files", "0"]

    every = write_embedded_root(str(tmp_path / "every"), trained_checkpoint(tmp_path / "m0", 0.0), paths)
    assert len(every) == 9
    report = evaluate.main([*args, "--embeddings", str(tmp_path / "every")])
    assert report["gallery"]["unseen_files"] == 0 and report["gallery"]["unseen_fraction"] == 0.0
    assert table(report, "embedding", split="unseen")["queries"] == 0
    assert "kept no family out of training" in capsys.readouterr().out

    write_embedded_root(str(tmp_path / "kept"), trained_checkpoint(tmp_path / "m4", 0.4, 0.3), paths)
    report = evaluate.main([*args, "--embeddings", str(tmp_path / "kept")])
    assert report["gallery"]["unseen_files"] == 6 and report["gallery"]["unseen_families"] == 2
    assert report["gallery"]["holdout_fraction"] == 0.3
    assert table(report, "embedding", split="unseen")["queries"] == 6
    # a smaller fraction is a subset of the families kept out: allowed; a larger one names trained families
    report = evaluate.main([*args, "--embeddings", str(tmp_path / "kept"), "--unseen-fraction", "0.2"])
    assert report["gallery"]["unseen_files"] == 3
    with pytest.raises(SystemExit, match="trained on"):
        evaluate.main([*args, "--embeddings", str(tmp_path / "kept"), "--unseen-fraction", "0.5"])
    with pytest.raises(SystemExit, match="different splits"):
        evaluate.main([*args, "--variant", f"a={tmp_path / 'every'}", "--variant", f"b={tmp_path / 'kept'}"])
