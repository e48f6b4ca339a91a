"""A trained model cannot be silently wrong: every training row trains on every rank with equal steps, the
checkpoint records what training did and the health gate refuses a model that did not train, a second training
never silently returns the first model, labels are read at training time, every loss trains under DDP, and GPU
placement fails fast. Real Ray Train (2 gloo workers), real executables, the jobs as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import pick_families
from embedlib import config, pipeline, ray_io
from embedlib.files import corpus
from embedlib.model import checkpoint
from embedlib.train import dataset
from embedlib.train import health
from embedlib.train import pseudo
from embedlib.train import trainer
from embedlib.train.labels import labels_from_manifest

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["views.buckets=256", "model.hidden=32", "model.embedding_dim=48", "model.skip_dim=16", "train.epochs=2",
         "input.max_bytes=262144"]


def _job(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _sets(*settings: str) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


def _meta(path) -> dict:
    with open(os.path.join(path, "meta.json")) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def first_training(system_files, tmp_path_factory):
    """jobs.train with its defaults (shard 256, 2 workers) on 200 labelled files: one block (batch 32, so that the
    ~120 training rows fill a batch on each of the 2 workers)."""
    work = tmp_path_factory.mktemp("train")
    files = pick_families(system_files, families=5, per_family=40)
    manifest = corpus.write_manifest(files, str(work / "m.csv"))
    out = _job("jobs.train", "--input", manifest, "--workdir", str(work / "w"), "--output", str(work / "model"),
               *_sets(*SMALL, "train.batch_size=32"))
    assert out.returncode == 0, out.stderr[-3000:]
    return work, files, out


def test_a_one_block_corpus_trains_every_row_on_two_workers(first_training):
    """The defect: 153 training rows in one block on 2 workers ran 0 steps and was saved as healthy."""
    work, _, out = first_training
    lines = [ln for ln in out.stdout.splitlines() if not ln.startswith("rasterize:")]
    assert lines[0].startswith("training run embedlib-train-") and ": new, from scratch" in lines[0]
    meta = _meta(work / "model")
    n = meta["train_files"]
    assert len(meta["history"]) == 2
    for epoch in meta["history"]:
        world, batch = epoch["world"], epoch["batch_rows"]
        assert world == 2 and epoch["steps"] >= 1 and epoch["steps_min_rank"] == epoch["steps"]
        assert epoch["samples_all_ranks"] == world * epoch["steps"] * batch
        assert epoch["samples_all_ranks"] >= n - world * (batch + 1)  # only the rounding to whole batches
    assert meta["training"]["healthy"] and health.check_health(meta, allow_unhealthy=False) is None
    assert meta["corpus_scans"] == {"probe + document frequencies": 1, "precise BN": 1, "held-out accuracy": 1}
    # the open-set gate, calibrated in the held-out pass (no extra scan) on the held-out files' confidences
    gate = meta["open_set_gate"]
    assert gate["from"] == "held-out files" and gate["files"] == meta["holdout_files"] > 0
    assert -1 < gate["low"] < gate["high"] <= 1 and gate["weight"] == meta["config"]["model"]["gate_weight"]
    model = checkpoint.load(str(work / "model")).model
    assert model.gated and model.gate_range.tolist() == pytest.approx([gate["low"], gate["high"]], abs=1e-6)
    # the defect: jobs.train rasterized on a Ray started without its dashboard, then trained on it, and Ray Train's
    # placement-group cleaner warned once a second that it could not reach the State API
    assert "placement_group_cleaner" not in out.stderr + out.stdout


def test_a_second_training_with_a_relabelled_manifest_trains_anew_under_the_new_labels(first_training):
    """The defects: the same --workdir and --name resumed the finished Ray Train run (no epoch, the old weights),
    and the families frozen into samples/ at rasterization kept the old label."""
    work, files, _ = first_training
    merged, into = sorted({f.family for f in files})[:2]  # a correction: family `merged` was `into` all along
    relabelled = [f if f.family != merged else type(f)(f.path, into) for f in files]
    manifest = corpus.write_manifest(relabelled, str(work / "m2.csv"))
    out = _job("jobs.train", "--input", manifest, "--workdir", str(work / "w"), "--output", str(work / "model2"),
               *_sets(*SMALL, "train.batch_size=32"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "0 rasterized" in out.stdout  # no file was read again: only the labels changed
    lines = [ln for ln in out.stdout.splitlines() if not ln.startswith("rasterize:")]
    assert ": new, from scratch" in lines[0]
    first, second = _meta(work / "model"), _meta(work / "model2")
    assert second["model_version"] != first["model_version"]
    assert merged in first["families"] and merged not in second["families"] and into in second["families"]
    assert all(e["steps"] >= 1 for e in second["history"]) and second["training"]["healthy"]
    assert second["training_run"] != first["training_run"]


def test_a_gpu_embedding_on_a_cluster_without_gpus_is_one_line_not_a_hang(first_training, tmp_path):
    work, files, _ = first_training
    manifest = corpus.write_manifest(files[:20], str(tmp_path / "e.csv"))
    out = _job("jobs.embed", "--model", str(work / "model"), "--input", manifest, "--output", str(tmp_path / "emb"),
               *_sets("embed.use_gpu=true", "embed.gpu_wait_seconds=3"), timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no embedding actor with a GPU could be placed within 3 s" in errors[0]
    assert "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def small_samples(ray_local, system_files, tmp_path_factory):
    """300 labelled files rasterized into 2 blocks (shard 256), with the SMALL settings."""
    work = tmp_path_factory.mktemp("samples")
    files = pick_families(system_files, families=10, per_family=30)
    manifest = corpus.write_manifest(files, str(work / "m.csv"))
    cfg = config.load(None, SMALL)
    pipeline.rasterize_files(manifest, str(work / "corpus"), cfg, progress=False)
    return work, cfg, manifest


def _train(work, cfg, manifest, name, block_map=None, say=print):
    return trainer.train(str(work / "corpus"), str(work / f"model-{name}"), cfg, fit=ray_io.train_with_ray,
                          block_map=block_map or ray_io.ray_block_map, storage=str(work / "ray"), name=name,
                          labels=labels_from_manifest(manifest, str(work / "corpus"), cfg), say=say)


def test_four_workers_on_300_files_train_on_as_many_workers_as_batches_allow(small_samples):
    """The defect: 300 files in 2 blocks on 4 workers gave 2 ranks no block: 0 steps for everyone."""
    work, cfg, manifest = small_samples
    cfg = config.load(None, ["train.num_workers=4", "train.cpus_per_worker=0.5"], base=cfg)
    said: list[str] = []
    meta = _train(work, cfg, manifest, "four", say=said.append)
    n, batch = meta["train_files"], cfg.train.batch_size
    workers = min(4, n // batch)
    assert 1 <= workers < 4
    assert any(line.startswith(f"notice: {n} training rows fill a batch of {batch} on {workers} worker(s)")
               for line in said)
    assert all(e["world"] == workers and e["steps"] >= 1 for e in meta["history"])
    assert meta["training"]["healthy"]


def test_a_training_set_smaller_than_one_batch_is_refused_before_ray_reads_anything(small_samples):
    work, cfg, manifest = small_samples
    cfg = config.load(None, ["train.batch_size=4096"], base=cfg)

    def no_ray(*_args, **_kwargs):
        raise AssertionError("the corpus was read with Ray before the refusal")

    with pytest.raises(trainer.NotEnoughData, match="fewer than one batch of 4096"):
        _train(work, cfg, manifest, "tiny", block_map=no_ray)


@pytest.mark.parametrize("loss", ["supcon", "cosface+supcon"])
def test_every_loss_trains_under_ddp_with_two_gloo_workers(small_samples, loss):
    """The defect: supcon leaves the class directions without a gradient: DDP raised 'Expected to have finished
    reduction in the prior iteration'."""
    work, cfg, manifest = small_samples
    cfg = config.load(None, [f"train.loss={loss}"], base=cfg)
    corp = dataset.scan_corpus(str(work / "corpus"), cfg, labels_from_manifest(manifest, str(work / "corpus"), cfg))
    probe, df = trainer.probe_and_frequencies(corp, ray_io.ray_block_map)
    state, history = ray_io.train_with_ray(cfg, corp, probe, df, str(work / "ray"), f"loss-{loss.replace('+', '-')}")
    assert [e["world"] for e in history] == [2, 2] and all(e["steps"] >= 1 for e in history)
    assert all(e["loss"] == e["loss"] and e["loss"] < 1e6 for e in history)  # finite
    assert "class_directions" in state


def test_a_checkpoint_that_never_trained_is_refused_like_an_unhealthy_one():
    never = {"model_version": "m-x", "bn_health": {"healthy": True}, "train_files": 153,
             "config": {"train": {"epochs": 2, "num_workers": 2, "batch_size": 64}},
             "history": [{"epoch": 0, "steps": 0, "samples_all_ranks": 0, "loss": 0.0},
                         {"epoch": 1, "steps": 0, "samples_all_ranks": 0, "loss": 0.0}]}
    with pytest.raises(health.UnhealthyModelError, match="epoch 1 ran 0 steps on 0 samples"):
        health.check_health(never, allow_unhealthy=False)
    dropped = dict(never, history=[{"epoch": e, "steps": 1, "samples_all_ranks": 128, "loss": 1.0} for e in (0, 1)],
                   train_files=1000)
    with pytest.raises(health.UnhealthyModelError, match="trained on 128 samples of 1000 training rows"):
        health.check_health(dropped, allow_unhealthy=False)
    with pytest.raises(health.UnhealthyModelError, match="records no training epoch"):
        health.check_health({"model_version": "m-y", "bn_health": {"healthy": True}}, allow_unhealthy=False)


def test_a_manifest_without_families_trains_self_supervised_and_stays_honest(system_files, tmp_path):
    """The defect: a corpus without labels could not train at all. jobs.train on a manifest with no family column
    and without pseudo-families trains on every file (InfoNCE between sub-samples), precise BN over the corpus,
    and records it as such; the training record still refuses such a checkpoint when it did not train."""
    files = pick_families(system_files, families=5, per_family=30)
    manifest = tmp_path / "paths.csv"
    manifest.write_text("path\n" + "".join(f"{f.path}\n" for f in files))
    out = _job("jobs.train", "--input", str(manifest), "--workdir", str(tmp_path / "w"), "--output",
               str(tmp_path / "model"), *_sets(*SMALL, "train.batch_size=32", "train.pseudo_families=false"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training (self-supervised) on" in out.stdout and "0 of them labelled in 0 families" in out.stdout
    meta = _meta(tmp_path / "model")
    assert meta["objective"] == "self-supervised" and meta["families"] == [] and meta["labelled_train_files"] == 0
    assert meta["config"]["train"]["self_supervised"] == "true"
    distinct = len({open(f.path, "rb").read() for f in files})
    assert meta["train_files"] == distinct  # every content trains: no label means no held-out split
    assert len(meta["history"]) == 2 and all(e["steps"] >= 1 and e["labelled_all_ranks"] == 0 for e in meta["history"])
    assert all(0 < e["loss"] < 1e6 for e in meta["history"])  # finite (that it learns: test_train_loop)
    assert meta["precise_bn"]["layers"] and meta["bn_health"]["healthy"] and meta["training"]["healthy"]
    assert health.check_health(meta, allow_unhealthy=False) is None
    assert "open_set_gate" not in meta  # no family direction, no confidence: the embedding has one fixed mix
    never = dict(meta, training=None, history=[dict(e, steps=0, samples_all_ranks=0) for e in meta["history"]])
    with pytest.raises(health.UnhealthyModelError, match="ran 0 steps"):
        health.check_health(never, allow_unhealthy=False)
    refused = _job("jobs.train", "--input", str(manifest), "--workdir", str(tmp_path / "w"), "--output",
                   str(tmp_path / "model-no"), *_sets(*SMALL, "train.batch_size=32", "train.self_supervised=false",
                                                      "train.pseudo_families=false"))
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert refused.returncode != 0 and len(errors) == 1 and "train.self_supervised=true" in errors[0]


def _partial_manifest(work, manifest, fraction: float = 0.35) -> str:
    """The manifest with the family of about `fraction` of its rows kept (the others empty)."""
    from embedlib.train.split import bucket

    rows = open(manifest).read().splitlines()
    kept = [rows[0]] + [r if bucket(r, "test-labelled") < fraction else r.rsplit(",", 1)[0] + "," for r in rows[1:]]
    partial = work / "partial.csv"
    partial.write_text("\n".join(kept) + "\n")
    return str(partial)


def test_a_mostly_unlabelled_corpus_trains_semi_supervised(small_samples):
    """About a third of the rows carry families (no pseudo-families): the labelled ones train CosFace, every row
    trains InfoNCE."""
    work, cfg, manifest = small_samples
    meta = _train(work, config.load(None, ["train.pseudo_families=false"], base=cfg), _partial_manifest(work, manifest),
                  "semi")
    assert meta["objective"] == "semi-supervised" and len(meta["families"]) >= 2
    assert meta["train_files"] > 2 * meta["labelled_train_files"] > 0
    assert all(0 < e["labelled_all_ranks"] < e["samples_all_ranks"] for e in meta["history"])
    assert meta["holdout_files"] > 0 and "holdout_eval_mode_accuracy" in meta
    assert meta["training"]["healthy"] and meta["bn_health"]["healthy"]


def test_pseudo_families_group_files_by_their_words_and_name_groups_from_their_labels(small_samples):
    """train.pseudo_families: each unlabelled file joins a group of files its words call near (the untrained fixed
    part); a group with labelled files takes their family. On 300 real files of 10 dpkg families with a third
    labelled, the labels stay, every content gets a family, what was propagated is mostly right, and the groups are
    the same whichever order the blocks come back in."""
    work, cfg, manifest = small_samples
    cfg = config.load(None, ["model.embedding_dim=160", "model.skip_dim=128"], base=cfg)  # a fold wide enough to rank
    partial = labels_from_manifest(_partial_manifest(work, manifest), str(work / "corpus"), cfg)
    truth = labels_from_manifest(manifest, str(work / "corpus"), cfg)
    corp = dataset.scan_corpus(str(work / "corpus"), cfg, partial)
    assert trainer.wants_pseudo_families(corp)  # auto: most rows have no family
    said: list[str] = []
    grouped = trainer.with_pseudo_families(corp, trainer.local_block_map, said.append)
    shas = [s.hex() for s in truth.sha]
    before, after, true = partial.lookup(shas), grouped.lookup(shas), truth.lookup(shas)
    assert all(a == b for a, b in zip(after, before) if b)  # a label is never changed
    assert all(after) and len(grouped) == len(truth)
    propagated = [(a, t) for a, b, t in zip(after, before, true) if not b and not a.startswith(pseudo.PREFIX)]
    assert len(propagated) >= 20 and sum(a == t for a, t in propagated) >= 0.8 * len(propagated)
    assert len(said) == 1 and said[0].startswith(f"pseudo-families: {len(shas)} files grouped by their words")
    reversed_map = lambda fn, corpus, *args: reversed(list(trainer.local_block_map(fn, corpus, *args)))  # noqa: E731
    assert trainer.with_pseudo_families(corp, reversed_map, said.append).digest == grouped.digest
    off = dataset.scan_corpus(str(work / "corpus"), config.load(None, ["train.pseudo_families=false"], base=cfg),
                              partial)
    assert not trainer.wants_pseudo_families(off)
    assert not trainer.wants_pseudo_families(dataset.scan_corpus(str(work / "corpus"), cfg, truth))  # all labelled


def test_a_manifest_without_families_trains_on_pseudo_families_by_default(system_files, tmp_path):
    """jobs.train on a manifest with no family column (the defaults): the files are grouped into pseudo-families,
    which train like families, with the open-set gate's learned share capped at train.pseudo_gate_weight; the
    checkpoint records where its families came from and the two scans the grouping took. A fixed part too narrow
    to tell the files apart (16 dimensions) groups them all as one: said, and not used."""
    files = pick_families(system_files, families=5, per_family=30)
    manifest = tmp_path / "paths.csv"
    manifest.write_text("path\n" + "".join(f"{f.path}\n" for f in files))
    narrow = _job("jobs.train", "--input", str(manifest), "--workdir", str(tmp_path / "w"), "--output",
                  str(tmp_path / "model-narrow"), *_sets(*SMALL, "train.batch_size=32"))
    assert narrow.returncode == 0, narrow.stderr[-3000:]
    assert "notice: pseudo-families not used: one group holds more than 50% of the files" in narrow.stdout
    assert "training (self-supervised) on" in narrow.stdout and _meta(tmp_path / "model-narrow")["families"] == []
    out = _job("jobs.train", "--input", str(manifest), "--workdir", str(tmp_path / "w"), "--output",
               str(tmp_path / "model"), *_sets(*SMALL, "model.embedding_dim=160", "model.skip_dim=128",
                                                "train.batch_size=32"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pseudo-families: " in out.stdout and "training (semi-supervised) on" in out.stdout
    meta = _meta(tmp_path / "model")
    assert len(meta["families"]) >= 2 and all(f.startswith(pseudo.PREFIX) for f in meta["families"])
    assert meta["config"]["model"]["gate_weight"] == meta["config"]["train"]["pseudo_gate_weight"] == 0.15
    assert meta["corpus_scans"]["pseudo-families"] == 2 and "pseudo-families" in meta["labels_source"]
    assert meta["open_set_gate"]["weight"] == 0.15 and meta["labelled_train_files"] > 0
    assert meta["training"]["healthy"] and meta["bn_health"]["healthy"]
    assert health.check_health(meta, allow_unhealthy=False) is None


def test_without_held_out_files_the_gate_is_set_from_the_probes_training_files(small_samples):
    """train.holdout_fraction=0 leaves no held-out file to measure confidence on: the open-set gate is set from the
    probe's labelled rows (training files, in memory), and the checkpoint says so."""
    work, cfg, manifest = small_samples
    cfg = config.load(None, ["train.holdout_fraction=0"], base=cfg)
    said: list[str] = []
    meta = _train(work, cfg, manifest, "no-holdout", say=said.append)
    gate = meta["open_set_gate"]
    assert meta["holdout_files"] == 0 and gate["from"] == "probe (training files)" and gate["files"] > 0
    assert any(line.startswith("open-set gate: learned share") and "probe (training files)" in line for line in said)
    assert checkpoint.load(str(work / "model-no-holdout")).model.gated
