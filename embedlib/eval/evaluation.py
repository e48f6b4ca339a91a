"""The evaluate job's library: one gallery from embedding tables and labels, training-free baselines computed
from the files, the ablation table on one protocol (embedlib.eval.retrieval), CPU cost per file, report files and
pictures.

Each variant is an embedding-job output (ROOT/embeddings/...); the gallery is the labelled files that every
variant embedded (the same sha256s), so every row of the table is scored on exactly the same queries. The
baselines need no training: the strings sketch (printable strings >= 6 bytes, each distinct string hashed into
4096 buckets, as a set, TF-IDF over the gallery, cosine: embedlib.views' hashing), the dynamic symbol names
(ELF .dynsym imports/exports and DT_NEEDED, PE imports/exports: embedlib.views.symbols; each whole name its own
term, TF-IDF, cosine; a file whose tables cannot be read has a per-file status, counted in the report), the words
(the tokens view's distinct words inside strings and names, each whole word its own term, IDF squared: the exact
sparse vector the embedding's fixed part folds), TLSH and ssdeep (libfuzzy).
"""

from __future__ import annotations

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

from embedlib.errors import UserError
from embedlib.eval import retrieval
from embedlib.model import exact as exact_words
from embedlib.train import split
from embedlib.files.inputs import read_labels

log = logging.getLogger(__name__)

BASELINES = ("strings", "symbols", "words", "tlsh", "ssdeep")
STRINGS_BUCKETS = 4096
STRINGS_MIN_LEN = 6


@dataclass
class Gallery:
    """The evaluated files, row-aligned; vectors per variant."""

    sha256: list[str]
    path: list[str]
    family: np.ndarray  # str
    name: np.ndarray  # file name (basename): the other-programs mode drops a query's namesakes
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    model: dict[str, str | None] = field(default_factory=dict)  # variant -> checkpoint it was embedded with
    tlsh: list[str | None] = field(default_factory=list)
    ssdeep: list[str | None] = field(default_factory=list)
    strings: list[np.ndarray] = field(default_factory=list)  # bucket sets (strings sketch)
    symbols: list[np.ndarray] = field(default_factory=list)  # uint64 hashes of dynamic symbol names
    symbol_status: list[str] = field(default_factory=list)  # ok | none | error: ... (embedlib.views.symbols)
    words: list[np.ndarray] = field(default_factory=list)  # uint64 hashes of the tokens view's distinct words
    distinct_strings: np.ndarray | None = None
    # variant -> (its learned dimensions, its rows' exact words): what its queries re-score candidates with
    exact: dict[str, tuple[int, exact_words.WordRows]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sha256)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------

def read_embeddings(root: str) -> pa.Table:
    """The embeddings of an output root's latest model version (the one its latest finished run wrote): its
    committed files. A bare table without runs (a study's output, e.g. studies/retrieval/retrieval_study.py) is read whole."""
    from embedlib.root import catalog
    from embedlib.root.store import Store

    store = Store(root)
    runs = catalog.read_runs(store).sort_by("run_id").to_pylist()
    version = runs[-1]["model_version"] if runs else None
    committed = catalog.table_files(store, "embeddings", version) if runs else store.find("embeddings", ".parquet")
    files = [store.path(f) for f in committed]
    ds = pads.dataset(files, filesystem=store.arrow_filesystem(), format="parquet", partitioning=None)
    columns = ["sha256", "path", "family", "tlsh", "ssdeep", "embedding"]
    table = ds.to_table(columns=columns + (["words"] if "words" in ds.schema.names else []))
    # the newest file's metadata (embedlib.learned_dim), as the query layer reads it (layout.learned_dim)
    return table.replace_schema_metadata(pq.read_schema(files[-1], filesystem=store.arrow_filesystem()).metadata
                                         if files else None)


def run_model(root: str) -> str | None:
    """The checkpoint the root's latest embed run used."""
    from embedlib.root import catalog
    from embedlib.root.store import Store

    runs = catalog.read_runs(Store(root)).sort_by("run_id").to_pylist()
    return json.loads(runs[-1]["config"]).get("model") if runs else None


def labelled(labels: str) -> list[tuple[str, str]]:
    """(path, family) of a manifest's labelled rows (cells as text)."""
    t = read_labels(labels)
    return [(p, f) for p, f in zip(t.column("path").to_pylist(), t.column("family").to_pylist()) if f]


def read_json(uri: str) -> dict | None:
    try:
        with fsspec.open(uri, "r") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


class SplitError(UserError, ValueError):
    """Split fractions that would score trained files as unseen or held out, or variants of different splits."""


DEFAULT_FRACTION = 0.2  # the split of an evaluation that no checkpoint constrains (baselines alone)


def split_of(checkpoints: Sequence[str], unseen: float | None = None, holdout: float | None = None,
             say: Callable[[str], None] = print) -> tuple[float, float]:
    """(unseen_fraction, holdout_fraction) of the checkpoints that made the evaluated embeddings: their own
    training split (train.unseen_family_fraction, train.holdout_fraction in meta.json), so a family a model was
    trained on is never an "unseen" query and a training file never a "known" one. An explicit fraction may
    only narrow that split (a smaller fraction: a subset of the same hash-chosen families/files). Checkpoints
    of different splits cannot share one table. Without a checkpoint (baselines alone) the fractions are the
    given ones, else 0.2."""
    from embedlib.model import checkpoint

    splits = {}
    for uri in dict.fromkeys(checkpoints):
        train = checkpoint.load_meta(uri).get("config", {}).get("train", {})
        splits[uri] = (float(train.get("unseen_family_fraction") or 0.0), float(train.get("holdout_fraction", 0.2)))
    if len(set(splits.values())) > 1:
        raise SplitError("the variants' checkpoints were trained on different splits (" + ", ".join(
            f"{u}: unseen {a:g}, holdout {b:g}" for u, (a, b) in splits.items()) + "): evaluate them separately")
    if not splits:
        return (DEFAULT_FRACTION if unseen is None else unseen, DEFAULT_FRACTION if holdout is None else holdout)
    (model_unseen, model_holdout), = set(splits.values())
    if unseen is not None and unseen > model_unseen:
        raise SplitError(f"--unseen-fraction {unseen:g} would call families the checkpoint trained on unseen (it "
                         f"kept {model_unseen:g} of families out of training): use at most {model_unseen:g}")
    if holdout is not None and holdout > model_holdout:
        raise SplitError(f"--holdout-fraction {holdout:g} would query files the checkpoint trained on (it held out "
                         f"{model_holdout:g}): use at most {model_holdout:g}")
    unseen = model_unseen if unseen is None else unseen
    holdout = model_holdout if holdout is None else holdout
    if unseen == 0:
        say("the checkpoint kept no family out of training (train.unseen_family_fraction = 0): no unseen queries; "
            "train with train.unseen_family_fraction > 0 to measure unseen families")
    return unseen, holdout


def gallery_from(labels: str, variants: dict[str, str], max_files: int | None = None) -> Gallery:
    """Labelled files embedded by every variant (family from the manifest by path, else the table's own)."""
    by_path = dict(labelled(labels))
    rows: dict[str, dict[str, Any]] = {}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    model: dict[str, str | None] = {}
    words: dict[str, tuple[int, exact_words.WordRows, dict[str, int]]] = {}
    for name, root in variants.items():
        t = read_embeddings(root)
        learned = int((t.schema.metadata or {}).get(b"embedlib.learned_dim", 0))
        if "words" in t.column_names and learned and t.column("words").null_count < t.num_rows:
            words[name] = (learned, exact_words.WordRows.from_arrow(t.column("words")), {})
        emb = np.asarray(t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                         dtype=np.float32).reshape(t.num_rows, -1) if t.num_rows else np.zeros((0, 1), np.float32)
        vectors[name] = {}
        for i, (sha, path, fam, tl, ss) in enumerate(zip(*(t.column(c).to_pylist() for c in
                                                           ("sha256", "path", "family", "tlsh", "ssdeep")))):
            family = by_path.get(path) or fam
            if not family or sha in vectors[name]:
                continue
            vectors[name][sha] = emb[i]
            if name in words:
                words[name][2][sha] = i
            rows.setdefault(sha, {"path": path, "family": family, "tlsh": tl, "ssdeep": ss})
        model[name] = run_model(root)
    common = set(rows)
    for v in vectors.values():
        common &= set(v)
    shas = sorted(common, key=lambda s: rows[s]["path"])
    if max_files and len(shas) > max_files:
        keep = set(sorted(shas, key=lambda s: split.bucket(s, "evaluate"))[:max_files])
        shas = [s for s in shas if s in keep]
    paths = [rows[s]["path"] for s in shas]
    g = Gallery(shas, paths, np.array([rows[s]["family"] for s in shas], dtype=str),
                np.array([os.path.basename(p.rstrip("/")) for p in paths], dtype=str),
                {k: np.stack([v[s] for s in shas]) if shas else np.zeros((0, 1), np.float32)
                 for k, v in vectors.items()},
                model, [rows[s]["tlsh"] for s in shas], [rows[s]["ssdeep"] for s in shas])
    g.exact = {k: (learned, w.take(np.array([at[s] for s in shas], np.int64)))
               for k, (learned, w, at) in words.items()}
    return g


def gallery_from_manifest(labels: str, max_files: int | None = None) -> Gallery:
    """Baselines only (no variant): every readable labelled file of the manifest, one row per sha256."""
    from embedlib.config import InputConfig
    from embedlib.files.sources import read_path

    cfg = InputConfig(max_bytes=1)  # only the sha256 (of the whole file) is needed here
    seen: dict[str, tuple[str, str]] = {}
    for path, family in labelled(labels):
        r = read_path(path, cfg)
        if r.ok and r.sha256 not in seen:
            seen[r.sha256] = (path, family)
    shas = sorted(seen, key=lambda s: seen[s][0])
    if max_files and len(shas) > max_files:
        keep = set(sorted(shas, key=lambda s: split.bucket(s, "evaluate"))[:max_files])
        shas = [s for s in shas if s in keep]
    paths = [seen[s][0] for s in shas]
    return Gallery(shas, paths, np.array([seen[s][1] for s in shas], dtype=str),
                   np.array([os.path.basename(p.rstrip("/")) for p in paths], dtype=str),
                   tlsh=[None] * len(shas), ssdeep=[None] * len(shas))


# ---------------------------------------------------------------------------------------------------
# Baselines and costs, from the files
# ---------------------------------------------------------------------------------------------------

def _read(path: str, max_bytes: int) -> bytes:
    """The bounded read every method's cost includes (the pipeline's read of the first max_bytes)."""
    from embedlib.config import InputConfig
    from embedlib.files.sources import read_path

    return read_path(path, InputConfig(max_bytes=max_bytes, max_hash_bytes=max(max_bytes, 2**31)), hash_all=False).data


def file_baselines(path: str, max_bytes: int, methods: Sequence[str]) -> dict[str, Any]:
    """One file's strings sketch (bucket set + distinct strings), TLSH and ssdeep digests, with the CPU seconds of
    read + each method."""
    import numpy as np

    from embedlib import views

    from embedlib.views import digests

    out: dict[str, Any] = {"path": path}
    t = time.process_time()
    try:
        data = _read(path, max_bytes)
    except OSError as exc:
        return {"path": path, "error": f"{type(exc).__name__}: {exc}"}
    out["read_cpu_s"] = time.process_time() - t
    arr = np.frombuffer(data, np.uint8)
    if "strings" in methods:
        t = time.process_time()
        h = views.string_hashes(arr, STRINGS_MIN_LEN)
        out["strings"] = np.unique(views.bucket_of(h, STRINGS_BUCKETS)).astype(np.int16)
        out["strings_cpu_s"] = time.process_time() - t
        out["distinct_strings"] = len(h)
    if "symbols" in methods:
        from embedlib.views import symbols

        t = time.process_time()
        hashes, _, out["symbol_status"] = symbols.symbol_hashes(data)
        out["symbols"] = np.unique(hashes)
        out["symbols_cpu_s"] = time.process_time() - t
    if "words" in methods:
        from embedlib.config import ViewsConfig

        t = time.process_time()
        _, items = views.compiled_sketches(arr, ViewsConfig(names=("tokens",)))
        out["words"] = np.unique(items["tokens"][0])
        out["words_cpu_s"] = time.process_time() - t
    if "tlsh" in methods:
        t = time.process_time()
        out["tlsh"] = digests.tlsh_digest(data)
        out["tlsh_cpu_s"] = time.process_time() - t
    if "ssdeep" in methods:
        t = time.process_time()
        out["ssdeep"] = digests.ssdeep_digest(data)
        out["ssdeep_cpu_s"] = time.process_time() - t
    return out


def _file_baselines_args(args: tuple) -> dict[str, Any]:
    return file_baselines(*args)


def progress(items, total: int, what: str, say: Callable[[str], None] | None, every_s: float = 30.0):
    """`items`, with a line to `say` at most every `every_s` seconds (and at the end): a long step is never silent."""
    started = last = time.perf_counter()
    for i, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if say and (now - last > every_s or i == total):
            last = now
            say(f"{what}: {i}/{total} ({now - started:.0f}s)")


def compute_baselines(g: Gallery, max_bytes: int, methods: Sequence[str], workers: int = 1,
                      say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fill the gallery's strings sketch (always: the string-poor subset needs it), its symbol names and the digests
    the tables lack; returns CPU ms per file (read + method) over the files computed here, and the symbol
    reader's per-file statuses."""
    need = set(methods) | {"strings"}
    for m in ("tlsh", "ssdeep"):  # a table that has a digest column filled keeps it (None = none for that file)
        if any(d is not None for d in getattr(g, m)):
            need.discard(m)
    jobs = [(p, max_bytes, sorted(need)) for p in g.path]
    started = time.perf_counter()
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            results = list(progress(pool.map(_file_baselines_args, jobs, chunksize=16), len(jobs),
                                    "baselines (" + ", ".join(sorted(need)) + ") of files", say))
    else:
        results = list(progress(map(_file_baselines_args, jobs), len(jobs),
                                "baselines (" + ", ".join(sorted(need)) + ") of files", say))
    errors = {r["path"]: r["error"] for r in results if "error" in r}
    g.strings = [r.get("strings", np.zeros(0, np.int16)) for r in results]
    g.distinct_strings = np.array([r.get("distinct_strings", 0) for r in results])
    if "symbols" in need:
        g.symbols = [r.get("symbols", np.zeros(0, np.uint64)) for r in results]
        g.symbol_status = [r.get("symbol_status", "unreadable") for r in results]
    if "words" in need:
        g.words = [r.get("words", np.zeros(0, np.uint64)) for r in results]
    for m in ("tlsh", "ssdeep"):
        if m in need:
            setattr(g, m, [r.get(m) for r in results])
    ok = [r for r in results if "error" not in r]
    cost: dict[str, Any] = {"files": len(ok), "wall_seconds": time.perf_counter() - started, "unreadable": errors,
                            "read_cpu_ms": 1000 * float(np.mean([r["read_cpu_s"] for r in ok])) if ok else None}
    for m in need:
        if ok:
            cost[f"{m}_cpu_ms"] = 1000 * float(np.mean([r[f"{m}_cpu_s"] for r in ok]))
    if g.symbol_status:  # how many files had dynamic names, none, or tables that could not be read (and why)
        cost["symbol_status"] = dict(Counter(s if not s.startswith("error") else "error" for s in g.symbol_status))
        cost["symbol_errors"] = dict(Counter(s for s in g.symbol_status if s.startswith("error")).most_common(10))
    return cost


def baseline_costs(paths: Sequence[str], max_bytes: int, methods: Sequence[str]) -> list[dict[str, Any]]:
    """CPU ms per file of read + each baseline, measured here (one process) on `paths`."""
    results = [r for r in (file_baselines(p, max_bytes, methods) for p in paths) if "error" not in r]
    read = 1000 * float(np.mean([r["read_cpu_s"] for r in results])) if results else float("nan")
    rows = []
    for m in methods:
        compute = 1000 * float(np.mean([r[f"{m}_cpu_s"] for r in results])) if results else float("nan")
        rows.append({"method": f"{m} (read + digest)", "files": len(results), "cpu_ms_per_file": read + compute,
                     "read_cpu_ms": read, "compute_cpu_ms": compute, "views_cpu_ms": float("nan"),
                     "model_cpu_ms": float("nan"), "reembedded_cosine_to_table": float("nan")})
    return rows


def embedding_cost(model_uri: str, paths: Sequence[str], max_bytes: int, threads: int = 1) -> dict[str, Any]:
    """CPU ms per file of the product's embedding: read + views (embedlib.views) + model forward (batched on
    CPU with `threads` torch threads) + the words kept with each row, measured on `paths` with the Embedder the
    write tasks use."""
    from embedlib import views

    from embedlib.model.embedder import Embedder

    embedder = Embedder(model_uri, device="cpu", threads=threads)
    cfg = embedder.config
    read_s = views_s = 0.0
    batches: list[dict[str, np.ndarray]] = []
    views.compute_views(b"\0warm up\0", cfg)  # the kernels' first call (a load or a compile) is not per file
    for p in paths:
        t = time.process_time()
        data = _read(p, max_bytes)
        read_s += time.process_time() - t
        t = time.process_time()
        batches.append(views.compute_views(data, cfg))
        views_s += time.process_time() - t
    stacked = views.stack(batches, cfg)
    chunks = [{k: v[s : s + 256] for k, v in stacked.items()} for s in range(0, len(paths), 256)]
    embedder.embed_views({k: v[:2] for k, v in stacked.items()})  # warm-up
    t = time.process_time()
    vectors = [embedder.embed_views(c) for c in chunks]
    model_s = time.process_time() - t
    t = time.process_time()
    for c, v in zip(chunks, vectors):
        embedder.words(c, v, cfg.embed.exact_words)
    words_s = time.process_time() - t
    n = max(len(paths), 1)
    return {"files": len(paths), "read_cpu_ms": 1000 * read_s / n, "views_cpu_ms": 1000 * views_s / n,
            "model_cpu_ms": 1000 * model_s / n, "words_cpu_ms": 1000 * words_s / n, "torch_threads": threads,
            "total_cpu_ms": 1000 * (read_s + views_s + model_s + words_s) / n, "vectors": np.concatenate(vectors)}


# ---------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------

def scorers(g: Gallery, baselines: Sequence[str], rerank_depth: int = exact_words.RERANK_DEPTH
            ) -> dict[str, retrieval.Scorer]:
    """Each variant as its queries rank (re-scored, when its rows keep their words, beside the stored embedding
    alone), then the training-free baselines."""
    out: dict[str, retrieval.Scorer] = {}
    for name, v in g.vectors.items():
        if name in g.exact and rerank_depth > 0:
            learned, words = g.exact[name]
            out[name] = retrieval.Reranked(v, learned, words, rerank_depth)
            out[f"{name}, stored embedding alone (no re-rank)"] = retrieval.Cosine(v)
        else:
            out[name] = retrieval.Cosine(v)
    if "strings" in baselines:
        out["strings sketch (no training)"] = retrieval.Cosine(retrieval.tfidf_set_vectors(g.strings, STRINGS_BUCKETS))
    if "symbols" in baselines:
        out["dynamic symbol names TF-IDF (no training)"] = retrieval.SparseCosine(g.symbols)
    if "words" in baselines:
        out["words TF-IDF, IDF^2 (no training)"] = retrieval.SparseCosine(g.words, idf_power=2.0)
    if "tlsh" in baselines:
        out["TLSH"] = retrieval.TLSH(g.tlsh)
    if "ssdeep" in baselines:
        out["ssdeep"] = retrieval.SSDeep(g.ssdeep)
    return out


def string_poor(g: Gallery, quantile: float = 0.25) -> np.ndarray:
    """Files in the bottom quartile of distinct printable strings (>= 6 bytes): stripped, packed or tiny."""
    n = g.distinct_strings
    return n <= np.quantile(n, quantile)


def ablation(g: Gallery, methods: dict[str, retrieval.Scorer], unseen_fraction: float, holdout_fraction: float,
             modes: Sequence[str] = retrieval.MODES, say: Callable[[str], None] | None = None) -> list[dict]:
    role = retrieval.roles(g.sha256, list(g.family), unseen_fraction, holdout_fraction)
    cells = retrieval.settings(role, g.family, g.name, modes=modes)
    subsets = {"string-poor": string_poor(g)} if g.distinct_strings is not None else {}
    return retrieval.evaluate_methods(methods, g.family, g.name, cells, subsets, say)


def describe_gallery(g: Gallery, unseen_fraction: float, holdout_fraction: float) -> dict[str, Any]:
    role = retrieval.roles(g.sha256, list(g.family), unseen_fraction, holdout_fraction)
    counts = Counter(role.tolist())
    return {"files": len(g), "families": len(set(g.family.tolist())),
            **{f"{r}_files": counts.get(r, 0) for r in ("train", "known", "unseen")},
            "unseen_families": len(set(g.family[role == "unseen"].tolist())),
            "unseen_fraction": unseen_fraction, "holdout_fraction": holdout_fraction}


# ---------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------

def wide_rows(rows: list[dict], subset: str = "all") -> list[dict]:
    """One row per method: P@1 / P@10 / MAP@R for each (split, mode): the table a person reads."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["subset"] != subset:
            continue
        row = out.setdefault(r["method"], {"method": r["method"]})
        tag = r["split"] + ("" if r["mode"] == "all" else " other-programs")
        for k, label in (("p_at_1", "P@1"), ("p_at_10", "P@10"), ("map_at_r", "MAP@R")):
            row[f"{tag} {label}"] = r[k]
    return list(out.values())


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(rows[0])
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
                     + ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]) + "\n"


def write_report(rows: list[dict], info: dict[str, Any], g: Gallery, output: str) -> list[str]:
    """ablation.{parquet,csv,md}, evaluation.json, retrieval.png, embedding_map.png (first variant)."""
    from embedlib.eval import plots

    os.makedirs(output, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    written = [os.path.join(output, f"ablation.{e}") for e in ("parquet", "csv", "md", "json")]
    pq.write_table(table, written[0])
    pa_csv.write_csv(table, written[1])
    with open(written[2], "w") as fh:
        fh.write("# Family retrieval ablation\n\n")
        fh.write("```\n" + json.dumps(info.get("gallery", {}), indent=1) + "\n```\n\n")
        for subset in dict.fromkeys(r["subset"] for r in rows):
            fh.write(f"## queries: {subset}\n\n" + markdown(wide_rows(rows, subset)) + "\n")
        if info.get("costs"):
            fh.write("## CPU cost per file (ms)\n\n" + markdown(info["costs"]) + "\n")
    with open(written[3], "w") as fh:
        json.dump({"rows": rows, **info}, fh, indent=1, default=str)
    values = {}
    for r in rows:
        if r["subset"] == "all" and r["mode"] == "all":
            values.setdefault(r["method"], {})[f"{r['split']} P@1"] = r["p_at_1"]
            values[r["method"]][f"{r['split']} MAP@R"] = r["map_at_r"]
    written.append(plots.metric_bars(values, os.path.join(output, "retrieval.png"),
                                     "Family retrieval: held-out files of trained families (known), unseen families"))
    if g.vectors:
        name = next(iter(g.vectors))
        coords, explained = plots.pca_2d(g.vectors[name])
        written.append(plots.pca_map(coords, list(g.family), os.path.join(output, "embedding_map.png"), top=12,
                                     explained=explained, title=f"{name}: embeddings by family (PCA)"))
    return written
