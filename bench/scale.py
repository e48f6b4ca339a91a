"""The nightly cycle at scale, on a synthetic object store (bench/synthfs.py: no disk for the corpus).

  python bench/scale.py --files 10000                       # one size (14 min on 2 cores at load average 14-21)
  python bench/scale.py --files 100000 --nights 2           # 14.5 min there (first run 8 min)
  python bench/scale.py --files 10000,100000 --work /tmp/s  # sizes side by side
  python bench/scale.py --compare a.json b.json             # the table of sizes run earlier (--results), and
                                                            # each phase extrapolated to 1M from the two largest

For each size N: a first run of `synth://n<N>-.../` into a fresh output root, then --nights nightly runs, each
adding 1% new files and changing 0.1% in place (SYNTHFS_NIGHT=t), each followed by `python -m jobs.neighbors
--run R` for its new rows; then, in one process, `similar()` for --queries random files, the family count and
the attribution of the last run (labels: each file's pool file's family). Every run is the product's own
library call (what `python -m jobs.embed` does: embed_files with the Ray executor) in a process of its own,
starting its own local Ray, like a nightly cron; a sampler reads the CPU and peak RSS of its whole process
tree (driver, Ray's daemons, workers) every 0.25 s.

Prints, per size: files/s per core for each phase (listing, match, hash, plan, views+embed, write, neighbours)
from the process tree's CPU in each phase's window (robust to other load on the machine) and from wall time,
the Ray daemons' share, driver and worker peak RSS, files in the root, bytes per row, query latencies, the
job's CPU per file beside TLSH's on the same files, and the invariants it checked (every file embedded exactly
once across the runs, every run's counts as the corpus says, k neighbours per new row). The model is a random
one (embedded with --allow-unhealthy-model) unless --model names a checkpoint: throughput does not depend on
the weights. Never in CI at these sizes (tests/test_scale.py runs a small one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import proctree, synthfs  # noqa: E402
from embedlib.config import EXTRA_PROTOCOLS_ENV  # noqa: E402

PHASES = ("list", "match", "hash", "plan", "write")
DAEMONS = ("raylet", "gcs", "dashboard", "dashboard agent", "runtime env agent", "log monitor", "other")


# ---- child processes: one nightly run, the neighbours job, the queries ---------------------------------------

def night_child(args: argparse.Namespace) -> None:
    """One run of the embedding job over the synthetic input, as jobs.embed makes it; prints one JSON line."""
    t_start = time.time()
    import dataclasses

    from embedlib import pipeline, ray_io
    from embedlib.config import Config, load
    from embedlib.model import checkpoint

    base = checkpoint.config_of(checkpoint.load_meta(args.model))
    cfg = load(None, [f"input.shard_size={args.shard_size}"])
    cfg = dataclasses.replace(base, input=cfg.input, embed=Config().embed)
    marks: dict[str, float] = {}

    def start_ray():
        marks["ray_start"] = time.time()
        executor = ray_io.executor_factory(cfg)() if args.executor == "ray" else pipeline.LocalExecutor()
        marks["ray_ready"] = time.time()
        return executor

    marks["imported"] = time.time()
    summaries = pipeline.embed_files(args.model, args.input, args.root, cfg, executor=start_ray, progress=False,
                                     allow_unhealthy=True)
    marks["done"] = time.time()
    s = summaries[-1]
    print(json.dumps({"start": t_start, **marks, "run_id": s.run_id, "counts": s.counts, "seconds": s.seconds,
                      "phases": s.phases, "task_cpu": s.task_cpu, "runs": len(summaries)}), flush=True)


def queries_child(args: argparse.Namespace) -> None:
    """Latencies of the questions an analyst asks the root, and the invariants read back; one JSON line."""
    from embedlib import query

    out: dict = {}
    t = time.perf_counter()
    con = query.connect(args.root, labels=args.labels)
    out["connect_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rows, distinct, locations = con.execute(
        "SELECT count(*), count(DISTINCT sha256), count(DISTINCT location) FROM embeddings_all").fetchone()
    out.update(rows=rows, distinct_sha256=distinct, distinct_locations=locations,
               count_s=time.perf_counter() - t)
    out["neighbors_by_run"] = dict(con.execute("SELECT run_id, count(*) FROM neighbors GROUP BY run_id").fetchall())
    shas = [r[0] for r in con.execute("SELECT sha256 FROM embeddings ORDER BY hash(sha256 || $s) LIMIT $n",
                                      {"s": str(args.seed), "n": args.queries}).fetchall()]
    out["similar_ms"] = _timed_similar(con, shas)
    t = time.perf_counter()
    out["families"] = len(con.execute("SELECT * FROM family_counts").fetchall())
    out["family_counts_ms"] = 1000 * (time.perf_counter() - t)
    t = time.perf_counter()
    out["attribution"] = con.execute(
        "SELECT count(*), count(attributed_family) FROM attribution WHERE run_id = (SELECT max(run_id) FROM runs)"
    ).fetchone()
    out["attribution_ms"] = 1000 * (time.perf_counter() - t)
    con.close()
    if args.db:
        t = time.perf_counter()
        con = query.connect(args.root, labels=args.labels, database=args.db)
        out["materialize_s"] = time.perf_counter() - t
        out["db_similar_ms"] = _timed_similar(con, shas)
        t = time.perf_counter()
        con.execute("SELECT * FROM family_counts").fetchall()
        out["db_family_counts_ms"] = 1000 * (time.perf_counter() - t)
        con.close()
        out["db_bytes"] = os.path.getsize(args.db)
        os.remove(args.db)
    print(json.dumps(out), flush=True)


def _timed_similar(con, shas: list[str]) -> list[float]:
    out = []
    for sha in shas:
        t = time.perf_counter()
        con.execute("SELECT * FROM similar($sha, 10)", {"sha": sha}).fetchall()
        out.append(1000 * (time.perf_counter() - t))
    return out


# ---- the parent: runs children under the sampler --------------------------------------------------------------

def child_env(night: int) -> dict[str, str]:
    env = dict(os.environ)
    env[EXTRA_PROTOCOLS_ENV] = f"{synthfs.PROTOCOL}={synthfs.IMPLEMENTATION}"
    env["SYNTHFS_NIGHT"] = str(night)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return env


RAY_START_TIMEOUT = "timed out during startup"  # Ray's own 30 s limit for a local node: hit on a loaded machine
RETRIES: list[str] = []  # commands run again after RAY_START_TIMEOUT (printed with the figures)


def sampled(cmd: list[str], env: dict[str, str], log: str) -> tuple[str, proctree.Tree, float, float]:
    """(stdout, the process tree's samples, start, end) of a command; its stderr appended to `log`. A command
    whose local Ray did not start within Ray's limit is run again (at most twice), as a cron would retry it."""
    for attempt in range(3):
        started = time.time()
        at = os.path.getsize(log) if os.path.exists(log) else 0
        with open(log, "a") as err:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
            with proctree.Sampler(proc.pid) as sampler:
                stdout, _ = proc.communicate()
            tree = sampler.tree
        if not proc.returncode:
            return stdout, tree, started, time.time()
        with open(log) as fh:
            fh.seek(at)
            if RAY_START_TIMEOUT not in fh.read() or attempt == 2:
                break
        RETRIES.append(" ".join(cmd[2:4]))
        print(f"  (Ray did not start within its limit: {' '.join(cmd[2:4])} again)", flush=True)
    raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}); see {log}")


def run_night(model: str, uri: str, root: str, night: int, shard_size: int, log: str, executor: str = "ray") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "_night", "--model", model, "--input", uri, "--root", root,
           "--shard-size", str(shard_size), "--executor", executor]
    stdout, tree, started, ended = sampled(cmd, child_env(night), log)
    out = json.loads(stdout.strip().splitlines()[-1])
    # phase windows: run_job's phases are consecutive from the start of the run (its `seconds` end at `done`)
    t = out["done"] - out["seconds"]
    windows = {"imports": (started, out["imported"]), "ray start": (out.get("ray_start", t), out.get("ray_ready", t))}
    for name in PHASES:
        windows[name] = (t, t + out["phases"].get(name, 0.0))
        t = windows[name][1]
    windows["commit"] = (t, out["done"])
    windows["shutdown"] = (out["done"], ended)
    out["cpu"] = {name: tree.cpu_between(a, b) for name, (a, b) in windows.items()}
    out["cpu_total"] = tree.cpu_by_role()
    out["peak_rss"] = tree.peak_rss
    out["wall"] = ended - started
    out["windows"] = {k: b - a for k, (a, b) in windows.items()}
    return out


def neighbors_child(args: argparse.Namespace) -> None:
    """What `python -m jobs.neighbors --root R --run RUN -k K` does (the library call), with the CPU of the
    call itself (this process, BLAS threads included) apart from the imports; one JSON line."""
    t = time.process_time()
    from embedlib.query.neighbors import compute_neighbors, default_backend

    backend = default_backend()  # as the job asks (torch only where a GPU driver is): counted with the imports
    imports = time.process_time() - t
    t, wall = time.process_time(), time.perf_counter()
    r = compute_neighbors(args.root, run=args.run, k=args.k, backend=backend)
    print(json.dumps({"line": r.describe(), "queries": r.queries, "corpus": r.corpus, "imports_cpu": imports,
                      "call_cpu": time.process_time() - t, "call_wall": time.perf_counter() - wall}), flush=True)


def run_neighbors(root: str, run_id: str, k: int, log: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "_neighbors", "--root", root, "--run", run_id, "-k", str(k)]
    stdout, tree, started, ended = sampled(cmd, child_env(0), log)
    out = json.loads(stdout.strip().splitlines()[-1])
    return {**out, "wall": ended - started, "cpu": sum(tree.cpu_by_role().values()),
            "peak_rss": max(tree.peak_rss.values())}


def run_queries(root: str, labels: str, n: int, db: str | None, log: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "_queries", "--root", root, "--labels", labels,
           "--queries", str(n)] + (["--db", db] if db else [])
    stdout, tree, started, ended = sampled(cmd, child_env(0), log)
    out = json.loads(stdout.strip().splitlines()[-1])
    out["peak_rss"] = max(tree.peak_rss.values())
    return out


def write_labels(corpus: synthfs.Corpus, name: str, nights: int, path: str) -> None:
    """(path, family) of every file of the last night: its pool file's family (the Debian manifest's family
    column; a pool folder's file name otherwise)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = synthfs.pool_source()
    pool = synthfs.pool_files(source, corpus.pool)
    families = {}
    if source.endswith(".csv"):
        import csv

        with open(source, newline="") as fh:
            families = {row["path"]: row.get("family") for row in csv.DictReader(fh)}
    fam = np.array([families.get(p) or os.path.basename(p) for p, _ in pool], object)
    i = np.arange(corpus.count(nights), dtype=np.int64)
    paths = [f"{synthfs.PROTOCOL}://{name}/d{j // synthfs.PER_FOLDER:05d}/f{j:09d}.bin" for j in i.tolist()]
    pq.write_table(pa.table({"path": pa.array(paths, pa.string()),
                             "family": pa.array(fam[synthfs.mix(corpus.seed, i) % np.uint64(len(pool))], pa.string())}),
                   path)


def tlsh_cpu_ms(uri_root: str, corpus: synthfs.Corpus, files: int, max_bytes: int) -> tuple[float, float]:
    """(CPU ms per file of TLSH, of the synthetic read alone) over `files` files spread through the corpus,
    read as TLSH's baseline reads (the first max_bytes), one process."""
    import tlsh

    os.environ["SYNTHFS_NIGHT"] = "0"
    fs = synthfs.SynthFileSystem()
    picks = np.linspace(0, corpus.count(0) - 1, min(files, corpus.count(0))).astype(np.int64)
    paths = [f"{uri_root}/d{j // synthfs.PER_FOLDER:05d}/f{j:09d}.bin" for j in picks.tolist()]
    for p in paths[:20]:
        tlsh.hash(fs.content(p)[:max_bytes])
    t = time.process_time()
    for p in paths:
        fs.content(p)
    read = time.process_time() - t
    t = time.process_time()
    for p in paths:
        with fs.open(p, "rb") as fh:
            tlsh.hash(fh.read(max_bytes))
    return 1000 * (time.process_time() - t) / len(paths), 1000 * read / len(paths)


def root_stats(root: str) -> dict:
    files, by_table, nbytes, emb_bytes = 0, {}, 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] == "_work":
            continue
        for f in filenames:
            size = os.path.getsize(os.path.join(dirpath, f))
            files += 1
            nbytes += size
            table = rel.split(os.sep)[0]
            by_table[table] = by_table.get(table, 0) + 1
            if table == "embeddings":
                emb_bytes += size
    return {"files": files, "by_table": by_table, "bytes": nbytes, "embeddings_bytes": emb_bytes}


def random_model(work: str) -> str:
    import torch

    from embedlib import views
    from embedlib.config import Config
    from embedlib.model import checkpoint
    from embedlib.model.network import build_model

    cfg = Config()
    torch.manual_seed(0)
    path = os.path.join(work, "model")
    if not os.path.exists(os.path.join(path, "meta.json")):
        checkpoint.save(path, build_model(cfg.model, 8, views.view_specs(cfg), cfg.views.token_id_bits), cfg, [f"f{i}" for i in range(8)],
                        {"note": "random weights, never trained: a benchmark model (--allow-unhealthy-model)"})
    return path


def one_size(n: int, args: argparse.Namespace, model: str) -> dict:
    """The whole cycle at one size; returns the figures (also printed)."""
    corpus = synthfs.Corpus(n, pool=args.pool, seed=args.seed)
    name = corpus.name
    uri = f"{synthfs.PROTOCOL}://{name}"
    work = os.path.join(args.work, f"n{n}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    root, log = os.path.join(work, "root"), os.path.join(work, "stderr.log")
    result: dict = {"files": n, "nights": [], "neighbors": [], "cores": os.cpu_count(), "model": model,
                    "shard_size": args.shard_size, "load_before": os.getloadavg()}
    problems: list[str] = []
    started = time.time()
    for night in range(args.nights + 1):
        out = run_night(model, uri + "/", root, night, args.shard_size, log, args.executor)
        c = out["counts"]
        new = corpus.count(night) - (corpus.count(night - 1) if night else 0)
        changed = len(synthfs.changed_files(corpus, night))
        want = {"files_seen": corpus.count(night), "written": new + changed, "duplicates": 0, "failed": 0,
                "skipped_known": corpus.count(night) - new - changed}
        got = {k: c.get(k) for k in want}
        if got != want:
            problems.append(f"night {night}: counts {got}, the corpus says {want}")
        out.update(night=night, new=new, changed=changed)
        result["nights"].append(out)
        print(f"  night {night}: {c['files_seen']} files, {c['written']} embedded ({new} new, {changed} changed), "
              f"{c['skipped_known']} known; {out['wall']:.1f} s, CPU {sum(out['cpu_total'].values()):.1f} s; "
              f"driver peak RSS {out['peak_rss'].get('driver', 0) / 1e6:.0f} MB", flush=True)
        if night >= 1 or args.backfill_neighbors:
            nb = run_neighbors(root, out["run_id"], args.k, log)
            nb["night"] = night
            result["neighbors"].append(nb)
            if nb["queries"] != c["written"]:
                problems.append(f"night {night}: neighbours for {nb['queries']} rows, the run embedded {c['written']}")
            print(f"  neighbours: {nb['line']} (the call: CPU {nb['call_cpu']:.2f} s; the job's process: CPU "
                  f"{nb['cpu']:.1f} s, peak RSS {nb['peak_rss'] / 1e6:.0f} MB)",
                  flush=True)
    result["cycle_s"] = time.time() - started
    labels = os.path.join(work, "labels.parquet")
    write_labels(corpus, name, args.nights, labels)
    db = os.path.join(work, "bench.duckdb") if n <= args.materialize_max else None
    q = run_queries(root, labels, args.queries, db, log)
    result["queries"] = q
    expected_rows = sum(x["counts"]["written"] for x in result["nights"])
    if (q["rows"], q["distinct_sha256"], q["distinct_locations"]) != (expected_rows, expected_rows, corpus.count(args.nights)):
        problems.append(f"embeddings: {q['rows']} rows, {q['distinct_sha256']} distinct sha256, {q['distinct_locations']} "
                        f"locations; want {expected_rows}, {expected_rows}, {corpus.count(args.nights)}")
    for nb in result["neighbors"]:
        run = result["nights"][nb["night"]]
        if q["neighbors_by_run"].get(run["run_id"], 0) != args.k * run["counts"]["written"]:
            problems.append(f"night {nb['night']}: {q['neighbors_by_run'].get(run['run_id'], 0)} neighbour rows, want "
                            f"{args.k} x {run['counts']['written']}")
    result["root"] = root_stats(root)
    result["tlsh_ms"], result["synth_read_ms"] = tlsh_cpu_ms(uri, corpus, args.tlsh_files, 16 << 20)
    result["problems"] = problems
    result["retries"], RETRIES[:] = list(RETRIES), []
    result["load_after"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


# ---- the tables -----------------------------------------------------------------------------------------------

def phase_rows(r: dict) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{run kind: {phase: (units, CPU seconds of the tree, wall seconds)}}: the first run and the nightly runs
    (summed), per listed file for listing..plan, per embedded file for views+embed and write, per new row for
    the neighbours."""
    out = {}
    for kind, nights in (("first run", r["nights"][:1]), ("nightly", r["nights"][1:])):
        if not nights:
            continue
        listed = sum(x["counts"]["files_seen"] for x in nights)
        written = sum(x["counts"]["written"] for x in nights)
        rows = {}
        for phase, label in (("list", "listing"), ("match", "match"), ("hash", "hash"), ("plan", "plan")):
            rows[label] = (listed, sum(sum(x["cpu"][phase].values()) for x in nights),
                           sum(x["phases"].get(phase, 0.0) for x in nights))
        write_cpu = sum(sum(x["cpu"]["write"].values()) for x in nights)
        tasks_views = sum(x["task_cpu"].get("views", 0.0) + x["task_cpu"].get("embed", 0.0) for x in nights)
        tasks_write = sum(x["task_cpu"].get("write", 0.0) for x in nights)
        wall = sum(x["phases"].get("write", 0.0) for x in nights)
        share = tasks_views / max(tasks_views + tasks_write, 1e-9)
        # the write phase's CPU beyond the tasks' own (Ray, the driver, idle workers) split by the tasks' shares
        rows["views+embed"] = (written, tasks_views + (write_cpu - tasks_views - tasks_write) * share, wall * share)
        rows["write"] = (written, tasks_write + (write_cpu - tasks_views - tasks_write) * (1 - share),
                         wall * (1 - share))
        if kind == "nightly" and r["neighbors"]:
            nbs = [nb for nb in r["neighbors"] if nb["night"] >= 1]
            queries = sum(nb["queries"] for nb in nbs)
            if all("call_cpu" in nb for nb in nbs):
                rows["neighbours"] = (queries, sum(nb["call_cpu"] for nb in nbs), sum(nb["call_wall"] for nb in nbs))
            rows["neighb. job"] = (queries, sum(nb["cpu"] for nb in nbs), sum(nb["wall"] for nb in nbs))
        whole = sum(sum(x["cpu_total"].values()) for x in nights)
        rows["whole job"] = (listed if kind == "nightly" else written, whole, sum(x["wall"] for x in nights))
        out[kind] = rows
    return out


def print_size(r: dict) -> None:
    cores = r["cores"]
    print(f"\n== {r['files']} files and {len(r['nights']) - 1} nightly runs, {cores} cores, shard {r['shard_size']}; "
          f"cycle {r['cycle_s'] / 60:.1f} "
          f"min; load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after ==")
    print(f"{'':<11}{'phase':<13}{'units':>9} {'CPU s':>8} {'wall s':>8} {'files/CPU-s':>12} {'files/s/core':>13}"
          "  (files/CPU-s: the whole process tree's CPU in the phase's window)")
    for kind, rows in phase_rows(r).items():
        for phase, (units, cpu, wall) in rows.items():
            print(f"{kind:<11}{phase:<13}{units:>9} {cpu:>8.1f} {wall:>8.1f} {units / max(cpu, 1e-9):>12.0f} "
                  f"{units / max(wall * cores, 1e-9):>13.0f}")
    first = r["nights"][0]
    daemons = {k: v for k, v in first["cpu_total"].items() if k in DAEMONS and v > 0.05}
    print(f"first run, whole tree CPU {sum(first['cpu_total'].values()):.1f} s: driver {first['cpu_total']['driver']:.1f}, "
          f"workers {first['cpu_total']['workers']:.1f}, Ray daemons {sum(daemons.values()):.1f} "
          f"({', '.join(f'{k} {v:.1f}' for k, v in sorted(daemons.items(), key=lambda kv: -kv[1]))}); "
          f"imports {sum(first['cpu']['imports'].values()):.1f}, Ray start {sum(first['cpu']['ray start'].values()):.1f} "
          f"({first['windows']['ray start']:.1f} s wall), shutdown {sum(first['cpu']['shutdown'].values()):.1f}")
    tc = first["task_cpu"]
    w = max(first["counts"]["written"], 1)
    job_ms = 1000 * sum(first["cpu_total"].values()) / w
    print(f"first run, CPU per file: whole job {job_ms:.3f} ms = {job_ms / r['tlsh_ms']:.2f} x TLSH's "
          f"{r['tlsh_ms']:.3f} ms (read + digest, one process, the same synthetic files; the synthetic read alone "
          f"{r['synth_read_ms']:.3f} ms, paid twice by the job: hash, then views); write tasks: views "
          f"{1000 * tc.get('views', 0) / w:.3f}, embed {1000 * tc.get('embed', 0) / w:.3f}, "
          f"Parquet {1000 * tc.get('write', 0) / w:.3f} ms")
    rss = {}
    for x in r["nights"]:
        for role, v in x["peak_rss"].items():
            rss[role] = max(rss.get(role, 0), v)
    print(f"peak RSS: driver {rss.get('driver', 0) / 1e6:.0f} MB (first run {first['peak_rss'].get('driver', 0) / 1e6:.0f}), "
          f"one worker {rss.get('workers', 0) / 1e6:.0f} MB, raylet {rss.get('raylet', 0) / 1e6:.0f} MB, gcs "
          f"{rss.get('gcs', 0) / 1e6:.0f} MB; neighbours job {max([nb['peak_rss'] for nb in r['neighbors']] or [0]) / 1e6:.0f} MB; "
          f"queries {r['queries']['peak_rss'] / 1e6:.0f} MB")
    st, q = r["root"], r["queries"]
    print(f"root: {st['files']} files ({', '.join(f'{k} {v}' for k, v in sorted(st['by_table'].items()))}), "
          f"{st['bytes'] / 1e6:.0f} MB, {st['embeddings_bytes'] / max(q['rows'], 1):.0f} bytes per embeddings row")
    for nb in r["neighbors"]:
        if "call_cpu" not in nb:  # results of an earlier version of this bench
            continue
        per = nb["call_cpu"] / max(nb["queries"], 1)
        print(f"neighbours night {nb['night']}: {nb['queries']} new rows x {nb['corpus']} rows: the call {nb['call_cpu']:.2f} "
              f"s CPU = {1000 * per:.2f} ms per new row = {1e9 * per / max(nb['corpus'], 1):.1f} ns per (new row x "
              f"table row); the job's process {nb['cpu']:.1f} s CPU (imports {nb['imports_cpu']:.1f}), {nb['wall']:.1f} s wall")
    sim = np.array(q["similar_ms"])
    print(f"queries (views over Parquet): connect {q['connect_s']:.2f} s, similar() median {np.median(sim):.0f} ms "
          f"(max {sim.max():.0f}) over {len(sim)} files, family count {q['family_counts_ms']:.0f} ms ({q['families']} "
          f"families), attribution of the last run {q['attribution_ms']:.0f} ms ({q['attribution'][0]} files, "
          f"{q['attribution'][1]} attributed)")
    if "materialize_s" in q:
        dsim = np.array(q["db_similar_ms"])
        print(f"queries (materialised --db, {q['db_bytes'] / 1e6:.0f} MB, built in {q['materialize_s']:.1f} s): "
              f"similar() median {np.median(dsim):.0f} ms (max {dsim.max():.0f}), family count "
              f"{q['db_family_counts_ms']:.0f} ms")
    if r.get("retries"):
        print(f"retried after Ray's start-up limit: {', '.join(r['retries'])}")
    print("invariants: " + ("every file embedded exactly once across the runs; every run's counts as the corpus "
                            "says; k neighbours per new row" if not r["problems"] else "FAILED: " + "; ".join(r["problems"])))


def print_compare(results: list[dict]) -> None:
    """files per CPU-second of each phase at each size, and the ratio of per-file cost to the smallest size."""
    if len(results) < 2:
        return
    results = sorted(results, key=lambda r: r["files"])
    base = phase_rows(results[0])
    print("\nfiles per CPU-second by phase (per-file cost relative to the smallest size in brackets; the goal: "
          "<= 1.2 for every phase but the neighbours)")
    print(f"{'':<11}{'phase':<13}" + "".join(f"{r['files']:>18}" for r in results))
    for kind, rows in base.items():
        for phase in rows:
            cells = []
            for r in results:
                units, cpu, _ = phase_rows(r).get(kind, {}).get(phase, (0, 0, 0))
                u0, c0, _ = rows[phase]
                rate = units / max(cpu, 1e-9)
                rel = (cpu / max(units, 1)) / max(c0 / max(u0, 1), 1e-12)
                cells.append(f"{rate:>10.0f} [{rel:4.2f}]")
            print(f"{kind:<11}{phase:<13}" + "".join(f"{c:>18}" for c in cells))
    print("driver peak RSS (MB):  " + "  ".join(
        f"{r['files']}: {max(x['peak_rss'].get('driver', 0) for x in r['nights']) / 1e6:.0f}" for r in results))
    extrapolate(results[-2], results[-1], 1_000_000)


def extrapolate(small: dict, large: dict, n: int) -> None:
    """Per-run CPU of each phase as a + b * files, through the two largest sizes measured (nothing else: no
    model of what was not run), evaluated at n files; the neighbours as a + b * (new rows x table rows)."""
    print(f"\nextrapolated to {n} files from {small['files']} and {large['files']} (per run: CPU = a + b x units, "
          "the line through the two measured sizes)")
    print(f"{'':<11}{'phase':<13}{'a (CPU s)':>10}{'b (ms/unit)':>12}{'CPU s per run':>14}{'files/CPU-s':>12}")
    for kind in ("first run", "nightly"):
        runs = {id(r): max(1, len(r["nights"][1:])) if kind == "nightly" else 1 for r in (small, large)}
        p1, p2 = phase_rows(small).get(kind, {}), phase_rows(large).get(kind, {})
        for phase in p2:
            if phase not in p1 or phase.startswith("neighb") or p2[phase][1] < 0.05:  # no CPU to speak of
                continue
            (u1, c1, _), (u2, c2, _) = p1[phase], p2[phase]
            u1, c1, u2, c2 = u1 / runs[id(small)], c1 / runs[id(small)], u2 / runs[id(large)], c2 / runs[id(large)]
            b = (c2 - c1) / max(u2 - u1, 1e-9)
            a = c1 - b * u1
            u = u2 * n / large["files"]
            cpu = a + b * u
            print(f"{kind:<11}{phase:<13}{a:>10.1f}{1000 * b:>12.4f}{cpu:>14.0f}{u / max(cpu, 1e-9):>12.0f}")
    pairs = []
    for r in (small, large):
        nbs = [nb for nb in r["neighbors"] if nb["night"] >= 1]
        if nbs:
            key = "call_cpu" if all("call_cpu" in nb for nb in nbs) else "cpu"
            pairs.append((sum(nb["queries"] * nb["corpus"] for nb in nbs) / len(nbs),
                          sum(nb[key] for nb in nbs) / len(nbs), key))
    if len(pairs) == 2:
        (w1, c1, k1), (w2, c2, _) = pairs
        b = (c2 - c1) / max(w2 - w1, 1e-9)
        a = c1 - b * w1
        new = n * large["nights"][-1]["new"] / max(large["files"], 1)
        print(f"nightly    neighbours   {a:>9.1f} {1e9 * b:>8.1f} ns per (new row x table row) ({k1}); at {n} rows "
              f"with {new:.0f} new rows a night: {a + b * new * n:.0f} CPU s a night, growing as the table squared "
              "over the years (new rows are a share of it)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_night", "_queries", "_neighbors"):
        p = argparse.ArgumentParser()
        p.add_argument("what")
        for a in ("--model", "--input", "--root", "--labels", "--db", "--run"):
            p.add_argument(a)
        p.add_argument("--shard-size", type=int, default=256)
        p.add_argument("--queries", type=int, default=20)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--executor", default="ray")
        p.add_argument("-k", type=int, default=10)
        a = p.parse_args()
        {"_night": night_child, "_queries": queries_child, "_neighbors": neighbors_child}[a.what](a)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="10000", help="sizes, comma-separated (files of the first run)")
    parser.add_argument("--nights", type=int, default=5)
    parser.add_argument("--pool", type=int, default=300, help="real executables the synthetic files are made of")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=256, help="input.shard_size (files per task and part)")
    parser.add_argument("--executor", choices=("ray", "local"), default="ray",
                        help="where the runs' tasks run: a local Ray cluster per run (the product's nightly job), or "
                             "in the run's own process (LocalExecutor: the smoke test, no Ray)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per new row")
    parser.add_argument("--queries", type=int, default=20, help="similar() calls")
    parser.add_argument("--model", help="a checkpoint (default: a random one, --allow-unhealthy-model)")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep each size's output root")
    parser.add_argument("--backfill-neighbors", action="store_true", help="neighbours for the first run too")
    parser.add_argument("--materialize-max", type=int, default=200_000,
                        help="also time the materialised database (--db) up to this many files")
    parser.add_argument("--tlsh-files", type=int, default=1000, help="files of the TLSH baseline")
    parser.add_argument("--results", help="write the figures of every size to this JSON file")
    parser.add_argument("--compare", nargs="*", default=[], help="JSON results of earlier runs to tabulate")
    args = parser.parse_args()
    results = []
    for path in args.compare:
        with open(path) as fh:
            results += json.load(fh)
    sizes = [int(x) for x in args.files.split(",") if x] if not args.compare else []
    if sizes:
        given = args.work
        scratch = args.work = args.work or tempfile.mkdtemp(prefix="embedlib-scale-")
        os.makedirs(scratch, exist_ok=True)
        model = args.model or random_model(scratch)
        print(f"synthetic corpus: pool of {args.pool} files of {synthfs.pool_source()}; model {model}"
              f"{'' if args.model else ' (random weights, embedded with --allow-unhealthy-model)'}; {os.cpu_count()} "
              f"cores; load average {os.getloadavg()[0]:.1f}", flush=True)
        for n in sizes:
            print(f"\n{n} files:", flush=True)
            r = one_size(n, args, model)
            results.append(r)
            print_size(r)
            if args.results:
                with open(args.results, "w") as fh:
                    json.dump(results, fh, indent=1)
        if not given:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        for r in results:
            print_size(r)
    print_compare(results)
    if any(r["problems"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
