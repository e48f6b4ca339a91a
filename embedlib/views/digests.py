"""Similarity digests of one file's bytes (TLSH and ssdeep): pure functions, like the views. The pipeline stores
them beside the embedding when input.digests is set; embedlib.eval.digests compares them (the baselines).

TLSH (py-tlsh): no digest ("TNULL") below 50 bytes or for input with too little variety. ssdeep: libfuzzy through
its compiled binding pydeep2 (a manylinux wheel that bundles libfuzzy: no system package; the same digests as the
pure-Python ppdeep, about 50x faster). Both come from the `eval` extra: they are imported when a digest is asked for.
"""

from __future__ import annotations

import time

TLSH_MIN_BYTES = 50


def tlsh_digest(data: bytes) -> str | None:
    """TLSH digest, or None where TLSH has none (short or low-variety input)."""
    if len(data) < TLSH_MIN_BYTES:
        return None
    import tlsh

    digest = tlsh.hash(data)
    return None if not digest or digest == "TNULL" else digest


def ssdeep_digest(data: bytes) -> str | None:
    """ssdeep digest ("blocksize:hash1:hash2"), or None for empty input."""
    import pydeep  # pydeep2

    return pydeep.hash_buf(data).decode("ascii") if data else None


def compute(data: bytes) -> dict[str, str | None]:
    """Both digests of one file's bytes: the tlsh and ssdeep columns of a table row."""
    return {"tlsh": tlsh_digest(data), "ssdeep": ssdeep_digest(data)}


def timed_compute(data: bytes) -> dict:
    """compute() plus the CPU and wall seconds each digest took (bytes already in memory)."""
    out: dict = {}
    for name, fn in (("tlsh", tlsh_digest), ("ssdeep", ssdeep_digest)):
        cpu, wall = time.process_time(), time.perf_counter()
        out[name] = fn(data)
        out[f"{name}_cpu_s"] = time.process_time() - cpu
        out[f"{name}_wall_s"] = time.perf_counter() - wall
    return out
