"""A real output root with evidence, written by the real pipeline, for the explanation tests (test_explain.py), the
page's HTTP tests and its browser test (test_serve.py, test_serve_browser.py).

Real ELF files of this machine (dpkg families), plus copies under hostile names (markup, quotes, a name that
is not UTF-8), embedded by `pipeline.embed_files` (in-process) with a small checkpoint that really trained
(conftest.trained_checkpoint) and whose sketch IDF buffers were then set from these files' document
frequencies, as training sets them: the evidence weights are the model's, as in production. Then
`query.neighbors.compute_neighbors` stores the neighbours, as `make demo` does.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from conftest import pick_families, trained_checkpoint

from embedlib import pipeline, views
from embedlib.config import Config, EmbedConfig, InputConfig, ModelConfig
from embedlib.files.inputs import InputFile
from embedlib.model import checkpoint
from embedlib.query.neighbors import compute_neighbors

SMALL_MODEL = ModelConfig(embedding_dim=24, skip_dim=16, hidden=16)
HOSTILE = ('<script>alert("x")<\\script>.bin', "\"'><img src=x onerror=alert(1)>&amp;.bin")
NOT_UTF8 = b"caf\xe9-\xff.bin"


@dataclass
class ExplainedRoot:
    root: str
    model: str
    manifest: str
    files: list[InputFile]  # the real files, with their dpkg families
    hostile: list[str]  # paths of the copies under hostile names (UTF-8 ones)


def model_with_real_idf(path: str, files: list[str], cfg: Config) -> str:
    """A checkpoint that trained (on synthetic rows: conftest.trained_checkpoint), saved again with its sketch
    views' IDF set from the document frequencies of `files`, as training sets them."""
    first = path + "-synthetic"
    torch.manual_seed(0)
    trained_checkpoint(first, cfg, seed=0)
    ckpt = checkpoint.load(first)
    rows = [views.compute_views(open(f, "rb").read(), cfg) for f in files]
    for name in views.weighted_views(cfg):  # the sketches and the word ids of the fixed part
        df = views.document_frequency(name, np.stack([r[name] for r in rows]), cfg)
        ckpt.model.set_document_frequency(name, df, len(rows))
    extra = {k: v for k, v in ckpt.meta.items()
             if k not in ("model_version", "weights_sha256", "created_unix", "config", "families")}
    checkpoint.save(path, ckpt.model, ckpt.config, ckpt.families, extra)
    return path


def build(work: str, system_files: list[InputFile], families: int = 4, per_family: int = 8) -> ExplainedRoot:
    chosen = pick_families(system_files, families=families, per_family=per_family, max_size=300_000)
    src = os.path.join(work, "src")
    os.makedirs(src, exist_ok=True)
    hostile = []
    for name in HOSTILE:
        target = os.path.join(src, name)
        shutil.copyfile(chosen[0].path, target)
        with open(target, "ab") as fh:  # its own content: a row of its own, under its hostile name
            fh.write(name.encode())
        hostile.append(target)
    odd = os.path.join(os.fsencode(src), NOT_UTF8)
    shutil.copyfile(chosen[1].path, odd)
    with open(odd, "ab") as fh:
        fh.write(b"not utf-8")
    manifest = os.path.join(work, "manifest.csv")
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "family"])
        for f in chosen:
            w.writerow([f.path, f.family])
        for p in hostile:
            w.writerow([p, chosen[0].family])
    cfg = Config(model=SMALL_MODEL, input=InputConfig(shard_size=16), embed=EmbedConfig(batch_size=64))
    model = model_with_real_idf(os.path.join(work, "model"), [f.path for f in chosen], cfg)
    root = os.path.join(work, "root")
    pipeline.embed_files(model, manifest, root, cfg, progress=False)
    pipeline.embed_files(model, src, root, cfg, progress=False)  # the name that is not UTF-8 (no manifest holds it)
    compute_neighbors(root, k=5)
    return ExplainedRoot(root, model, manifest, chosen, hostile)


@contextlib.contextmanager
def running(site) -> Iterator[str]:
    """The page of `site` (embedlib.query.serve) served by uvicorn on a free loopback port in a thread, as
    `embedlib serve` serves it; yields its base URL, stops it after."""
    import uvicorn

    from embedlib.query.serve import build_app

    server = uvicorn.Server(uvicorn.Config(build_app(site), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the page's server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
