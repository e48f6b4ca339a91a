"""The BatchNorm study (jobs/bn_study.py, embedlib/study/bn.py): pure helpers, and main() at a tiny scale on this
machine's own executables, checking the property the study exists for: a briefly trained BN network with a
slow moving average (momentum 0.01) disagrees with itself between train and eval mode, and precise BN (on a
copy) makes eval mode agree again."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch

from embedlib.study import bn
from embedlib.config import Config, ModelConfig
from embedlib.files.corpus import system_executables, top_families, write_manifest
from embedlib.model.network import batch_norms, build_model
from embedlib.files.inputs import InputFile
from embedlib.train.loop import make_optimizer, train_step

# Small roots that still hold three large dpkg families on a Debian machine (libc6-dbg, libc6's gconv
# modules, postgresql); any machine with 3 families of >= 40 ELF files under them will do.
ROOTS = ("/usr/lib/debug", "/usr/lib/x86_64-linux-gnu", "/usr/lib/postgresql", "/usr/bin")
PER_FAMILY = 40


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> str:
    files = system_executables([r for r in ROOTS if os.path.isdir(r)])
    chosen = bn.top_view(top_families(files, PER_FAMILY), 3, PER_FAMILY)
    if len({f.family for f in chosen}) < 3:
        pytest.skip("this machine has fewer than 3 dpkg families with >= 40 ELF files under the test roots")
    return write_manifest(chosen, str(tmp_path_factory.mktemp("bn") / "manifest.csv"))


def _rows(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_views_cap_and_rank_families():
    files = [InputFile(f"/x/a{i}", "a") for i in range(10)] + [InputFile(f"/x/b{i}", "b") for i in range(6)] + \
        [InputFile(f"/x/c{i}", "c") for i in range(3)] + [InputFile("/x/none", None)]
    top = bn.top_view(files, 2, per_family=4)
    assert sorted({f.family for f in top}) == ["a", "b"] and len(top) == 8
    assert bn.top_view(files, 2, per_family=4) == top  # deterministic
    assert sorted({f.family for f in bn.multi_view(files, 3)}) == ["a", "b", "c"]
    assert sorted({f.family for f in bn.multi_view(files, 6)}) == ["a", "b"]


def test_make_study_data_dedupes_and_drops_conflicts():
    shas = [f"{i:064x}" for i in range(40)] + ["0" * 63 + "1", "f" * 64, "f" * 64]
    fams = ["a" if i % 2 else "b" for i in range(40)] + ["a", "a", "b"]  # sha 1 repeated in its own family;
    images = np.arange(len(shas), dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)  # "f"*64 in two
    data = bn.make_study_data("t", shas, fams, images, holdout_fraction=0.25)
    assert data.dropped == {"duplicate": 1, "conflicting_family": 2}
    assert data.families == ["a", "b"]
    assert len(data.train_labels) + len(data.heldout_labels) == 40
    assert 0 < len(data.heldout_labels) < 20
    again = bn.make_study_data("t", shas, fams, images, holdout_fraction=0.25)
    assert np.array_equal(again.heldout_images, data.heldout_images)  # split is a function of sha256


def test_precise_copy_leaves_the_trained_model_alone():
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(norm="batch", bn_momentum=0.01, channels=(4, 8)))
    model = build_model(cfg.model, 2)
    images = torch.randint(0, 256, (64, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 2, (64,))
    optimizer = make_optimizer(model, cfg)
    for start in (0, 32):
        train_step(model, images[start:start + 32], labels[start:start + 32], optimizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = bn.precise_copy(model, images.numpy(), batch_size=10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    (_, model_bn), (_, twin_bn) = batch_norms(model)[0], batch_norms(twin)[0]
    x = images.float().unsqueeze(1) / 127.5 - 1.0
    first = twin.encoders["image"].features[0](x)  # the first BN's input is a per-sample function: exact population stats
    assert torch.allclose(twin_bn.running_mean, first.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not torch.allclose(model_bn.running_mean, twin_bn.running_mean, atol=1e-3)


def test_bn_study_main_tiny_shows_the_seed_gap_and_precise_bn_closes_it(tiny_manifest, tmp_path):
    from jobs import bn_study

    out = tmp_path / "study"
    seeds = (0, 1, 2)
    bn_study.main(["--corpus", tiny_manifest, "--views", "top", "--families", "3", "--files-per-family",
                   str(PER_FAMILY), "--size", "32", "--epochs", "1", "--seeds", *map(str, seeds), "--workers", "1",
                   "--bn-momentum", "0.01", "--output", str(out)])
    for name in ("results.csv", "results.md", "summary.md"):
        assert (out / name).stat().st_size > 0
    rows = _rows(str(out / "results.csv"))
    corpus = rows[0]["corpus"]
    assert (out / f"gap_{corpus}.png").stat().st_size > 1000
    assert (out / f"heldout_{corpus}.png").stat().st_size > 1000
    assert len(rows) == 4 * len(seeds) * 1 * 2  # norms x seeds x epochs x precise_bn
    by = {(r["norm"], int(r["seed"]), r["precise_bn"]): r for r in rows}
    assert set(by) == {(n, s, p) for n in ("batch", "batch-cumulative", "group", "none") for s in seeds
                       for p in ("no", "yes")}

    # The seed bug, and its fix: after one short epoch with momentum 0.01 the running statistics are still
    # near their initial values, so eval mode disagrees with train mode on the very training files; exact
    # statistics (on a copy) make eval mode agree with train mode again. How far the running statistics are
    # off after 3 steps varies with the seed (measured over seeds 0-9 here: agreement without precise BN
    # 0.32-0.95, with it 0.91-0.99, and always higher with it), hence several seeds and a per-seed ordering.
    margins = []
    for seed in seeds:
        no, yes = by[("batch", seed, "no")], by[("batch", seed, "yes")]
        assert float(yes["top1_agreement"]) >= 0.9
        assert float(no["top1_agreement"]) < float(yes["top1_agreement"])
        assert no["train_mode_acc"] == yes["train_mode_acc"]  # train mode ignores running stats: same model
        margins.append(float(yes["top1_agreement"]) - float(no["top1_agreement"]))
    assert sum(margins) / len(margins) >= 0.1
    # No BN layers: precise BN does not apply, and the table says so instead of recomputing.
    for norm in ("group", "none"):
        for seed in seeds:
            assert by[(norm, seed, "yes")]["note"] == bn.NO_BN_NOTE and not by[(norm, seed, "no")]["note"]
            assert float(by[(norm, seed, "no")]["top1_agreement"]) == 1.0
    summary = (out / "summary.md").read_text()
    assert "mean±std over 3 seeds" in summary and "## Verdicts" in summary
    # --replot rebuilds the tables and plots from results.csv alone, to the same summary.
    (out / "summary.md").unlink()
    bn_study.main(["--replot", "--output", str(out), "--no-plots"])
    assert (out / "summary.md").read_text() == summary
