"""The benchmark's child processes: a ``shardctl feed`` and real ``shardctl.worker`` processes.

Both are started with exec (``subprocess.Popen``), log to files in the run's
scratch directory, and are stopped with SIGTERM (then SIGKILL after a bound)
by the pid this module started: never by name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from shardctl.errors import ShardctlError
from shardctl.report import WorkerReport, decode_report

_LISTENING = re.compile(rb"feed listening on (ws://[^\s,]+)")


class BenchProcessError(ShardctlError):
    """A benchmark child process (feed, worker) could not start."""


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class FeedProcess:
    """``python -m shardctl feed --port 0 ARGS`` on 127.0.0.1; ``url`` once it listens."""

    def __init__(self, log_path: Path, args: Sequence[str]) -> None:
        self.log_path = log_path
        self.args = list(args)
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FeedProcess:
        cmd = [sys.executable, "-m", "shardctl", "feed", "--port", "0", "--stats-interval", "1h", *self.args]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log_path.read_bytes())
            if match:
                self.url = match.group(1).decode()
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        self.__exit__()
        raise BenchProcessError(f"the feed did not start: {_last_line(self.log_path)}")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            _stop(self._proc, 10)


class WorkerProcess:
    """One ``python -m shardctl.worker`` with a latency log and a report pipe whose stats are kept."""

    def __init__(self, config: Path, shard: str, dsn: str, latency_log: Path, log_path: Path, *,
                 profile: Path | None = None) -> None:
        self.shard = shard
        self.log_path = log_path
        self.report = WorkerReport()
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, SHARDCTL_DSN=dsn, SHARDCTL_LATENCY_LOG=str(latency_log),
                   SHARDCTL_REPORT_FD=str(write_fd))
        env.pop("SHARDCTL_STATE_DIR", None)
        if profile is None:
            cmd = [sys.executable, "-m", "shardctl.worker"]
        else:
            cmd = [sys.executable, "-m", "shardctl.bench.profile", str(profile), "shardctl.worker"]
        cmd += ["--config", str(config), "--shard", shard, "--log-level", "WARNING"]
        try:
            with open(log_path, "wb") as log:
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        self.pid = self._proc.pid
        self._reader = threading.Thread(target=self._read_reports, args=(read_fd,), daemon=True)
        self._reader.start()

    def _read_reports(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                try:
                    report = decode_report(line)
                except ValueError:
                    continue
                if isinstance(report, WorkerReport):
                    self.report = report

    def poll(self) -> int | None:
        return self._proc.poll()

    def last_log_line(self) -> str:
        return _last_line(self.log_path)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (the worker flushes and exits), SIGKILL after ``timeout``; the exit code."""
        code = _stop(self._proc, timeout)
        self._reader.join(5)
        return code


def write_config(path: Path, url: str, groups: Sequence[Sequence[str]], *, batch_size: int,
                 flush_interval: float, state_dir: Path, direct_compress: bool = False) -> Path:
    """A worker config: shards s0..sK-1 with ``groups`` of symbols, each with its own API-key variable."""
    lines = [f"state_dir = {json.dumps(str(state_dir))}",
             "[source]", f"url = {json.dumps(url)}",
             "[timescaledb]", f"direct_compress = {'true' if direct_compress else 'false'}",
             "[defaults]", f"batch_size = {batch_size}", f"flush_interval = {flush_interval}",
             "stop_timeout = 60", "watchdog_timeout = 60"]
    for i, symbols in enumerate(groups):
        lines += [f"[shards.s{i}]", f"symbols = {json.dumps(list(symbols))}",
                  f'api_key_env = "SHARDCTL_BENCH_KEY_{i}"']
    path.write_text("\n".join(lines) + "\n")
    for i in range(len(groups)):
        os.environ.setdefault(f"SHARDCTL_BENCH_KEY_{i}", f"bench{i}")
    return path
