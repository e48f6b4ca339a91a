"""A small but realistic output root in the pipeline's layout, with schema.py's columns, written through the
pipeline's own atomic Store (tests/test_end_to_end.py queries a root that jobs.embed really wrote; this one
adds what a single real run cannot: several runs, two model versions of different sizes, chosen vectors):
three finished runs under two model versions, errors, runs rows, and an unfinished run (whole Parquet parts in
every table, staging files, a lock file, no runs row): readers must not see any of it.

  R1  model mv-a (D=6)   30 files of 3 families, errors: empty, duplicate
  R2  model mv-b (D=8)   the same 30 contents re-embedded under mv-b (beta-07 now among gamma), 6 new (two part
                         files), errors: unreadable
  R3  model mv-b (D=8)   9 new files: 3 near-copies of one R2 file, 3 of a new unlabelled family, 3 labelled;
                         errors: too_large, 2 duplicates
The current model version is mv-b (R3 finished last).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from embedlib import schema
from embedlib.root.store import Store

RUN1, RUN2, RUN3 = "20261101T010000Z-aaaaaa", "20261102T010000Z-bbbbbb", "20261103T010000Z-cccccc"
RUN_UNFINISHED = "20261104T010000Z-dddddd"
MV_A, MV_B = "mv-a", "mv-b"
DIMS = {MV_A: 6, MV_B: 8}
FAMILIES = ("alpha", "beta", "gamma")


@dataclass
class FixtureRoot:
    """What was written, for brute-force checks: per model version, sha256 -> (vector, row)."""

    root: str
    vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # version -> sha256 -> unit vector
    rows: dict[str, dict[str, dict]] = field(default_factory=dict)  # version -> sha256 -> row (no embedding)
    errors: list[dict] = field(default_factory=list)
    manifest: str | None = None  # labels CSV (path,family) with one family corrected

    def matrix(self, version: str) -> tuple[list[str], np.ndarray]:
        shas = sorted(self.vectors[version])
        return shas, np.stack([self.vectors[version][s] for s in shas])


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def embeddings_schema(dim: int, version: str = "") -> pa.Schema:
    return schema.embeddings_schema(dim, version)


def write_root(root: str, dims: dict[str, int] | None = None) -> FixtureRoot:
    """Write the fixture output root at `root` (a local path or any fsspec URI); `dims` overrides DIMS."""
    dim_of = {**DIMS, **(dims or {})}
    store = Store(root)
    rng = np.random.default_rng(7)
    out = FixtureRoot(root=root)
    centers = {v: {f: rng.normal(size=d) for f in FAMILIES + ("delta",)} for v, d in dim_of.items()}

    def vec(version: str, family: str, scale: float = 0.35) -> np.ndarray:
        return _unit(centers[version][family] + scale * rng.normal(size=dim_of[version]))

    def row(name: str, family: str | None, version: str, run: str, vector: np.ndarray, size: int) -> dict:
        r = {"sha256": sha(name), "path": f"/corpus/{name}", "path_raw": None,
             "location": f"/corpus/{name}".encode(), "size_bytes": size,
             "mtime_ns": 1_700_000_000_000_000_000 + size, "etag": None,
             "format": "pe" if name.endswith(".exe") else "elf", "family": family, "truncated": size > 60_000,
             "tlsh": None, "ssdeep": None, "model_version": version, "run_id": run}
        out.vectors.setdefault(version, {})[r["sha256"]] = vector
        out.rows.setdefault(version, {})[r["sha256"]] = r
        return r

    def emb_table(rows: list[dict], version: str) -> pa.Table:
        dim = dim_of[version]
        flat = np.concatenate([out.vectors[version][r["sha256"]] for r in rows]).astype(np.float32)
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
        cols["evidence"] = [None] * len(rows)  # no bytes behind these rows: no evidence (test_explain has real ones)
        cols["words"] = [None] * len(rows)  # nor words: similar() ranks them by the stored embedding alone
        return pa.Table.from_pydict(cols, schema=embeddings_schema(dim, version))

    def write_embeddings(rows: list[dict], version: str, run: str, part: int) -> None:
        store.write_parquet(f"embeddings/model_version={version}/run={run}/part-{part:06d}.parquet",
                            emb_table(rows, version))

    def write_errors(rows: list[dict], run: str, stage: str = "read") -> None:
        full = [{k: r.get(k) for k in schema.ERRORS.names} for r in rows]
        out.errors += full
        store.write_parquet(f"errors/run={run}/part-{stage}-000000.parquet",
                            pa.Table.from_pylist(full, schema=schema.ERRORS))

    def write_run(run: str, version: str, day: int, embedded: int, failed: int, duplicates: int) -> None:
        started = dt.datetime(2026, 11, day, 1, 0, tzinfo=dt.timezone.utc)
        r = {"run_id": run, "job": "embed", "model_version": version, "raster": json.dumps({"size": 64}),
             "input": "/corpus", "started": started, "finished": started + dt.timedelta(minutes=5),
             "files_seen": embedded + failed + duplicates, "skipped_known": 0, "embedded": embedded,
             "duplicates": duplicates, "failed": failed, "bytes_read": 1000 * embedded, "seconds": 300.0,
             "embedlib_version": "0.2.0", "config": json.dumps({"model": f"/models/{version}"})}
        store.write_parquet(f"runs/{run}.parquet", pa.Table.from_pylist([r], schema=schema.RUNS))

    # R1: mv-a, 3 families x 10 files
    names = [(f"{fam}-{i:02d}" + (".exe" if i % 4 == 0 else ""), fam) for fam in FAMILIES for i in range(10)]
    r1 = [row(n, fam if i % 5 else None, MV_A, RUN1, vec(MV_A, fam), 1000 + 37 * i)
          for i, (n, fam) in enumerate(names)]
    write_embeddings(r1, MV_A, RUN1, 0)
    write_errors([
        {"path": "/corpus/empty.bin", "status": "empty", "reason": "0 bytes", "size_bytes": 0,
         "model_version": MV_A, "run_id": RUN1},
        {"path": "/corpus/copy-of-alpha-01", "status": "duplicate", "reason": f"same content as /corpus/{names[1][0]}",
         "sha256": sha(names[1][0]), "size_bytes": 1037, "family": "alpha", "model_version": MV_A, "run_id": RUN1},
    ], RUN1)
    write_run(RUN1, MV_A, 1, len(r1), 1, 1)

    # R2: mv-b, the same contents re-embedded + 6 new, in two part files
    # beta-07 lands among gamma under mv-b: its attributed family changes between the versions
    r2 = [row(n, fam if i % 5 else None, MV_B, RUN2, vec(MV_B, "gamma" if n == "beta-07" else fam), 1000 + 37 * i)
          for i, (n, fam) in enumerate(names)]
    r2 += [row(f"{fam}-new-{j}", fam, MV_B, RUN2, vec(MV_B, fam), 5000 + j) for fam in FAMILIES[:2] for j in range(3)]
    write_embeddings(r2[:20], MV_B, RUN2, 0)
    write_embeddings(r2[20:], MV_B, RUN2, 1)
    write_errors([{"path": "/corpus/secret", "status": "unreadable", "reason": "Permission denied",
                   "model_version": MV_B, "run_id": RUN2}], RUN2)
    write_run(RUN2, MV_B, 2, len(r2), 1, 0)

    # R3: mv-b, near-copies of alpha-03 (a near-duplicate group), a new unlabelled family, 3 labelled files
    anchor = out.vectors[MV_B][sha(names[3][0])]
    r3 = [row(f"alpha-03-patched-{j}", "alpha" if j else None, MV_B, RUN3,
              _unit(anchor + 0.004 * rng.normal(size=dim_of[MV_B])), 2000 + j) for j in range(3)]
    r3 += [row(f"delta-{j}", None, MV_B, RUN3, vec(MV_B, "delta", 0.2), 70_000 + j) for j in range(3)]
    r3 += [row(f"gamma-late-{j}.exe", "gamma", MV_B, RUN3, vec(MV_B, "gamma"), 3000 + j) for j in range(3)]
    write_embeddings(r3, MV_B, RUN3, 0)
    write_errors([
        {"path": "/corpus/huge.iso", "status": "too_large", "reason": "over input.max_hash_bytes",
         "size_bytes": 3 << 30, "model_version": MV_B, "run_id": RUN3},
        {"path": "/corpus/gamma-late-0-copy.exe", "status": "duplicate", "reason": "same content as another file",
         "sha256": sha("gamma-late-0.exe"), "size_bytes": 3000, "family": "gamma", "model_version": MV_B,
         "run_id": RUN3},
        {"path": "/corpus/gamma-late-0-copy2.exe", "status": "duplicate", "reason": "same content as another file",
         "sha256": sha("gamma-late-0.exe"), "size_bytes": 3000, "family": "gamma", "model_version": MV_B,
         "run_id": RUN3},
        {"path": "/corpus/broken.bin", "status": "embed_error", "reason": "RuntimeError in the model",
         "sha256": sha("broken.bin"), "size_bytes": 4000, "model_version": MV_B, "run_id": RUN3},
    ], RUN3)
    write_run(RUN3, MV_B, 3, len(r3), 2, 2)

    # An unfinished run: whole Parquet parts in every table (one content already written by R2, two new ones),
    # staging files and a lock, but no runs row. None of it may be visible to any reader.
    ghost = [dict(out.rows[MV_B][sha(names[0][0])], run_id=RUN_UNFINISHED)]
    ghost += [{**ghost[0], "sha256": sha(f"ghost-{j}"), "path": f"/corpus/ghost-{j}"} for j in range(2)]
    flat = np.concatenate([vec(MV_B, "alpha") for _ in ghost]).astype(np.float32)
    cols = {k: [r[k] for r in ghost] for k in ghost[0]}
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim_of[MV_B])
    cols["evidence"] = [None] * len(ghost)
    cols["words"] = [None] * len(ghost)
    store.write_parquet(f"embeddings/model_version={MV_B}/run={RUN_UNFINISHED}/part-000000.parquet",
                        pa.Table.from_pydict(cols, schema=embeddings_schema(dim_of[MV_B], MV_B)))
    store.write_parquet(f"errors/run={RUN_UNFINISHED}/part-read-000000.parquet", pa.Table.from_pylist(
        [{k: None for k in schema.ERRORS.names} | {"path": "/corpus/ghost.bin", "status": "empty", "reason": "0 bytes",
                                                   "model_version": MV_B, "run_id": RUN_UNFINISHED}],
        schema=schema.ERRORS))
    store.write_parquet(f"neighbors/model_version={MV_B}/run={RUN_UNFINISHED}/part-000000.parquet", pa.Table.from_pylist(
        [{"sha256": sha("ghost-0"), "rank": 1, "neighbor": sha(names[0][0]), "distance": 0.5, "metric": "cosine",
          "model_version": MV_B, "run_id": RUN_UNFINISHED}], schema=schema.NEIGHBORS))
    store.write_bytes(f"_work/{RUN_UNFINISHED}/run.json", json.dumps({"run_id": RUN_UNFINISHED}).encode())
    store.write_bytes(f"_work/{RUN_UNFINISHED}/plan/000000.arrow", b"staging, never *.parquet")
    store.write_bytes("_lock.json", json.dumps({"run_id": RUN_UNFINISHED}).encode())

    # A labels manifest: every embedded path of mv-b with its family, one family corrected, text cells only.
    manifest_rows = ["path,family"]
    for r in out.rows[MV_B].values():
        family = r["family"]
        if r["path"].endswith("delta-0"):
            family = "delta"  # the manifest knows a family the embedding run did not
        manifest_rows.append(f"{r['path']},{family or ''}")
    manifest_rows.append("/corpus/copy-of-alpha-01,alpha")
    store.write_bytes("labels.csv", ("\n".join(manifest_rows) + "\n").encode())
    out.manifest = root.rstrip("/") + "/labels.csv"
    return out


def write_embedded_root(root: str, model_uri: str, paths: list[str]) -> dict[str, np.ndarray]:
    """A one-run root whose rows were embedded by a real checkpoint (for `embedlib similar --file`):
    the runs row records the model, as the pipeline's config does. Returns sha256 -> vector."""
    from embedlib.model.embedder import Embedder

    embedder = Embedder(model_uri, device="cpu")
    store = Store(root)
    rows, vectors = [], {}
    for p in paths:
        data = open(p, "rb").read()
        digest = hashlib.sha256(data).hexdigest()
        if digest in vectors:
            continue
        vectors[digest] = embedder.embed_path(p).astype(np.float32)
        rows.append({"sha256": digest, "path": p, "size_bytes": len(data), "format": "elf", "family": None,
                     "truncated": False, "model_version": embedder.version, "run_id": RUN1})
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(list(vectors.values()))),
                                                          embedder.dim)
    table = schema.conform(pa.Table.from_pydict(cols), embeddings_schema(embedder.dim, embedder.version))
    store.write_parquet(f"embeddings/model_version={embedder.version}/run={RUN1}/part-000000.parquet", table)
    run = {"run_id": RUN1, "job": "embed", "model_version": embedder.version, "started": dt.datetime.now(dt.timezone.utc),
           "finished": dt.datetime.now(dt.timezone.utc), "embedded": len(rows), "config": json.dumps({"model": model_uri})}
    run = {**{k: 0 for k in ("files_seen", "skipped_known", "duplicates", "failed", "bytes_read")}, "raster": "{}",
           "input": "test", "seconds": 0.0, "embedlib_version": "test", **run}
    store.write_parquet(f"runs/{RUN1}.parquet", pa.Table.from_pylist([run], schema=schema.RUNS))
    return vectors


def tiny_checkpoint(path: str, seed: int = 0) -> str:
    """A real (untrained) checkpoint, small enough to build in a test."""
    import torch

    from embedlib.model import checkpoint
    from embedlib.config import Config, from_dict
    from embedlib.model.network import build_model

    torch.manual_seed(seed)
    cfg = from_dict({"raster": {"size": 16}, "views": {"names": ["image"]},
                     "model": {"embedding_dim": 8, "channels": (4, 4, 4, 4)}}, Config())
    checkpoint.save(path, build_model(cfg.model, 2).eval(), cfg, ["a", "b"], {})
    return path
