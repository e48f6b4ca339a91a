"""Families by content, read at training time: labels are data, not part of the training corpus.

The samples table (jobs.rasterize) holds the views of each content; which family a content belongs to comes
from the manifest given to the training run, so a corrected label changes the next model. `Labels` maps a
sha256 to a family in a compact sorted array (32 bytes per labelled content), small enough to send to every
training worker and task with the corpus description.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    from embedlib.config import Config


@dataclass(frozen=True)
class Labels:
    """sha256 -> family for the labelled contents. `source` says where the families came from (printed);
    `conflicts` counts contents that carried several families (each gets its most frequent one, ties to the
    smallest name)."""

    sha: np.ndarray  # S32: raw sha256 digests, sorted
    codes: np.ndarray  # int32 index into `families`, aligned with `sha`
    families: tuple[str, ...]
    source: str
    conflicts: int = 0
    unlabelled_listed: int = 0  # rows of the source that named no family
    digest: str = field(default="", compare=False)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str | None]], source: str, unlabelled_listed: int = 0) -> "Labels":
        """From (sha256 hex, family) pairs in any order; empty or missing families are not labels."""
        votes: dict[str, Counter] = defaultdict(Counter)
        for sha, family in pairs:
            if sha and family:
                votes[sha][family] += 1
        conflicts = sum(1 for v in votes.values() if len(v) > 1)
        chosen = {sha: min(v.items(), key=lambda kv: (-kv[1], kv[0]))[0] for sha, v in votes.items()}
        families = tuple(sorted(set(chosen.values())))
        index = {f: i for i, f in enumerate(families)}
        shas = sorted(chosen)
        sha = np.array([bytes.fromhex(s) for s in shas], dtype="S32")
        codes = np.array([index[chosen[s]] for s in shas], dtype=np.int32)
        h = hashlib.sha256()
        for s in shas:
            h.update(f"{s}\t{chosen[s]}\n".encode())
        return cls(sha, codes, families, source, conflicts, unlabelled_listed, h.hexdigest()[:16])

    def __len__(self) -> int:
        return len(self.sha)

    def lookup(self, shas: list[str]) -> list[str | None]:
        """The family of each sha256 (None when unlabelled)."""
        if not len(self.sha) or not shas:
            return [None] * len(shas)
        keys = np.array([bytes.fromhex(s) for s in shas], dtype="S32")
        idx = np.minimum(np.searchsorted(self.sha, keys), len(self.sha) - 1)
        hit = self.sha[idx] == keys
        return [self.families[self.codes[i]] if h else None for i, h in zip(idx, hit)]

    def describe(self) -> str:
        text = f"labels: {len(self)} contents in {len(self.families)} families from {self.source}"
        if self.conflicts:
            text += f"; {self.conflicts} contents carry several families (each takes its most frequent one)"
        return text


def labels_from_manifest(manifest: str, corpus_root: str, cfg: "Config") -> Labels:
    """The families of the corpus's contents as `manifest` (path, family) names them now: every manifest row joins
    the corpus's latest record of the same file, by exact identity (embedlib/sql/training_labels.sql), so a label
    corrected in the manifest changes the next model although the file's views are not computed again."""
    import tempfile

    import pyarrow as pa

    from embedlib import schema, views

    from embedlib.files import inputs
    from embedlib.root import catalog
    from embedlib.root.store import Store
    from embedlib.root import duck
    from embedlib.sql import sql_text

    spec = inputs.check_input(manifest)
    if spec.kind != "manifest":
        raise inputs.InputError(f"labels {manifest}: not a manifest (.csv or .parquet with path and family columns)")
    if "family" not in inputs.manifest_columns(spec):
        raise inputs.InputError(f"labels {manifest}: the manifest has no 'family' column")
    store = Store(corpus_root)
    version = views.views_version(cfg)
    snap = catalog.snapshot(store, ("samples", "errors"))  # one committed view of both tables
    samples, errors = snap.table_files("samples", version), snap.table_files("errors")
    listing = pa.RecordBatchReader.from_batches(
        schema.LISTING, (b for t in inputs.listing_batches(spec, inputs.BATCH_ROWS) for b in t.to_batches()))
    with tempfile.TemporaryDirectory() as tmp:
        con = duck.connect(tmp)
        con.register("listing", listing)
        duck.register(con, store, "corpus_samples", samples, "parquet", schema.samples_schema([], version),
                  ["location", "sha256", "run_id"])
        duck.register(con, store, "corpus_errors", errors, "parquet", schema.ERRORS,
                  ["location", "sha256", "run_id", "status", "model_version"])
        rows = con.execute(sql_text("training_labels"), {"version": version}).fetchall()
        con.close()
    return Labels.from_pairs(rows, f"the manifest {manifest}")


def for_training(source: str | None, corpus_root: str, cfg: "Config") -> Labels | None:
    """The labels a training run uses: those of `source` when it is a manifest with a family column (the training
    input, or --labels), else None (the families recorded when the corpus was rasterized; none for a folder)."""
    from embedlib.files import inputs

    if not source:
        return None
    spec = inputs.check_input(source)
    if spec.kind != "manifest" or "family" not in inputs.manifest_columns(spec):
        return None
    return labels_from_manifest(source, corpus_root, cfg)
