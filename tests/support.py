"""Shared helpers for integration tests: condition waits, worker subprocesses, row queries."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, TypeVar

import psycopg2

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def query(dsn: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def row_count(dsn: str, table: str = "crypto_ticks") -> int:
    return query(dsn, f"SELECT count(*) FROM {table}")[0][0]


def stored_ticks(dsn: str) -> Counter:
    """Multiset of (symbol, unix seconds, price) in crypto_ticks."""
    rows = query(dsn, "SELECT symbol, extract(epoch FROM time)::bigint, price FROM crypto_ticks")
    return Counter((s, int(t), p) for s, t, p in rows)


def sent_ticks(events: list[dict]) -> Counter:
    """Multiset of (symbol, timestamp, price) of the feed's sent price events."""
    return Counter((e["symbol"], e["timestamp"], e["price"]) for e in events if e.get("event") == "price")


class WorkerProcess:
    """A real ``python -m shardctl.worker`` subprocess with its log captured to a file."""

    def __init__(self, config: Path, shard: str, log_path: Path, *, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shardctl.worker", "--config", str(config), "--shard", shard, *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) matches ``count`` times in the log; return the log."""
        regex = re.compile(pattern)

        def seen() -> str | None:
            text = self.log()
            if len(regex.findall(text)) >= count:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) before logging {pattern!r}:\n{text}")
            return None

        return wait_until(seen, timeout, what=f"log line {pattern!r}")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
