"""CPU seconds and peak memory of a process tree (a job and the Ray cluster it starts), by role, over time.

A sampler thread reads /proc every `interval` seconds: for every live descendant of the root process, its CPU
seconds (user + system) and peak RSS (VmHWM). Each process gets a role from its command line (driver, the Ray
daemons: gcs, raylet, dashboard, agents, log monitor; workers). `cpu_between(a, b)` integrates the tree's CPU
over a time window by role (linear between samples), so a benchmark that knows when each phase of a job ran
can say which process spent what in each. A process that ends between two samples loses at most its last
interval. Linux only; bench only.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from dataclasses import dataclass, field

ROLES = ("driver", "workers", "raylet", "gcs", "dashboard", "dashboard agent", "runtime env agent", "log monitor",
         "other")
_TICK = os.sysconf("SC_CLK_TCK")


def role_of(pid: int, root: int, cmdline: str) -> str:
    if pid == root:
        return "driver"
    if "gcs_server" in cmdline:
        return "gcs"
    if "raylet" in cmdline.split(" ", 1)[0]:
        return "raylet"
    if "dashboard/agent.py" in cmdline:
        return "dashboard agent"
    if "runtime_env/agent" in cmdline:
        return "runtime env agent"
    if "dashboard.py" in cmdline:
        return "dashboard"
    if "log_monitor" in cmdline:
        return "log monitor"
    if cmdline.startswith("ray::") or "default_worker.py" in cmdline:
        return "workers"
    return "other"


def _scan() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU seconds, VmHWM bytes) of every process readable now."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            hwm = 0
            with open(f"/proc/{entry}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        hwm = int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
        out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK, hwm)
    return out


@dataclass
class Tree:
    """What a sampler saw of one process tree."""

    root: int
    times: list[float] = field(default_factory=list)  # time.time() of each sample
    totals: list[dict[str, float]] = field(default_factory=list)  # CPU seconds by role at each sample (cumulative)
    peak_rss: dict[str, int] = field(default_factory=dict)  # role -> largest VmHWM of one process of that role
    cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds, last seen
    roles: dict[int, str] = field(default_factory=dict)

    def cpu_by_role(self) -> dict[str, float]:
        out = {r: 0.0 for r in ROLES}
        for pid, seconds in self.cpu.items():
            out[self.roles[pid]] += seconds
        return out

    def at(self, t: float) -> dict[str, float]:
        """Cumulative CPU by role at time t (linear between samples)."""
        if not self.times:
            return {r: 0.0 for r in ROLES}
        j = bisect.bisect_left(self.times, t)
        if j == 0:
            return dict(self.totals[0])
        if j >= len(self.times):
            return dict(self.totals[-1])
        t0, t1 = self.times[j - 1], self.times[j]
        w = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        a, b = self.totals[j - 1], self.totals[j]
        return {r: a[r] + w * (b[r] - a[r]) for r in ROLES}

    def cpu_between(self, start: float, end: float) -> dict[str, float]:
        a, b = self.at(start), self.at(end)
        return {r: max(0.0, b[r] - a[r]) for r in ROLES}


class Sampler:
    """Samples the tree of `root` until stop(); use as a context manager."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.tree = Tree(root)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cmdlines: dict[int, str] = {}

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> Tree:
        self._stop.set()
        self._thread.join()
        return self.tree

    def _cmdline(self, pid: int) -> str:
        if pid not in self._cmdlines:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    self._cmdlines[pid] = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                self._cmdlines[pid] = ""
        return self._cmdlines[pid]

    def sample(self) -> None:
        procs = _scan()
        tree = self.tree
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        todo, mine = [tree.root], []
        while todo:
            pid = todo.pop()
            if pid in procs:
                mine.append(pid)
            todo += children.get(pid, [])
        for pid in mine:
            _, cpu, hwm = procs[pid]
            role = tree.roles.setdefault(pid, role_of(pid, tree.root, self._cmdline(pid)))
            tree.cpu[pid] = max(tree.cpu.get(pid, 0.0), cpu)
            tree.peak_rss[role] = max(tree.peak_rss.get(role, 0), hwm)
        tree.times.append(time.time())
        tree.totals.append(tree.cpu_by_role())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
        self.sample()
