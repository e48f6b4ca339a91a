"""Where a local Ray cluster's own CPU goes: start-up, per task, idle, shut-down, by process, for ways of starting it.

  python bench/ray_overhead.py                      # every way, 2000 empty tasks, 20 s idle
  python bench/ray_overhead.py --ways files,train --tasks 4000

Ways: `files` (embedlib.ray_io.init_ray() as the files jobs start a local Ray: no dashboard), `train`
(init_ray(dashboard=True), as training does), `nodash-nometrics` (plain ray.init without the dashboard and
without metrics collection). Each way starts Ray in a fresh process, runs
--tasks empty Ray tasks (at most twice the CPUs in flight, as the pipeline's map_tasks), waits --idle seconds,
and exits; a sampler (bench/proctree.py) reads the CPU of every process of the tree: the driver, the workers and
Ray's daemons. The per-task figure is the tree's CPU while the tasks ran over their number; idle is CPU per
second doing nothing. Never in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import proctree  # noqa: E402


VARIANTS = {
    "nodash-nometrics": {"_system_config": {"enable_metrics_collection": False}},
    "nodash-nometrics-noprestart": {"_system_config": {"enable_metrics_collection": False,
                                                       "enable_worker_prestart": False}},
}


def _noop(i: int) -> int:
    return i


def child(way: str, tasks: int, idle: float) -> None:
    marks = {"start": time.time()}
    import ray

    from embedlib import ray_io

    marks["imported"] = time.time()
    if way in ("files", "train"):
        ray_io.init_ray(dashboard=way == "train")
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True, **VARIANTS[way])
    ray.get(ray.remote(_noop).remote(0))  # a worker is up
    marks["ready"] = time.time()
    for _ in ray_io.map_tasks(_noop, [(i,) for i in range(tasks)]):
        pass
    marks["tasks"] = time.time()
    time.sleep(idle)
    marks["idle"] = time.time()
    print(json.dumps(marks), flush=True)


def measure(way: str, tasks: int, idle: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "_child", way, str(tasks), str(idle)]
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    with proctree.Sampler(proc.pid, interval=0.2) as sampler:
        stdout, _ = proc.communicate()
    ended = time.time()
    if proc.returncode:
        raise SystemExit(f"{way}: failed ({proc.returncode})")
    m = json.loads(stdout.strip().splitlines()[-1])
    tree = sampler.tree
    windows = {"imports": (started, m["imported"]), "start-up": (m["imported"], m["ready"]),
               "tasks": (m["ready"], m["tasks"]), "idle": (m["tasks"], m["idle"]), "shutdown": (m["idle"], ended)}
    cpu = {k: tree.cpu_between(a, b) for k, (a, b) in windows.items()}
    return {"way": way, "cpu": cpu, "wall": {k: b - a for k, (a, b) in windows.items()},
            "procs": len(tree.roles), "rss": tree.peak_rss}


def show(r: dict, tasks: int) -> None:
    def tot(k: str) -> float:
        return sum(r["cpu"][k].values())

    print(f"\n{r['way']}: {r['procs']} processes; CPU s: start-up {tot('start-up'):.1f} ({r['wall']['start-up']:.1f} s wall), "
          f"per task {1000 * tot('tasks') / max(tasks, 1):.2f} ms, idle {tot('idle') / max(r['wall']['idle'], 1e-9):.3f} "
          f"CPU-s/s, shutdown {tot('shutdown'):.1f}")
    for phase in ("start-up", "tasks", "idle"):
        parts = sorted(((k, v) for k, v in r["cpu"][phase].items() if v > 0.02), key=lambda kv: -kv[1])
        print(f"  {phase:<9} " + ", ".join(f"{k} {v:.2f}" for k, v in parts))
    print("  peak RSS MB: " + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sorted(r["rss"].items(), key=lambda kv: -kv[1])))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ways", default="files,train,nodash-nometrics", help="ways of starting Ray to compare")
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--idle", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for _ in range(args.rounds):
        for way in args.ways.split(","):
            show(measure(way, args.tasks, args.idle), args.tasks)
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
