"""Helpers for the multi-host suite (tests/test_hosts.py): hosts, sockets per key, a tally per scenario.

* ``Host``: one "host": its own directory, config (``[cluster]``) and state
  directory, and a real ``shardctl start`` (``faultkit.SupervisorRun``) with
  ``$SHARDCTL_HOST_ID`` set. ``kill_everything`` is ``kill -9`` of the
  supervisor and every worker it runs, by pid.
* ``SocketWatch``: samples the feed's open connections per API key every
  10 ms and keeps the largest count seen (Twelve Data allows 3).
* ``Scenario``: what each test reports: takeover times, the tally, sockets.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faultkit import SupervisorRun, TimedFeed, write_config

SHARDS: dict[str, tuple[str, ...]] = {"crypto": ("BTC/USD", "ETH/USD"), "stocks": ("AAPL", "MSFT")}
KEYS = {name: f"HOSTS_KEY_{name.upper()}" for name in SHARDS}
KEY_VALUES = {env: f"key-{name}" for name, env in KEYS.items()}
SYMBOLS = tuple(s for syms in SHARDS.values() for s in syms)
SHARD_OF = {s: name for name, syms in SHARDS.items() for s in syms}.__getitem__


class Host:
    """One host of the cluster: a supervisor with its own config and state directory."""

    def __init__(self, host_id: str, root: Path, feed_url: str, dsn: str, *, cluster: str = "") -> None:
        self.host_id = host_id
        self.dir = root / host_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = write_config(
            self.dir, feed_url, dsn,
            {name: {"symbols": syms, "api_key_env": KEYS[name]} for name, syms in SHARDS.items()},
            defaults={"batch_size": 200, "flush_interval": "200ms"},
            supervisor={"max_failures": 100, "stop_timeout": "15s"})
        with self.config.open("a") as f:
            f.write("[cluster]\n" + cluster)
        self.run: SupervisorRun | None = None
        self.starts = 0

    def start(self) -> SupervisorRun:
        self.starts += 1
        self.run = SupervisorRun(self.config, self.dir / f"supervisor-{self.starts}.log",
                                 env={**KEY_VALUES, "SHARDCTL_HOST_ID": self.host_id})
        return self.run

    def status(self) -> dict[str, dict[str, Any]] | None:
        assert self.run is not None
        return self.run.try_status()

    def wait(self, predicate: Any, timeout: float, what: str, interval: float = 0.05) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.status()
            if last and predicate(last):
                return last
            time.sleep(interval)
        raise AssertionError(f"host {self.host_id}: not {what} after {timeout:g}s; status: {last}\n"
                             f"{self.run.log()[-3000:] if self.run else ''}")

    def streams(self, names: Any = SHARDS) -> Any:
        return lambda s: all(s[n]["state"] == "RUNNING" and s[n]["lease_owner"] == self.host_id for n in names)

    def stands_by(self, owner: str, names: Any = SHARDS) -> Any:
        return lambda s: all(s[n]["state"] == "STANDBY" and s[n]["lease_owner"] == owner for n in names)

    def kill_everything(self) -> list[int]:
        """``kill -9`` the supervisor and every worker it runs (pids from its status); return the pids."""
        assert self.run is not None
        status = self.run.try_status() or {}
        pids = [self.run.proc.pid] + [s["pid"] for s in status.values() if s.get("pid")]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.run.proc.wait(10)
        self.run.close()  # its log; and any worker left behind (by pid, ours only)
        return pids

    def close(self) -> None:
        if self.run is not None:
            self.run.close()


class SocketWatch:
    """The largest number of open feed connections per API key, sampled every 10 ms."""

    def __init__(self, feed: TimedFeed) -> None:
        self.feed = feed
        self.max_per_key: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="socket-watch", daemon=True)

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def now(self) -> Counter[str]:
        feed = self.feed
        with feed._cond:  # the feed's own registry of sessions (key, evicted)
            return Counter(c.key for c in feed._conns.values() if not c.evicted)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for key, n in self.now().items():
                if n > self.max_per_key[key]:
                    self.max_per_key[key] = n

    @property
    def peak(self) -> int:
        return max(self.max_per_key.values(), default=0)


@dataclass
class Scenario:
    name: str
    takeovers: list[float] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def line(self, tally_line: str, sockets: int) -> str:
        times = ""
        if self.takeovers:
            times = (f", takeover median {statistics.median(self.takeovers):.1f}s max {max(self.takeovers):.1f}s "
                     f"over {len(self.takeovers)} ({', '.join(f'{t:.1f}' for t in self.takeovers)})")
        text = f"[hosts:{self.name}] {tally_line.split('] ', 1)[-1]}, max sockets per key {sockets}{times}"
        print("\n" + text, flush=True)
        return text
