"""Sharded, resumable output: one Parquet file per input shard and table, written atomically.

A job's output folder holds:
  _inputs.parquet     the input list with shard ids, frozen at the first run (a rerun reuses it)
  _run.json           what produced the folder (job, model version, config): a rerun must match it
  <table>/part-NNNNNN.parquet   per shard; the *primary* table's file is written last: it marks the shard done

A killed job run again lists the done shards and processes only the others, so nothing is duplicated:
an unfinished shard left at most files that the rerun overwrites under the same names. Duplicate
contents (same sha256) are written once; later copies go to errors/ with status 'duplicate'.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedlib import schema
from embedlib.sources import InputFile

INPUTS = "_inputs.parquet"
RUN = "_run.json"
_PART = re.compile(r"part-(\d+)\.parquet$")


def part_name(shard: int) -> str:
    return f"part-{shard:06d}.parquet"


class OutputMismatchError(RuntimeError):
    """The output folder was made by a different job, model or config: resuming would mix results."""


@dataclass
class ShardedOutput:
    root: str
    primary: str  # the table whose file marks a shard done
    fs: Any = field(init=False)
    path: str = field(init=False)

    def __post_init__(self) -> None:
        self.fs, self.path = fsspec.core.url_to_fs(self.root)
        self.root = self.root.rstrip("/")
        self.path = self.path.rstrip("/")

    # -- run identity and input list -------------------------------------------------------------
    def start(self, run_info: dict[str, Any], inputs: list[InputFile]) -> list[InputFile]:
        """Create or resume the folder. Returns the input list to use (the frozen one when resuming)."""
        self.fs.makedirs(self.path, exist_ok=True)
        run_path = f"{self.path}/{RUN}"
        if self.fs.exists(run_path):
            with self.fs.open(run_path, "r") as fh:
                previous = json.load(fh)
            if previous != json.loads(json.dumps(run_info)):
                diff = {k: (previous.get(k), run_info.get(k)) for k in set(previous) | set(run_info)
                        if previous.get(k) != run_info.get(k)}
                raise OutputMismatchError(f"{self.root} was written by another run; differences: {diff}")
            return self.frozen_inputs()
        table = pa.table({"path": [f.path for f in inputs], "family": [f.family for f in inputs]},
                         schema=pa.schema([("path", pa.string()), ("family", pa.string())]))
        self._write_atomic(table, f"{self.path}/{INPUTS}")
        with self.fs.open(run_path, "w") as fh:
            json.dump(run_info, fh, indent=2, sort_keys=True)
        return inputs

    def frozen_inputs(self) -> list[InputFile]:
        with self.fs.open(f"{self.path}/{INPUTS}", "rb") as fh:
            table = pq.read_table(fh)
        return [InputFile(p, f) for p, f in zip(table.column("path").to_pylist(), table.column("family").to_pylist())]

    # -- shards ----------------------------------------------------------------------------------
    def done_shards(self) -> set[int]:
        folder = f"{self.path}/{self.primary}"
        if not self.fs.exists(folder):
            return set()
        return {int(m.group(1)) for p in self.fs.ls(folder, detail=False) if (m := _PART.search(p))}

    def written_sha256(self) -> dict[str, str]:
        """sha256 -> path of every row already in the primary table (to keep duplicates out on resume)."""
        seen: dict[str, str] = {}
        for shard in sorted(self.done_shards()):
            with self.fs.open(f"{self.path}/{self.primary}/{part_name(shard)}", "rb") as fh:
                t = pq.read_table(fh, columns=["sha256", "path"])
            seen.update(zip(t.column("sha256").to_pylist(), t.column("path").to_pylist()))
        return seen

    def write_shard(self, shard: int, tables: dict[str, pa.Table]) -> None:
        """Write every table's file for `shard`, the primary one last (it marks the shard done)."""
        for name in sorted(tables, key=lambda n: n == self.primary):
            self._write_atomic(tables[name], f"{self.path}/{name}/{part_name(shard)}")

    def _write_atomic(self, table: pa.Table, dest: str) -> None:
        folder = dest.rsplit("/", 1)[0]
        self.fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
        self.fs.mv(tmp, dest)


def dedupe(ok: pa.Table, seen: dict[str, str]) -> tuple[pa.Table, pa.Table]:
    """Split rows with an image into (first copies, duplicate rows as errors), updating `seen`."""
    keep: list[bool] = []
    dup_paths, dup_sha, dup_size, dup_family, dup_reason = [], [], [], [], []
    for sha, path, size, family in zip(ok.column("sha256").to_pylist(), ok.column("path").to_pylist(),
                                       ok.column("size_bytes").to_pylist(), ok.column("family").to_pylist()):
        if sha in seen:
            keep.append(False)
            dup_paths.append(path)
            dup_sha.append(sha)
            dup_size.append(size)
            dup_family.append(family)
            dup_reason.append(f"same content as {seen[sha]}")
        else:
            keep.append(True)
            seen[sha] = path
    dups = pa.table({"path": dup_paths, "status": [schema.STATUS_DUPLICATE] * len(dup_paths), "reason": dup_reason,
                     "sha256": dup_sha, "size_bytes": dup_size, "family": dup_family})
    return ok.filter(pa.array(keep, pa.bool_())), schema.conform(dups, schema.ERRORS)


def errors_table(errors: pa.Table) -> pa.Table:
    return schema.conform(errors, schema.ERRORS)


def count_by_status(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    counts = pc.value_counts(table.column("status")).to_pylist()
    return {c["values"]: c["counts"] for c in counts}
