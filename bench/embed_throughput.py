"""Throughput of the embedding job against a plain single-process loop, on the same files, in one run.

  python bench/embed_throughput.py --input /work/corpora/debian-multi/manifest.csv --files 10000
  python bench/embed_throughput.py --input /usr --files 10000 --rss-scale 100000     # + driver RSS at 100k

Prints, for the same files (page cache warmed by the first pass):
  raw reads         read every byte (files/s, MB/s)
  plain loop        sources.read_file -> views.compute_views -> Embedder.embed_views (batches of 256, torch
                    on every core): the product's own functions, no Ray
  Ray job           python -m jobs.embed into a fresh output root, end to end (a subprocess, like a user runs
                    it), and the same without Ray's start-up; its driver's peak RSS (VmHWM)
  TLSH              py-tlsh over the same bytes (files/s, and per core over a process pool)
  rasterize         the byteplot alone, and the model's views (views.compute_views), GB/s on one core; the
                    sketch views also by their numpy reference (views.compute_views_reference)
  model             forward pass files/s and GFLOP/s on real files' views, against this machine's measured
                    float32 matmul peak
  CPU per file      the target's measure (alone: --only-cost), side by side on the same --cost-files files,
                    interleaved --cost-rounds times (medians): the product's embedding
                    in one process with one torch thread (read + views + model, evaluation.embedding_cost; the
                    views both ways) against TLSH (read + digest, evaluation.baseline_costs), CPU seconds
                    (process_time); and the Ray job's CPU per file: CPU seconds of its whole process tree
                    (driver, raylet, GCS, workers; start-up included) over its files
and the ratios. --rss-scale N also runs the Ray job over N small synthetic files and compares driver peak RSS.
Never run in CI.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import proctree  # noqa: E402
from embedlib import views  # noqa: E402
from embedlib.files import corpus  # noqa: E402
from embedlib.files import inputs  # noqa: E402
from embedlib.config import Config  # noqa: E402
from embedlib.files.inputs import InputFile  # noqa: E402
from embedlib.files.sources import read_path  # noqa: E402


def pick_files(source: str, n: int) -> list[str]:
    """The first n readable regular files of a folder walk or a manifest, in listing order."""
    out = []
    for row in inputs.iter_listing(inputs.check_input(source)):
        path = os.fsdecode(row["target"])
        if not row.get("status") and not row.get("remote") and os.path.isfile(path) and not os.path.islink(path) \
                and os.path.getsize(path) > 0:
            out.append(path)
            if len(out) == n:
                break
    return out


def timed(label: str, fn, files: list[str], nbytes: int) -> float:
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    print(f"{label:<34} {len(files) / seconds:9.1f} files/s  {nbytes / seconds / 1e6:8.1f} MB/s  ({seconds:.1f} s)",
          flush=True)
    return len(files) / seconds


def raw_reads(files: list[str]) -> None:
    for p in files:
        with open(p, "rb") as fh:
            while fh.read(1 << 20):
                pass


def plain_loop(files: list[str], model: str, cfg: Config) -> None:
    import torch

    from embedlib.model.embedder import Embedder

    torch.set_num_threads(os.cpu_count() or 1)
    embedder = Embedder(model, device="cpu")
    batch = []
    for p in files:
        read = read_path(p, cfg.input)
        if read.ok:
            batch.append(views.compute_views(read.data, embedder.config))
        if len(batch) == 256:
            embedder.embed_views(views.stack(batch, embedder.config))
            batch = []
    if batch:
        embedder.embed_views(views.stack(batch, embedder.config))


def embed_job_tree(manifest: str, model: str, out: str, cwd: str = REPO, env: dict[str, str] | None = None
                   ) -> tuple[float, proctree.Tree, str]:
    """(wall seconds, the process tree's CPU and memory by role, stdout) of `python -m jobs.embed` into a fresh
    `out`, run from `cwd` with `env`. The CPU is sampled every 0.2 s, so a process that ends between two samples
    loses its last fraction of a second (Ray's processes live as long as the job)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "jobs.embed", "--model", model, "--input", manifest, "--output", out,
           "--no-progress", "--set", "input.shard_size=512", "--allow-unhealthy-model"]  # a --model may be random
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with proctree.Sampler(proc.pid, interval=0.2) as sampler:
        stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"jobs.embed failed:\n{stderr[-3000:]}")
    return time.perf_counter() - started, sampler.tree, stdout


def ray_job(manifest: str, model: str, out: str, cwd: str = REPO, env: dict[str, str] | None = None
            ) -> tuple[float, float, int, float]:
    """(wall seconds, seconds after Ray started, driver peak RSS in bytes, CPU seconds of the job's process
    tree) of `python -m jobs.embed` (embed_job_tree)."""
    wall, tree, stdout = embed_job_tree(manifest, model, out, cwd, env)
    runs = [line for line in stdout.splitlines() if line.startswith("run ")]
    job_seconds = float(runs[-1].split(" in ")[1].split(" s ")[0]) if runs else wall
    return wall, job_seconds, tree.peak_rss.get("driver", 0), sum(tree.cpu.values())


def _tlsh_one(path: str) -> None:
    import tlsh

    with open(path, "rb") as fh:
        tlsh.hash(fh.read(16 * 1024 * 1024))


def tlsh_all(files: list[str], workers: int) -> None:
    if workers == 1:
        for p in files:
            _tlsh_one(p)
        return
    with cf.ProcessPoolExecutor(workers) as pool:
        list(pool.map(_tlsh_one, files, chunksize=64))


def model_flops_per_file(model: str, files: list[str]) -> tuple[float, float]:
    """(GFLOP per file, files/s) of the checkpoint's forward pass on the views of real files, batches of 256 on
    every core."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from embedlib.model.embedder import Embedder

    torch.set_num_threads(os.cpu_count() or 1)
    embedder = Embedder(model, device="cpu")
    cfg = embedder.config
    rows = [views.compute_views(read_path(p, cfg.input).data or b"\0", cfg) for p in files[:256]]
    batch = views.stack(rows, cfg)
    with FlopCounterMode(display=False) as counter:
        embedder.embed_views({k: v[:1] for k, v in batch.items()})
    gflop = counter.get_total_flops() / 1e9
    embedder.embed_views(batch)
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < 5:
        embedder.embed_views(batch)
        n += len(rows)
    return gflop, n / (time.perf_counter() - started)


def matmul_peak_gflops() -> float:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < 3:
        a @ b
        n += 1
    return n * 2 * 2048**3 / (time.perf_counter() - started) / 1e9


def views_rate(files: list[str], cfg: Config, compute=views.compute_views) -> float:
    """GB/s on one core (CPU seconds) of views.compute_views with cfg's views (the byteplot alone:
    views.names=["image"])."""
    datas = [read_path(p, cfg.input).data for p in files[:2000]]
    compute(b"\0warm up\0", cfg)  # the kernels' first call (numba's cache or a compile) is not the rate
    started = time.process_time()
    for d in datas:
        if d:
            compute(d, cfg)
    return sum(map(len, datas)) / (time.process_time() - started) / 1e9


def cpu_per_file(model: str, files: list[str], max_bytes: int, rounds: int = 3) -> dict[str, float]:
    """CPU ms per file, one process, one torch thread, on the same files: the embedding (read + views + model)
    with the views by the kernels and by the numpy reference, and TLSH (read + digest). The three run
    interleaved, `rounds` times; each figure is the median of its rounds (the read part alone varies by tens of
    percent between passes over the same files on a shared machine), with the spread of the totals."""
    from unittest import mock

    from embedlib.eval import evaluation

    views.compute_views(b"\0warm up\0", Config())
    runs: dict[str, list[dict]] = {"tlsh": [], "ours": [], "ref": []}
    for _ in range(rounds):
        runs["tlsh"].append(evaluation.baseline_costs(files, max_bytes, ["tlsh"])[0])
        runs["ours"].append(evaluation.embedding_cost(model, files, max_bytes))
        with mock.patch.object(views, "compute_views", views.compute_views_reference):
            runs["ref"].append(evaluation.embedding_cost(model, files, max_bytes))

    def med(name: str, key: str) -> float:
        return float(np.median([r[key] for r in runs[name]]))

    out = {"tlsh": med("tlsh", "cpu_ms_per_file"), "tlsh_read": med("tlsh", "read_cpu_ms"),
           "ours": med("ours", "total_cpu_ms"), "ours_views": med("ours", "views_cpu_ms"),
           "ours_read": med("ours", "read_cpu_ms"), "ours_model": med("ours", "model_cpu_ms"),
           "ref": med("ref", "total_cpu_ms"), "ref_views": med("ref", "views_cpu_ms")}
    for name, key in (("tlsh", "cpu_ms_per_file"), ("ours", "total_cpu_ms"), ("ref", "total_cpu_ms")):
        totals = [r[key] for r in runs[name]]
        out[name + "_spread"] = f"{min(totals):.3f}..{max(totals):.3f}"
    return out


def print_cost_table(model: str, files: list[str], cfg: Config, args: argparse.Namespace, ray_line: str | None
                     ) -> None:
    """The target's table: CPU per file of the embedding and of TLSH (`cpu_per_file`), and the Ray job's."""
    c = cpu_per_file(model, files[: args.cost_files], cfg.input.max_bytes, args.cost_rounds)
    print(f"\nCPU per file, one process, one torch thread, {min(len(files), args.cost_files)} files, median of "
          f"{args.cost_rounds} interleaved rounds [spread of the totals]:\n"
          f"  TLSH (read + digest)          {c['tlsh']:6.3f} ms (read {c['tlsh_read']:.3f}) [{c['tlsh_spread']}]\n"
          f"  embedding (read+views+model)  {c['ours']:6.3f} ms (read {c['ours_read']:.3f}, views {c['ours_views']:.3f},"
          f" model {c['ours_model']:.3f}) [{c['ours_spread']}] = {c['ours'] / c['tlsh']:.2f} x TLSH (target <= 0.6)\n"
          f"  same, numpy reference views   {c['ref']:6.3f} ms (views {c['ref_views']:.3f}) [{c['ref_spread']}] = "
          f"{c['ref'] / c['tlsh']:.2f} x TLSH", flush=True)
    if ray_line:
        print(f"  Ray job, whole process tree   {ray_line}")


def synthetic_files(folder: str, n: int) -> str:
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        sub = os.path.join(folder, f"{i // 1000:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"{i:06d}.bin"), "wb") as fh:
            fh.write(b"\x7fELF" + rng.integers(0, 256, int(rng.integers(2000, 6000)), dtype=np.uint8).tobytes())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="a folder or a manifest of real executables")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--model", default=None, help="a checkpoint (default: a random one with default settings)")
    parser.add_argument("--rss-scale", type=int, default=0, help="also run the job over N synthetic files")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--cost-files", type=int, default=1000, help="files for the one-thread CPU-per-file table")
    parser.add_argument("--cost-rounds", type=int, default=3, help="interleaved rounds of that table")
    parser.add_argument("--only-cost", action="store_true", help="only the CPU-per-file table (no Ray job, no "
                        "throughput figures)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="embed-bench-")
    cfg = Config()
    model = args.model
    if model is None:
        import torch

        from embedlib.model import checkpoint
        from embedlib.model.network import build_model

        torch.manual_seed(0)
        model = os.path.join(work, "model")
        checkpoint.save(model, build_model(cfg.model, 8, views.view_specs(cfg), cfg.views.token_id_bits), cfg, [f"f{i}" for i in range(8)],
                        {"note": "random weights, never trained: a benchmark model (embedded with "
                                 "--allow-unhealthy-model)"})
    files = pick_files(args.input, args.files)
    nbytes = sum(os.path.getsize(p) for p in files)
    manifest = corpus.write_manifest([InputFile(p) for p in files], os.path.join(work, "files.csv"))
    cores = os.cpu_count() or 1
    print(f"{len(files)} files, {nbytes / 1e9:.2f} GB, {cores} cores; model {model}\n", flush=True)

    timed("raw reads (warms the page cache)", lambda: raw_reads(files), files, nbytes)
    if args.only_cost:
        print_cost_table(model, files, cfg, args, None)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        return
    raw = timed("raw reads", lambda: raw_reads(files), files, nbytes)
    loop = timed("plain loop (read+hash, views, model)", lambda: plain_loop(files, model, cfg), files, nbytes)
    wall, job_seconds, rss, job_cpu = ray_job(manifest, model, os.path.join(work, "out"))
    ray_wall, ray_job_rate = len(files) / wall, len(files) / job_seconds
    print(f"{'Ray job, command end to end':<34} {ray_wall:9.1f} files/s  {nbytes / wall / 1e6:8.1f} MB/s  ({wall:.1f} s)")
    print(f"{'Ray job, after Ray started':<34} {ray_job_rate:9.1f} files/s  ({job_seconds:.1f} s); driver peak RSS "
          f"{rss / 1e6:.0f} MB; CPU {job_cpu:.1f} s ({1000 * job_cpu / len(files):.2f} ms/file)", flush=True)
    t = time.process_time()
    tl1 = timed("TLSH, 1 process", lambda: tlsh_all(files, 1), files, nbytes)
    tlsh_cpu_ms = 1000 * (time.process_time() - t) / len(files)
    tln = timed(f"TLSH, {cores} processes", lambda: tlsh_all(files, cores), files, nbytes)
    byteplot = dataclasses.replace(cfg, views=dataclasses.replace(cfg.views, names=("image",)))
    raster_gbs, views_gbs = views_rate(files, byteplot), views_rate(files, cfg)
    ref_gbs = views_rate(files, cfg, views.compute_views_reference)
    gflop, images_s = model_flops_per_file(model, files)
    peak = matmul_peak_gflops()
    print(f"\nrasterize (the byteplot): {raster_gbs:.2f} GB/s on one core; the model's views "
          f"({'+'.join(cfg.views.names)}): {views_gbs:.2f} GB/s on one core (numpy reference {ref_gbs:.2f})")
    print(f"model: {images_s:.0f} files/s on {cores} threads, {gflop * 1e3:.2f} MFLOP/file -> "
          f"{gflop * images_s:.1f} GFLOP/s vs matmul peak {peak:.1f} GFLOP/s ({100 * gflop * images_s / peak:.0f}%)")
    print(f"\nratios: Ray job / plain loop = {ray_wall / loop:.2f} (command), {ray_job_rate / loop:.2f} "
          f"(after start-up); plain loop / raw reads = {loop / raw:.2f}; TLSH per core = {tln / cores:.0f} files/s "
          f"(1 process {tl1:.0f}); Ray job per core = {ray_job_rate / cores:.0f} files/s")
    print_cost_table(model, files, cfg, args, f"{1000 * job_cpu / len(files):6.3f} ms (start-up included) = "
                     f"{1000 * job_cpu / len(files) / tlsh_cpu_ms:.2f} x TLSH's {tlsh_cpu_ms:.3f} ms (1 process, "
                     "this run)")
    if args.rss_scale:
        syn = synthetic_files(os.path.join(work, "synthetic"), args.rss_scale)
        small = syn + "-10k"
        os.makedirs(small, exist_ok=True)
        for sub in sorted(os.listdir(syn))[: max(1, args.rss_scale // 10 // 1000)]:
            if not os.path.exists(os.path.join(small, sub)):
                shutil.copytree(os.path.join(syn, sub), os.path.join(small, sub))
        _, secs_small, rss_small, _ = ray_job(small, model, os.path.join(work, "out-small"))
        _, secs_big, rss_big, _ = ray_job(syn, model, os.path.join(work, "out-big"))
        n_small = sum(len(os.listdir(os.path.join(small, d))) for d in os.listdir(small))
        print(f"\ndriver peak RSS: {n_small} files {rss_small / 1e6:.0f} MB ({secs_small:.0f} s), {args.rss_scale} files "
              f"{rss_big / 1e6:.0f} MB ({secs_big:.0f} s): ratio {rss_big / rss_small:.2f}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
