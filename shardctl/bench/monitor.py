"""Measuring a benchmark run from outside: CPU, memory, commit times and latencies.

``ProcMonitor`` samples, in a thread, the CPU time of the measured processes
and of the PostgreSQL server (the postmaster and every child: backends,
checkpointer, WAL writer...; a child that exits keeps its last sample) and
the workers' RSS. CPU % is CPU seconds over wall seconds × 100, so one busy
core is 100 %. Peak RSS is the kernel's high-water mark (``VmHWM``), read
while the process is still alive.

``CommitWatcher`` follows latency-log files (``SHARDCTL_LATENCY_LOG``: one
float32 per committed row, appended per batch right after the commit) and
notes when each batch became visible, which gives the commit timeline without
touching the worker.
"""

from __future__ import annotations

import array
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import psutil


def _cpu_seconds(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return t.user + t.system


def vm_hwm_mb(pid: int) -> float | None:
    """The peak resident set size of ``pid`` in MiB (``VmHWM``), or None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Usage:
    """CPU and memory of one run: CPU % (100 = one core), peak RSS and the RSS series (seconds, MiB)."""

    wall: float = 0.0
    process_cpu: float = 0.0
    postgres_cpu: float = 0.0
    peak_rss_mb: float | None = None
    rss_series: list[tuple[float, float]] = field(default_factory=list)


class ProcMonitor:
    """Samples ``pids`` and the PostgreSQL tree under ``pg_pid`` every ``interval`` seconds until ``stop``."""

    def __init__(self, pids: Sequence[int], pg_pid: int | None, *, interval: float = 0.25) -> None:
        self._procs = [psutil.Process(p) for p in pids]
        self._pg = psutil.Process(pg_pid) if pg_pid else None
        self._interval = interval
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._pg_start: dict[int, float] = {}
        self._pg_last: dict[int, float] = {}
        self._rss: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self._t0 = 0.0

    def start(self) -> ProcMonitor:
        self._t0 = time.monotonic()
        self._sample(first=True)
        self._thread.start()
        return self

    def _pg_procs(self) -> list[psutil.Process]:
        if self._pg is None:
            return []
        try:
            return [self._pg] + self._pg.children(recursive=True)
        except psutil.Error:
            return [self._pg]

    def _sample(self, first: bool = False) -> None:
        rss = 0
        for proc in self._procs:
            cpu = _cpu_seconds(proc)
            if cpu is not None:
                self._start.setdefault(proc.pid, cpu)
                self._last[proc.pid] = cpu
                try:
                    rss += proc.memory_info().rss
                except psutil.Error:
                    pass
        if rss:
            self._rss.append((time.monotonic() - self._t0, rss / 2**20))
        for proc in self._pg_procs():
            cpu = _cpu_seconds(proc)
            if cpu is None:
                continue
            # A backend born during the run counts from zero; one alive at the start from then.
            self._pg_start.setdefault(proc.pid, cpu if first else 0.0)
            self._pg_last[proc.pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def stop(self) -> Usage:
        """Take a last sample (call while the processes still run) and return the usage."""
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = max(time.monotonic() - self._t0, 1e-9)
        cpu = sum(self._last[p] - self._start[p] for p in self._last)
        pg = sum(self._pg_last[p] - self._pg_start[p] for p in self._pg_last)
        peaks = [vm_hwm_mb(p.pid) for p in self._procs]
        known = [p for p in peaks if p is not None]
        return Usage(wall, 100.0 * cpu / wall, 100.0 * pg / wall, max(known) if known else None, self._rss)


class CommitWatcher:
    """Follows latency-log files; ``poll()`` records (wall time, rows visible) whenever one grows."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self._sizes = [0] * len(self.paths)
        #: per file: (time.time() when seen, cumulative rows)
        self.seen: list[list[tuple[float, int]]] = [[] for _ in self.paths]

    def poll(self) -> int:
        """Look at every file once; return the total rows committed so far."""
        now = time.time()
        for i, path in enumerate(self.paths):
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                continue
            if size != self._sizes[i]:
                self._sizes[i] = size
                self.seen[i].append((now, size // 4))
        return sum(s // 4 for s in self._sizes)

    def latencies(self) -> list[float]:
        """Every row's receive→commit latency in seconds, all files together."""
        values: list[float] = []
        for path in self.paths:
            values.extend(read_latencies(path))
        return values

    def span(self) -> tuple[float, float] | None:
        """(first tick received, last commit) as wall times over all files, or None before any commit.

        The first arrival is the first visible commit minus the largest latency
        among the rows it made visible (at most one poll interval late); the
        last commit is the file's modification time (written right after it).
        """
        firsts: list[float] = []
        lasts: list[float] = []
        for path, seen in zip(self.paths, self.seen):
            if not seen:
                continue
            first_rows = seen[0][1]
            with open(path, "rb") as f:
                head = array.array("f")
                head.frombytes(f.read(first_rows * 4))
            firsts.append(seen[0][0] - (max(head) if head else 0.0))
            lasts.append(os.stat(path).st_mtime_ns / 1e9)
        if not firsts:
            return None
        return min(firsts), max(lasts)

    def commits(self) -> int:
        """How many commit steps were seen (a lower bound: two quick batches may look like one)."""
        return sum(len(s) for s in self.seen)


def read_latencies(path: Path) -> list[float]:
    """The float32 values of one latency log (empty if the file does not exist)."""
    values = array.array("f")
    try:
        values.frombytes(Path(path).read_bytes())
    except FileNotFoundError:
        pass
    return values.tolist()


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 95, 99)) -> dict[str, float] | None:
    """Nearest-rank percentiles and the max of ``values`` (keys ``p50``... ``max``), or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)
    result = {f"p{p:g}": ordered[min(n - 1, max(0, math.ceil(p * n / 100) - 1))] for p in points}
    result["max"] = ordered[-1]
    return result
