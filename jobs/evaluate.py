"""Is the embedding any good? Family retrieval with the embedding, TLSH and ssdeep, on the same files.

  python -m jobs.evaluate --embeddings runs/emb --labels manifest.csv
  python -m jobs.evaluate --embeddings runs/emb --labels manifest.csv --model runs/model            # held-out queries
  python -m jobs.evaluate --embeddings runs/emb --labels manifest.csv --model runs/model --family-disjoint

Gallery: every labelled file of the embedding table (at most --max-files, a hash-chosen subset).
Queries: all gallery files; with --model the checkpoint's held-out files (bucket(sha256) <
train.holdout_fraction, the split of embedlib.training.make_split: none of them was trained on); with
--family-disjoint the files of families that were no training class. A query is ranked against the whole
gallery but itself; files of a family with a single file have nothing to find and are no queries.

Metrics (embedlib.metrics): P@1, P@10, MAP@R and pair ROC-AUC, per query, per family and overall; ties
in a ranking are pessimistic (the *_expected columns: random order within ties, in exact expectation). TLSH and ssdeep digests come
from the table's tlsh/ssdeep columns, or are computed here from the first --max-bytes of each file (the
bytes the embedding saw). A file without a digest ranks last for that method, and stays a query.
Writes summary.*, per_family.* (parquet, csv, md), per_query.parquet, evaluation.json and three PNGs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from embedlib import digests, metrics
from embedlib.config import InputConfig
from embedlib.query import format_rows
from embedlib.inputs import read_labels
from embedlib.sources import read_path

from jobs._common import setup_logging

log = logging.getLogger("jobs.evaluate")

METHODS = ("embedding", "tlsh", "ssdeep")
METRIC_LABELS = {"p_at_1": "P@1", "p_at_10": "P@10", "map_at_r": "MAP@R", "roc_auc": "ROC-AUC"}
DEFAULT_RASTER_SIZE = 64
# Tie policies reported (embedlib.metrics): the headline is pessimistic; "expected" (random order within
# ties) shows how much of a method's result hangs on ties. Column suffix per policy.
REPORTED_TIES = {"pessimistic": "", "expected": "_expected"}


@dataclass
class Files:
    """The evaluated files (the gallery), row-aligned."""

    sha256: list[str]
    path: list[str]
    family: np.ndarray  # object array of str
    size_bytes: np.ndarray
    vectors: np.ndarray  # [N, D] float32
    tlsh: list[str | None]
    ssdeep: list[str | None]

    def __len__(self) -> int:
        return len(self.sha256)

    def take(self, idx: Sequence[int]) -> "Files":
        idx = list(idx)
        return Files([self.sha256[i] for i in idx], [self.path[i] for i in idx], self.family[idx],
                     self.size_bytes[idx], self.vectors[idx], [self.tlsh[i] for i in idx],
                     [self.ssdeep[i] for i in idx])


@dataclass
class MethodResult:
    name: str
    higher_is_closer: bool
    per_query: dict[str, np.ndarray] = field(default_factory=dict)
    auc_overall: float = float("nan")
    auc_by_family: dict[str, float] = field(default_factory=dict)
    missing: int = 0  # gallery files this method has no representation for
    matrix_seconds: float = float("nan")
    timing: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------

def read_embeddings(root: str) -> pa.Table:
    from embedlib.pipeline import catalog
    from embedlib.pipeline.store import Store

    store = Store(root)
    columns = ["sha256", "path", "size_bytes", "family", "tlsh", "ssdeep", "model_version", "embedding"]
    files = [store.path(f) for f in catalog.table_files(store, "embeddings")]
    return pads.dataset(files, filesystem=store.arrow_filesystem(), format="parquet").to_table(columns=columns)


def read_json(uri: str) -> dict | None:
    try:
        with fsspec.open(uri, "r") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def labelled_files(table: pa.Table, manifest: str) -> tuple[Files, dict[str, int]]:
    """Files with a family: the manifest's (joined on path), else the table's own family column."""
    labels = read_labels(manifest)
    by_path = {p: f for p, f in zip(labels.column("path").to_pylist(), labels.column("family").to_pylist()) if f}
    paths = table.column("path").to_pylist()
    own = table.column("family").to_pylist()
    families, from_manifest, from_table = [], 0, 0
    for p, f in zip(paths, own):
        if by_path.get(p):
            families.append(by_path[p])
            from_manifest += 1
        elif f:
            families.append(f)
            from_table += 1
        else:
            families.append(None)
    keep = [i for i, f in enumerate(families) if f]
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                         dtype=np.float32).reshape(table.num_rows, -1) if table.num_rows else np.zeros((0, 1), np.float32)
    files = Files(table.column("sha256").to_pylist(), paths, np.array(families, dtype=object),
                  np.asarray(table.column("size_bytes").to_pylist(), dtype=np.int64), vectors,
                  table.column("tlsh").to_pylist(), table.column("ssdeep").to_pylist()).take(keep)
    counts = {"embedded": table.num_rows, "labelled_from_manifest": from_manifest,
              "labelled_from_table": from_table, "unlabelled_dropped": table.num_rows - len(keep)}
    return files, counts


def cap_files(files: Files, max_files: int) -> Files:
    """At most `max_files`, chosen by a hash of sha256 (uniform, the same on every run), in path order."""
    if len(files) <= max_files:
        return files
    from embedlib.split import bucket

    chosen = sorted(range(len(files)), key=lambda i: bucket(files.sha256[i], "evaluate"))[:max_files]
    return files.take(sorted(chosen, key=lambda i: files.path[i]))


def choose_queries(files: Files, meta: dict | None, family_disjoint: bool) -> tuple[np.ndarray, str]:
    """(bool mask of query candidates, a sentence saying what they are)."""
    if family_disjoint:
        if meta is None:
            raise SystemExit("--family-disjoint needs --model (its meta.json lists the training classes)")
        trained = set(meta.get("families") or [])
        mask = np.array([f not in trained for f in files.family], dtype=bool)
        return mask, f"files of families that were no training class ({len(trained)} classes were trained)"
    if meta is None:
        return np.ones(len(files), dtype=bool), "all files (no --model given: some may have been trained on)"
    from embedlib.split import bucket  # the training split's own function

    fraction = float(meta["config"]["train"]["holdout_fraction"])
    mask = np.array([bucket(s) < fraction for s in files.sha256], dtype=bool)
    return mask, f"held-out files of the checkpoint (bucket(sha256) < train.holdout_fraction = {fraction})"


def drop_lonely_queries(files: Files, candidates: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Queries whose family has another file in the gallery; and the families skipped for having one file."""
    counts = Counter(files.family)
    lonely = sorted({f for f, c in zip(files.family, candidates) if c and counts[f] < 2})
    keep = candidates & np.array([counts[f] >= 2 for f in files.family], dtype=bool)
    return np.flatnonzero(keep), lonely


def _latest_run(root: str) -> dict:
    """The config JSON of the latest finished run in an output root ({} when none)."""
    from embedlib.pipeline import catalog
    from embedlib.pipeline.store import Store

    runs = catalog.read_runs(Store(root)).sort_by("run_id").to_pylist()
    return json.loads(runs[-1]["config"]) if runs else {}


def max_bytes_for(root: str, meta: dict | None, override: int | None) -> int:
    """The bytes per file the embedding saw: --max-bytes, else the embed run's input.max_bytes."""
    if override:
        return override
    run = _latest_run(root)
    for source in (run.get("input"), (meta or {}).get("config", {}).get("input")):
        if source and source.get("max_bytes"):
            return int(source["max_bytes"])
    return InputConfig().max_bytes


def embed_run_model(root: str) -> str | None:
    """The checkpoint the latest embed run recorded, if any."""
    return _latest_run(root).get("model")


def raster_size_for(root: str, meta: dict | None) -> int:
    """The image size the network saw: --model's, else that of the model the embed run recorded."""
    run = _latest_run(root)
    if meta is None and run.get("model"):
        meta = read_json(run["model"].rstrip("/") + "/meta.json")
    if meta:
        return int(meta["config"]["raster"]["size"])
    return int((run.get("raster") or {}).get("size") or DEFAULT_RASTER_SIZE)


# ---------------------------------------------------------------------------------------------------
# Digests and timings
# ---------------------------------------------------------------------------------------------------

def fill_digests(files: Files, max_bytes: int, workers: int, timing_sample: int) -> dict[str, Any]:
    """Digests from the table where it has them (a row with neither was never digested), else computed from
    the files. Returns digest timings per file: over every computed file, or over a sample when none was."""
    todo = [i for i in range(len(files)) if files.tlsh[i] is None and files.ssdeep[i] is None]
    info: dict[str, Any] = {"from_table": len(files) - len(todo), "computed": len(todo), "max_bytes": max_bytes}
    if todo:
        log.info("computing TLSH and ssdeep for %d files (first %d bytes each, %d workers)", len(todo), max_bytes,
                 workers)
        started = time.perf_counter()
        results = digests.digest_files([files.path[i] for i in todo], max_bytes, [files.sha256[i] for i in todo],
                                       workers)
        info["wall_seconds"] = time.perf_counter() - started
        for i, r in zip(todo, results):
            files.tlsh[i], files.ssdeep[i] = r["tlsh"], r["ssdeep"]
        info["unreadable"] = {files.path[i]: r["reason"] for i, r in zip(todo, results) if r["reason"]}
        timed = [r for r in results if not r["reason"]]
        info["timed_on"] = "every computed file"
    else:
        sample = list(range(len(files)))[:: max(1, len(files) // max(timing_sample, 1))][:timing_sample]
        timed = [r for r in digests.digest_files([files.path[i] for i in sample], max_bytes, None, 1)
                 if not r["reason"]]
        info["timed_on"] = f"a sample of {len(timed)} files (digests came from the table)"
    info["timed_files"] = len(timed)
    info["timed_mb"] = sum(r["bytes"] for r in timed) / 1e6
    for name in ("tlsh", "ssdeep"):
        info[name] = {"cpu_ms_per_file": _mean_ms(timed, f"{name}_cpu_s"),
                      "wall_ms_per_file": _mean_ms(timed, f"{name}_wall_s")}
    return info


def _mean_ms(rows: list[dict], key: str) -> float:
    return 1000.0 * float(np.mean([r[key] for r in rows])) if rows else float("nan")


def time_embedding(files: Files, model: str | None, max_bytes: int, raster_size: int, sample: int) -> dict[str, Any]:
    """CPU cost per file of the embedding from bytes in memory: rasterize + model forward (batched), measured
    by re-embedding a sample with embedlib.embedder.Embedder on CPU. Without a model, rasterizing only."""
    from embedlib import raster

    idx = list(range(len(files)))[:: max(1, len(files) // max(sample, 1))][:sample]
    datas, kept = [], []
    cfg = InputConfig(max_bytes=max_bytes, max_hash_bytes=max(max_bytes, 2 * 1024**3))
    for i in idx:
        read = read_path(files.path[i], cfg)
        if read.ok:
            datas.append(read.data)
            kept.append(i)
    out: dict[str, Any] = {"timed_files": len(kept), "timed_mb": sum(map(len, datas)) / 1e6}
    if not kept:
        return out
    cpu, wall = time.process_time(), time.perf_counter()
    images = np.stack([raster.to_image(d, raster_size) for d in datas])
    out["raster_cpu_ms_per_file"] = 1000 * (time.process_time() - cpu) / len(kept)
    out["raster_wall_ms_per_file"] = 1000 * (time.perf_counter() - wall) / len(kept)
    if not model:
        out["note"] = "rasterizing only: pass --model to time the network too"
        return out
    try:
        from embedlib.embedder import Embedder

        embedder = Embedder(model, device="cpu")
        embedder.embed_views({"image": images[:1]})  # warm-up: first call allocates
        cpu, wall = time.process_time(), time.perf_counter()
        vectors = embedder.embed_views({"image": images})
        out["model_cpu_ms_per_file"] = 1000 * (time.process_time() - cpu) / len(kept)
        out["model_wall_ms_per_file"] = 1000 * (time.perf_counter() - wall) / len(kept)
        out["cpu_ms_per_file"] = out["raster_cpu_ms_per_file"] + out["model_cpu_ms_per_file"]
        out["wall_ms_per_file"] = out["raster_wall_ms_per_file"] + out["model_wall_ms_per_file"]
        table = files.vectors[kept].astype(np.float64)
        if table.shape[1] == vectors.shape[1]:
            out["reembedded_mean_cosine_to_table"] = float(np.mean(np.sum(table * vectors, axis=1)))
    except Exception as exc:  # timing is a side measurement: report, don't fail the evaluation
        out["note"] = f"model not timed: {type(exc).__name__}: {exc}"
    return out


# ---------------------------------------------------------------------------------------------------
# Metrics per method
# ---------------------------------------------------------------------------------------------------

def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float64 so near-ties are not float32 rounding."""
    v = vectors.astype(np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def method_matrix(name: str, files: Files, queries: np.ndarray) -> tuple[np.ndarray, bool, int]:
    """([Q, G] distances or scores, higher_is_closer, gallery files this method cannot represent)."""
    if name == "embedding":
        v = unit_rows(files.vectors)
        return 1.0 - v[queries] @ v.T, False, int(np.sum(np.linalg.norm(files.vectors, axis=1) == 0))
    if name == "tlsh":
        m = digests.tlsh_distance_matrix(files.tlsh)
        return m[queries], False, int(np.sum(np.all(np.isnan(m), axis=1)))
    if name == "ssdeep":
        m = digests.ssdeep_score_matrix(files.ssdeep)
        return m[queries], True, int(np.sum(np.all(np.isnan(m), axis=1)))
    raise ValueError(f"unknown method {name!r}; known: {METHODS}")


def evaluate_method(name: str, matrix: np.ndarray, higher_is_closer: bool, files: Files,
                    queries: np.ndarray) -> MethodResult:
    """Per-query P@1, P@10, AP@R (both tie policies) and pooled pair ROC-AUC, overall and per family."""
    result = MethodResult(name, higher_is_closer)
    q_labels, g_labels = files.family[queries], files.family
    for ties, suffix in REPORTED_TIES.items():
        ranking = metrics.rank(matrix, q_labels, g_labels, self_index=queries, higher_is_closer=higher_is_closer,
                               ties=ties)
        result.per_query[f"p_at_1{suffix}"] = metrics.precision_at_k_ranked(ranking, 1)
        result.per_query[f"p_at_10{suffix}"] = metrics.precision_at_k_ranked(ranking, 10)
        result.per_query[f"ap_at_r{suffix}"] = metrics.average_precision_at_r_ranked(ranking)
        result.per_query["r"] = ranking.n_relevant
    distances = metrics.as_distances(matrix, higher_is_closer)
    same = metrics.relevance(q_labels, g_labels)
    pairs = metrics.query_pairs(len(queries), len(files), queries)
    result.auc_overall = metrics.pair_roc_auc(distances[pairs], same[pairs])
    for family in sorted(set(q_labels)):
        rows = q_labels == family
        result.auc_by_family[family] = metrics.pair_roc_auc(distances[rows][pairs[rows]], same[rows][pairs[rows]])
    return result


def summary_rows(results: list[MethodResult], n_queries: int) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        q = r.per_query
        rows.append({
            "method": r.name, "queries": n_queries,
            "p_at_1": _mean(q["p_at_1"]), "p_at_10": _mean(q["p_at_10"]), "map_at_r": _mean(q["ap_at_r"]),
            "roc_auc": r.auc_overall,
            "p_at_1_expected": _mean(q["p_at_1_expected"]), "map_at_r_expected": _mean(q["ap_at_r_expected"]),
            "missing": r.missing,
            "cpu_ms_per_file": float(r.timing.get("cpu_ms_per_file", float("nan"))),
            "wall_ms_per_file": float(r.timing.get("wall_ms_per_file", float("nan"))),
            "matrix_seconds": r.matrix_seconds,
        })
    return rows


def family_rows(results: list[MethodResult], files: Files, queries: np.ndarray) -> list[dict[str, Any]]:
    gallery_counts = Counter(files.family)
    q_labels = files.family[queries]
    rows = []
    for family in sorted(set(q_labels)):
        sel = q_labels == family
        for r in results:
            q = r.per_query
            rows.append({"family": family, "method": r.name, "files": gallery_counts[family], "queries": int(sel.sum()),
                         "p_at_1": _mean(q["p_at_1"][sel]), "p_at_10": _mean(q["p_at_10"][sel]),
                         "map_at_r": _mean(q["ap_at_r"][sel]), "roc_auc": r.auc_by_family[family]})
    return rows


def query_table(results: list[MethodResult], files: Files, queries: np.ndarray) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("method", "sha256", "path", "family")}
    metric_names = [k for k in results[0].per_query] if results else []
    for k in metric_names:
        cols[k] = []
    for r in results:
        cols["method"] += [r.name] * len(queries)
        cols["sha256"] += [files.sha256[i] for i in queries]
        cols["path"] += [files.path[i] for i in queries]
        cols["family"] += list(files.family[queries])
        for k in metric_names:
            cols[k] += r.per_query[k].tolist()
    return pa.table(cols)


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


# ---------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------

def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if np.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def aligned(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    return format_rows(cols, [tuple(_cell(r[c]) for c in cols) for r in rows])


def write_table(rows: list[dict[str, Any]], output: str, name: str, preamble: str = "") -> list[str]:
    """name.parquet, name.csv and name.md in `output`."""
    table = pa.Table.from_pylist(rows)
    paths = [os.path.join(output, f"{name}.{ext}") for ext in ("parquet", "csv", "md")]
    pq.write_table(table, paths[0])
    pa_csv.write_csv(table, paths[1])
    with open(paths[2], "w") as fh:
        fh.write(preamble + markdown_table(rows))
    return paths


def family_wide(rows: list[dict[str, Any]], methods: list[str], metric: str = "map_at_r") -> list[dict[str, Any]]:
    """Per-family rows pivoted to one row per family, one `metric` column per method (for printing)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        row = out.setdefault(r["family"], {"family": r["family"], "files": r["files"], "queries": r["queries"]})
        row[f"{METRIC_LABELS.get(metric, metric)} {r['method']}"] = r[metric]
    return sorted(out.values(), key=lambda r: (-r["files"], r["family"]))


def make_plots(files: Files, results: list[MethodResult], summary: list[dict[str, Any]], output: str,
               raster_size: int, max_bytes: int, plot_families: int, plot_files: int, pca_families: int) -> list[str]:
    from embedlib import plots, raster

    written = []
    cfg = InputConfig(max_bytes=max_bytes, max_hash_bytes=max(max_bytes, 2 * 1024**3))
    gallery: dict[str, list[tuple[str, np.ndarray]]] = {}
    for family, _n in Counter(files.family).most_common(plot_families):
        members = sorted(i for i in range(len(files)) if files.family[i] == family)
        for i in members:
            if len(gallery.get(family, [])) >= plot_files:
                break
            read = read_path(files.path[i], cfg)
            if read.ok:
                gallery.setdefault(family, []).append((os.path.basename(files.path[i]),
                                                       raster.to_image(read.data, raster_size)))
    written.append(plots.byteplot_gallery(gallery, os.path.join(output, "byteplots.png"),
                                          f"Byteplots ({raster_size}x{raster_size}, what the network sees), "
                                          f"{plot_families} largest families"))
    coords, explained = plots.pca_2d(unit_rows(files.vectors))
    written.append(plots.pca_map(coords, list(files.family), os.path.join(output, "pca.png"), top=pca_families,
                                 explained=explained))
    values = {r["method"]: {label: r[key] for key, label in METRIC_LABELS.items()} for r in summary}
    written.append(plots.metric_bars(values, os.path.join(output, "retrieval.png"),
                                     f"Family retrieval on {summary[0]['queries']} queries" if summary else "Retrieval"))
    return written


# ---------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------

def evaluate(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown or not methods:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose from {','.join(METHODS)}")
    meta = read_json(args.model.rstrip("/") + "/meta.json") if args.model else None
    if args.model and meta is None:
        raise SystemExit(f"no meta.json in {args.model}")
    output = args.output or (os.path.join(args.embeddings, "evaluation") if "://" not in args.embeddings
                             else "evaluation")
    os.makedirs(output, exist_ok=True)

    table = read_embeddings(args.embeddings)
    versions = sorted(set(table.column("model_version").to_pylist()))
    if meta and versions != [meta.get("model_version")]:
        say(f"WARNING: the embeddings come from model(s) {versions}, --model is {meta.get('model_version')}: "
            "its held-out split is only meaningful for the model that made these embeddings")
    files, counts = labelled_files(table, args.labels)
    before_cap = len(files)
    files = cap_files(files, args.max_files)
    counts.update(labelled=before_cap, evaluated=len(files))
    candidates, query_kind = choose_queries(files, meta, args.family_disjoint)
    queries, lonely = drop_lonely_queries(files, candidates)
    say(f"gallery: {len(files)} labelled files of {len(set(files.family))} families "
        f"({counts['unlabelled_dropped']} unlabelled dropped"
        + (f"; {before_cap - len(files)} left out by --max-files {args.max_files}" if before_cap > len(files) else "")
        + ")")
    say(f"queries: {len(queries)} = {query_kind}")
    if meta is None and embed_run_model(args.embeddings):
        say(f"hint: these embeddings were made with {embed_run_model(args.embeddings)}; pass it as --model to "
            "query held-out files only")
    if lonely:
        say(f"skipped as queries: {int(sum(candidates & np.isin(files.family, lonely)))} files of {len(lonely)} "
            f"families with a single file in the gallery (nothing to retrieve): {', '.join(lonely[:12])}"
            + (" ..." if len(lonely) > 12 else ""))
    if len(queries) == 0:
        raise SystemExit("no queries: every candidate query's family has a single file in the gallery")

    max_bytes = max_bytes_for(args.embeddings, meta, args.max_bytes)
    raster_size = raster_size_for(args.embeddings, meta)
    digest_info: dict[str, Any] = {}
    if {"tlsh", "ssdeep"} & set(methods):
        digest_info = fill_digests(files, max_bytes, args.workers, args.timing_sample)
    embed_timing = time_embedding(files, args.model, max_bytes, raster_size, args.timing_sample) \
        if "embedding" in methods else {}

    results = []
    for name in methods:
        started = time.perf_counter()
        matrix, higher, missing = method_matrix(name, files, queries)
        seconds = time.perf_counter() - started
        result = evaluate_method(name, matrix, higher, files, queries)
        result.missing, result.matrix_seconds = missing, seconds
        result.timing = embed_timing if name == "embedding" else digest_info.get(name, {})
        results.append(result)
        log.info("%s: distances in %.1f s, metrics in %.1f s", name, seconds, time.perf_counter() - started - seconds)

    summary = summary_rows(results, len(queries))
    per_family = family_rows(results, files, queries)
    notes = describe_setup(args, len(files), len(queries), query_kind, lonely, max_bytes, digest_info, embed_timing)
    written = write_table(summary, output, "summary", "# Family retrieval: overall\n\n" + notes + "\n")
    written += write_table(per_family, output, "per_family", "# Family retrieval per family\n\n"
                           "Pessimistic ties; queries = files of the family used as queries, files = in the gallery.\n\n")
    per_query_path = os.path.join(output, "per_query.parquet")
    pq.write_table(query_table(results, files, queries), per_query_path)
    written.append(per_query_path)
    written += make_plots(files, results, summary, output, raster_size, max_bytes, args.plot_families,
                          args.plot_files, args.pca_families)
    report = {"embeddings": args.embeddings, "labels": args.labels, "model": args.model,
              "model_version": (meta or {}).get("model_version"), "embedding_model_versions": versions, "family_disjoint": args.family_disjoint,
              "queries": len(queries), "query_kind": query_kind, "single_file_families_skipped": lonely,
              "counts": counts, "max_bytes": max_bytes, "digests": digest_info, "embedding_timing": embed_timing,
              "summary": summary,
              "tie_policy": "pessimistic; *_expected: exact expectation over random order within ties"}
    json_path = os.path.join(output, "evaluation.json")
    with open(json_path, "w") as fh:
        json.dump(report, fh, indent=1, default=_json_default)
    written.append(json_path)

    say("")
    say(aligned([{k: v for k, v in r.items()} for r in summary]))
    say("")
    wide = family_wide(per_family, methods)
    shown = wide[: args.print_families]
    say(f"MAP@R per family ({len(shown)} of {len(wide)} largest; all in per_family.*):")
    say(aligned(shown))
    say("")
    say(notes)
    say(f"written to {output}: " + ", ".join(os.path.basename(p) for p in written))
    return report


def describe_setup(args: argparse.Namespace, n_files: int, n_queries: int, query_kind: str, lonely: list[str],
                   max_bytes: int, digest_info: dict[str, Any], embed_timing: dict[str, Any]) -> str:
    """The paragraph that says what the numbers mean (printed, and at the top of summary.md)."""
    lines = [
        f"- gallery: {n_files} labelled files; queries: {n_queries} = {query_kind}; each query ranks the whole "
        "gallery except itself. Relevant = same family.",
        f"- families with a single file (no query possible): {len(lonely)}",
        "- P@k = relevant in top k / k; MAP@R = mean over queries of (1/R) sum_{i<=R} P@i rel_i (R = relevant "
        "items); ROC-AUC over (query, other file) pairs, same vs different family, ties 1/2.",
        "- ranking ties are pessimistic (irrelevant first); *_expected = exact expectation over a random order "
        "within ties (digest scores tie a lot). A file without a digest ranks last for that method.",
        "- cpu_ms/wall_ms_per_file: computing one file's representation from bytes already in memory (no I/O); "
        "embedding = rasterize + CPU model forward in one batch",
    ]
    if embed_timing:
        lines[-1] += (f", measured on {embed_timing.get('timed_files', 0)} re-embedded files"
                      + (f" ({embed_timing['note']})" if embed_timing.get("note") else ""))
    if embed_timing.get("raster_cpu_ms_per_file") is not None:
        lines.append(f"- embedding CPU ms per file: rasterize {embed_timing['raster_cpu_ms_per_file']:.2f}"
                     + (f" + model {embed_timing['model_cpu_ms_per_file']:.2f}" if "model_cpu_ms_per_file" in
                        embed_timing else " (model not timed)"))
    if digest_info:
        lines.append(f"- digests: {digest_info.get('from_table', 0)} from the table, {digest_info.get('computed', 0)} "
                     f"computed from the first {max_bytes} bytes; timings on {digest_info.get('timed_on')} "
                     f"({digest_info.get('timed_files', 0)} files, {digest_info.get('timed_mb', 0):.2f} MB)"
                     + (f"; computing them took {digest_info['wall_seconds']:.0f} s wall with {args.workers} "
                        "worker(s)" if "wall_seconds" in digest_info else ""))
    lines.append("- missing: gallery files without a digest (or with a zero embedding); matrix_seconds: wall time of "
                 "the gallery x gallery distance (or score) matrix.")
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", required=True, help="embedding job output folder (with embeddings/)")
    parser.add_argument("--labels", required=True, help="manifest .csv/.parquet with path,family (joined on path)")
    parser.add_argument("--output", default=None, help="local folder for the report (default: EMBEDDINGS/evaluation)")
    parser.add_argument("--model", default=None, help="checkpoint folder: queries become its held-out files")
    parser.add_argument("--family-disjoint", action="store_true",
                        help="queries are files of families the model had no class for (needs --model)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--max-files", type=int, default=3000, help="gallery size cap (pairwise cost is quadratic)")
    parser.add_argument("--max-bytes", type=int, default=None,
                        help="bytes per file for digests computed here (default: the embed run's input.max_bytes)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4),
                        help="processes computing digests (ppdeep is pure Python)")
    parser.add_argument("--timing-sample", type=int, default=64, help="files re-read to time what was not computed here")
    parser.add_argument("--plot-families", type=int, default=8, help="families in byteplots.png")
    parser.add_argument("--plot-files", type=int, default=4, help="files per family in byteplots.png")
    parser.add_argument("--pca-families", type=int, default=10, help="families coloured in pca.png (rest grey)")
    parser.add_argument("--print-families", type=int, default=25, help="families in the printed per-family table")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    return evaluate(args)


if __name__ == "__main__":
    main()
