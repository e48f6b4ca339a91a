"""Family retrieval on one protocol for every method: embeddings, the strings sketch, symbol names, TLSH, ssdeep.

The protocol (issue 12), pure functions of sha256 and family name, so the training job and the evaluation agree:

  unseen families   bucket(family, "family-split") < unseen_fraction: never trained on; all their files are queries
  known queries     files of the other (trained) families with bucket(sha256) < holdout_fraction (the training
                    job's own held-out split, embedlib.train.split)
  training files    the rest
  gallery           every file; a query ranks the whole gallery but itself
  dropped           a query with nothing to find (no other file of its family in the gallery; in the
                    other-programs mode, no file of its family under another file name)

Modes: "all" (every other file counts) and "other-programs" (gallery files with the query's file name are removed
from its ranking: the same program built for another architecture does not count, so only the other programs
of the family are there to be found).

Methods are "scorers": `distances(query_rows) -> [len(query_rows), G]`, lower = closer, NaN = no
representation (ranked last by embedlib.eval.metrics). Metrics are embedlib.eval.metrics' (P@1, P@10, MAP@R), computed
in chunks of queries so a 30k gallery fits in memory.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Protocol as TypingProtocol, Sequence

import numpy as np

from embedlib.eval import metrics
from embedlib.model import exact
from embedlib.train.split import is_holdout, is_unseen_family  # the one split

SPLITS = ("known", "unseen")
MODES = ("all", "other-programs")


# ---------------------------------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------------------------------

def unseen_families(families: Sequence[str], fraction: float) -> set[str]:
    """Families never trained on: a stable hash of the family name, the same on every machine and corpus."""
    return {f for f in set(families) if is_unseen_family(f, fraction)}


def roles(sha256s: Sequence[str], families: Sequence[str], unseen_fraction: float = 0.2,
          holdout_fraction: float = 0.2) -> np.ndarray:
    """Per file: 'train', 'known' (held-out file of a trained family) or 'unseen' (file of an unseen family)."""
    unseen = unseen_families(families, unseen_fraction)
    out = np.empty(len(sha256s), dtype=object)
    for i, (s, f) in enumerate(zip(sha256s, families)):
        if f in unseen:
            out[i] = "unseen"
        elif is_holdout(s, holdout_fraction):
            out[i] = "known"
        else:
            out[i] = "train"
    return out


def same_name_mask(names: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[len(rows), G] bool: gallery files with the file name of query row r."""
    return names[rows][:, None] == names[None, :]


def queries(role: np.ndarray, families: np.ndarray, split: str, names: np.ndarray | None = None,
            mode: str = "all") -> np.ndarray:
    """Rows of `split` that have something to find in `mode` (see the module doc)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    rows = np.flatnonzero(role == split)
    counts = Counter(families.tolist())
    rows = rows[[counts[f] >= 2 for f in families[rows]]]
    if mode == "other-programs":
        if names is None:
            raise ValueError("the other-programs mode needs file names")
        names_by_family: dict[str, set[str]] = {}
        for f, n in zip(families.tolist(), names.tolist()):
            names_by_family.setdefault(f, set()).add(n)
        rows = rows[[len(names_by_family[families[r]] - {names[r]}) > 0 for r in rows]]
    return rows


# ---------------------------------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------------------------------

class Scorer(TypingProtocol):
    def distances(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass
class Cosine:
    """Cosine distance between rows of `vectors` (any float matrix; zero rows are "missing")."""

    vectors: np.ndarray
    unit: np.ndarray = field(init=False)
    missing: int = field(init=False)

    def __post_init__(self) -> None:
        v = np.asarray(self.vectors, dtype=np.float32)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        self.unit = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
        self.missing = int(np.sum(norms == 0))

    def distances(self, rows: np.ndarray) -> np.ndarray:
        d = 1.0 - (self.unit[rows] @ self.unit.T).astype(np.float64)
        zero = ~self.unit.any(axis=1)
        d[:, zero] = np.nan
        d[~self.unit[rows].any(axis=1)] = np.nan
        return d


@dataclass
class Reranked:
    """How the product's queries rank: the stored embeddings' cosine, then each query's `depth` nearest re-scored
    with the exact words of both files (embedlib.model.exact.rescore); a candidate beyond `depth` follows every
    re-scored one in its stored order, and one without words keeps its stored distance."""

    vectors: np.ndarray
    learned_dim: int
    words: exact.WordRows
    depth: int = exact.RERANK_DEPTH

    def __post_init__(self) -> None:
        self.cosine = Cosine(self.vectors)
        self.learned = np.ascontiguousarray(self.cosine.unit[:, : self.learned_dim])
        self.missing = self.cosine.missing

    def distances(self, rows: np.ndarray) -> np.ndarray:
        d = self.cosine.distances(rows)
        for i, r in enumerate(rows):
            if not self.words.present[r] or np.isnan(d[i, r]):
                continue
            di = np.where(np.isnan(d[i]), np.inf, d[i])
            di[r] = np.inf
            depth = min(self.depth, len(di) - 1)
            cand = np.argpartition(di, depth - 1)[:depth] if depth > 0 else np.zeros(0, np.int64)
            cand = cand[np.isfinite(di[cand])]
            inside = d[i, cand].copy()
            with_words = self.words.present[cand]
            inside[with_words] = 1.0 - exact.rescore(self.learned, self.words, r, cand[with_words])
            d[i] += 4.0  # beyond depth: after every candidate (cosine distances are at most 2); NaN stays NaN
            d[i, cand] = inside
        return d


def tfidf_set_vectors(bucket_sets: Sequence[np.ndarray], buckets: int,
                      document_frequency: np.ndarray | None = None) -> np.ndarray:
    """The training-free strings sketch: each file's set of buckets (presence, not counts), TF-IDF weighted
    (idf = log((1 + N) / (1 + df)) + 1, df over the gallery unless given), float32 [N, buckets]."""
    x = np.zeros((len(bucket_sets), buckets), dtype=np.float32)
    for i, b in enumerate(bucket_sets):
        x[i, np.asarray(b, dtype=np.int64)] = 1.0
    df = x.sum(axis=0) if document_frequency is None else document_frequency
    idf = np.log((1.0 + len(x)) / (1.0 + df)) + 1.0
    return x * idf.astype(np.float32)[None, :]


@dataclass
class SparseCosine:
    """Cosine distance between TF-IDF weighted sets of exact item hashes (no buckets, no projection): e.g. the
    dynamic symbol names of each file, every whole name its own term. idf = log((1 + N) / (1 + df)) + 1 over
    the gallery, like tfidf_set_vectors. An empty set is "missing" (NaN). Scored through an inverted index, so
    a vocabulary of millions of names costs only the postings of a query's own names."""

    sets: Sequence[np.ndarray]  # per row: uint64 hashes (duplicates count once)
    idf_power: float = 1.0  # weigh each item by idf ** this (2: rare words count more, as the fixed part weighs them)

    def __post_init__(self) -> None:
        n = len(self.sets)
        lengths = np.array([len(np.unique(x)) for x in self.sets], np.int64)
        flat = np.concatenate([np.unique(np.asarray(x, np.uint64)) for x in self.sets]) if n else \
            np.zeros(0, np.uint64)
        vocab, term = np.unique(flat, return_inverse=True)
        doc = np.repeat(np.arange(n), lengths)
        df = np.bincount(term, minlength=len(vocab))
        idf = ((np.log((1.0 + n) / (1.0 + df)) + 1.0) ** self.idf_power).astype(np.float64)
        self.row_ptr = np.concatenate([[0], np.cumsum(lengths)])
        self.row_term, self.row_weight = term, idf[term]
        self.norm = np.sqrt(np.bincount(doc, weights=self.row_weight ** 2, minlength=n))
        order = np.argsort(term, kind="stable")  # postings: the rows of each term
        self.post_ptr = np.concatenate([[0], np.cumsum(df)])
        self.post_doc, self.post_weight = doc[order], self.row_weight[order]
        self.missing = int(np.sum(lengths == 0))

    def distances(self, rows: np.ndarray) -> np.ndarray:
        n = len(self.norm)
        out = np.full((len(rows), n), np.nan)
        empty = self.norm == 0
        for i, r in enumerate(rows):
            a, b = self.row_ptr[r], self.row_ptr[r + 1]
            if a == b:
                continue
            terms, w = self.row_term[a:b], self.row_weight[a:b]
            starts, ends = self.post_ptr[terms], self.post_ptr[terms + 1]
            counts = ends - starts
            idx = exact.gather_slices(starts, counts)
            dot = np.bincount(self.post_doc[idx], weights=self.post_weight[idx] * np.repeat(w, counts), minlength=n)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[i] = 1.0 - dot / (self.norm[r] * self.norm)
            out[i, empty] = np.nan
        return out


@dataclass
class TLSH:
    """TLSH distance (tlsh.diff); NaN where a digest is missing."""

    digests: Sequence[str | None]

    def __post_init__(self) -> None:
        from embedlib.eval.digests import _tlsh_ok

        self.ok = [bool(d) and _tlsh_ok(d) for d in self.digests]
        self.missing = len(self.ok) - sum(self.ok)

    def distances(self, rows: np.ndarray) -> np.ndarray:
        import tlsh

        valid = [j for j, ok in enumerate(self.ok) if ok]
        gallery = [self.digests[j] for j in valid]
        out = np.full((len(rows), len(self.digests)), np.nan)
        for r_i, r in enumerate(rows):
            if self.ok[r]:
                a = self.digests[r]
                out[r_i, valid] = [tlsh.diff(a, b) for b in gallery]
        return out


@dataclass
class SSDeep:
    """ssdeep similarity (exactly ppdeep.compare) as a distance 100 - score; NaN where a digest is missing.
    Only pairs that can score above 0 are compared (embedlib.eval.digests' 7-gram index)."""

    digests: Sequence[str | None]

    def __post_init__(self) -> None:
        from collections import defaultdict

        from embedlib.eval.digests import _parse

        self.parsed = [_parse(d) for d in self.digests]
        self.missing = sum(p is None for p in self.parsed)
        self.index: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(self.parsed):
            if p is not None:
                for key in self._keys(p):
                    self.index[key].append(i)

    @staticmethod
    def _keys(p) -> set[tuple]:
        keys = {("eq", p.block_size, p.s1)}
        keys |= {(p.block_size, g) for g in p.grams1}
        keys |= {(2 * p.block_size, g) for g in p.grams2}
        return keys

    def distances(self, rows: np.ndarray) -> np.ndarray:
        from embedlib.eval.digests import _compare_parsed

        ok = np.array([p is not None for p in self.parsed])
        out = np.full((len(rows), len(self.parsed)), np.nan)
        for r_i, r in enumerate(rows):
            p = self.parsed[r]
            if p is None:
                continue
            out[r_i, ok] = 100.0
            candidates = {j for key in self._keys(p) for j in self.index.get(key, ())}
            for j in candidates:
                out[r_i, j] = 100.0 - _compare_parsed(p, self.parsed[j])
        return out


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------

def score(scorer: Scorer, rows: np.ndarray, families: np.ndarray, names: np.ndarray | None = None,
          mode: str = "all", ties: str = "pessimistic", chunk: int = 512,
          say: Callable[[str], None] | None = None, every_s: float = 30.0) -> dict[str, np.ndarray]:
    """Per query row: p_at_1, p_at_10, ap_at_r and r (relevant items), the query ranking the whole gallery.
    `say` hears a progress line at most every `every_s` seconds (a slow scorer is not silent)."""
    codes, uniq = _codes(families)
    started = last = time.perf_counter()
    out: dict[str, list[np.ndarray]] = {"p_at_1": [], "p_at_10": [], "ap_at_r": [], "r": []}
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        d = scorer.distances(part)
        exclude = same_name_mask(names, part) if mode == "other-programs" else None
        ranking = metrics.rank(d, codes[part], codes, self_index=part, ties=ties, exclude=exclude)
        out["p_at_1"].append(metrics.precision_at_k_ranked(ranking, 1))
        out["p_at_10"].append(metrics.precision_at_k_ranked(ranking, 10))
        out["ap_at_r"].append(metrics.average_precision_at_r_ranked(ranking))
        out["r"].append(ranking.n_relevant)
        if say and time.perf_counter() - last > every_s and start + chunk < len(rows):
            last = time.perf_counter()
            say(f"  {start + len(part)}/{len(rows)} queries scored ({last - started:.0f}s)")
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def _codes(families: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer family codes: comparing ints is much faster than comparing Python strings."""
    uniq, codes = np.unique(np.asarray(families, dtype=str), return_inverse=True)
    return codes.astype(np.int64), uniq


def summarize(per_query: dict[str, np.ndarray], subset: np.ndarray | None = None) -> dict[str, float]:
    """Mean P@1, P@10, MAP@R over queries (optionally a boolean subset of them)."""
    sel = np.ones(len(per_query["p_at_1"]), bool) if subset is None else subset
    def mean(k: str) -> float:
        v = per_query[k][sel]
        v = v[~np.isnan(v)]
        return float(v.mean()) if len(v) else float("nan")
    return {"queries": int(sel.sum()), "p_at_1": mean("p_at_1"), "p_at_10": mean("p_at_10"),
            "map_at_r": mean("ap_at_r")}


@dataclass
class Setting:
    """One (split, mode) cell of the protocol: its query rows."""

    split: str
    mode: str
    rows: np.ndarray


def settings(role: np.ndarray, families: np.ndarray, names: np.ndarray,
             splits: Sequence[str] = SPLITS, modes: Sequence[str] = MODES) -> list[Setting]:
    return [Setting(s, m, queries(role, families, s, names, m)) for m in modes for s in splits]


def evaluate_methods(scorers: dict[str, Scorer], families: np.ndarray, names: np.ndarray,
                     cells: list[Setting], subsets: dict[str, np.ndarray] | None = None,
                     say: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (method, split, mode[, subset]) with P@1, P@10, MAP@R on exactly the same queries.

    `subsets`: name -> bool mask over gallery rows (e.g. string-poor files); each adds rows restricted to the
    queries inside it (the gallery stays whole)."""
    rows = []
    for name, scorer in scorers.items():
        slow = not isinstance(scorer, Cosine)  # per-pair scorers: smaller chunks, so progress lines come
        for cell in cells:
            started = time.perf_counter()
            pq = score(scorer, cell.rows, families, names, cell.mode, chunk=64 if slow else 512,
                       say=(lambda m, n=name, c=cell: say(f"{n} {c.split} {c.mode}:{m}")) if say else None)
            base = {"method": name, "split": cell.split, "mode": cell.mode}
            rows.append({**base, "subset": "all", **summarize(pq), "seconds": time.perf_counter() - started})
            for sub, mask in (subsets or {}).items():
                rows.append({**base, "subset": sub, **summarize(pq, mask[cell.rows]), "seconds": float("nan")})
            if say:
                r = rows[-1 - len(subsets or {})]
                say(f"{name:>28} {cell.split:>6} {cell.mode:>14}: P@1 {r['p_at_1']:.3f} P@10 {r['p_at_10']:.3f} "
                    f"MAP@R {r['map_at_r']:.3f} ({r['queries']} queries, {r['seconds']:.0f}s)")
    return rows
