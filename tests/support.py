"""Shared helpers for integration tests: condition waits, worker subprocesses, row queries."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import psycopg2
import pytest

T = TypeVar("T")


def _poll(predicate: Callable[[], T], timeout: float, interval: float) -> tuple[bool, T]:
    """Call ``predicate`` every ``interval`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return bool(value), value
        time.sleep(interval)


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "",
               details: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail the test after ``timeout``,
    with ``details()`` (the last status, a log's tail) in the message."""
    ok, value = _poll(predicate, timeout, interval)
    if not ok:
        more = f"\n{details()}" if details is not None else ""
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}{more}")
    return value


def settle(predicate: Callable[[], T], timeout: float, interval: float = 0.2) -> T:
    """Like ``wait_until`` but returns the last value instead of failing: the caller asserts with the figures."""
    return _poll(predicate, timeout, interval)[1]


def holds_for(condition: Callable[[], object], seconds: float, what: str, interval: float = 0.2) -> None:
    """Check that ``condition`` stays truthy for ``seconds`` ("nothing happened"); fail at the first time it
    is not, saying ``what`` should have held and when it stopped."""
    started = time.monotonic()
    while True:
        value = condition()
        elapsed = time.monotonic() - started
        if not value:
            raise AssertionError(f"{what} held for {elapsed:.1f}s only, not {seconds:g}s (got {value!r})")
        if elapsed >= seconds:
            return
        time.sleep(min(interval, max(0.0, seconds - elapsed)))


def postgresql_only(flavour: str, what: str) -> None:
    """Skip the calling test on TimescaleDB, where ``what`` (a plain-PostgreSQL mechanism) does not exist."""
    if flavour != "postgresql":
        pytest.skip(f"{what} exists on plain PostgreSQL only")


def query(dsn: str, sql: str, params: tuple = (), *, utc: bool = False) -> list[tuple]:
    """The rows ``sql`` returns ([] for a statement without rows), read in a transaction rolled back after
    (``utc``: with the session's TimeZone set to UTC)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            if utc:
                cur.execute("SET TimeZone = 'UTC'")
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.rollback()
        conn.close()


def with_schema(dsn: str, tables: Any = None) -> str:
    """Apply shardctl's schema to ``dsn`` (default table names unless ``tables``, a TablesConfig); the flavour
    it took ("timescaledb" or "postgresql")."""
    from shardctl.config.model import TablesConfig
    from shardctl.db.connection import connect
    from shardctl.db.schema import apply_schema

    conn = connect(dsn)
    try:
        return apply_schema(conn, tables or TablesConfig())
    finally:
        conn.close()


def execute(dsn: str, statement: str, params: tuple = ()) -> None:
    """Run ``statement`` and commit."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
    finally:
        conn.close()


def chunk_placement(dsn: str, table: str = "crypto_ticks") -> list[tuple[str, bool]]:
    """TimescaleDB: (chunk, whether its range holds the tick's time) of every tick, by time and price."""
    return [(chunk, inside) for chunk, inside in query(dsn, f"""
        SELECT t.tableoid::regclass::text, c.range_start <= t.time AND t.time < c.range_end
        FROM {table} t JOIN timescaledb_information.chunks c
          ON format('%%I.%%I', c.chunk_schema, c.chunk_name)::regclass = t.tableoid
        ORDER BY t.time, t.price""")]


def row_count(dsn: str, table: str = "crypto_ticks") -> int:
    return query(dsn, f"SELECT count(*) FROM {table}")[0][0]


def stored_ticks(dsn: str) -> Counter:
    """Multiset of (symbol, unix seconds, price) in crypto_ticks."""
    rows = query(dsn, "SELECT symbol, extract(epoch FROM time)::bigint, price FROM crypto_ticks")
    return Counter((s, int(t), p) for s, t, p in rows)


def sent_ticks(events: list[dict]) -> Counter:
    """Multiset of (symbol, timestamp, price) of the feed's sent price events."""
    return Counter((e["symbol"], e["timestamp"], e["price"]) for e in events if e.get("event") == "price")


def write_config(directory: Path, url: str, dsn: str, shards: dict[str, dict[str, Any]], *,
                 defaults: dict[str, Any] | None = None, supervisor: dict[str, Any] | None = None,
                 state_dir: Path | None = None, source: dict[str, Any] | None = None,
                 with_supervisor: bool = True) -> Path:
    """The tests' one config builder: ``shards`` maps a name to its keys (``symbols``, ``api_key_env``,
    overrides); ``defaults``/``supervisor``/``source`` override the fast test settings below (no
    ``[supervisor]`` table without ``with_supervisor``: the caller writes its own)."""
    d = {"batch_size": 200, "flush_interval": "100ms", "reconnect_initial": "100ms", "reconnect_max": "1s",
         "watchdog_timeout": "20s", "stop_timeout": "10s", **(defaults or {})}
    s = {"start_grace": "3s", "heartbeat_timeout": "5s", "restart_initial": "100ms", "restart_max": "500ms",
         "healthy_after": "30s", "max_failures": 5, "failure_window": "60s", "stop_timeout": "15s",
         "metrics_port": 0, **(supervisor or {})}
    lines = [f"state_dir = {json.dumps(str(state_dir or directory / 'state'))}",
             "[database]", f"dsn = {json.dumps(dsn)}",
             "[source]", f"url = {json.dumps(url)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in (source or {}).items()]
    lines += ["[defaults]"] + [f"{k} = {json.dumps(v)}" for k, v in d.items()]
    if with_supervisor:
        lines += ["[supervisor]"] + [f"{k} = {json.dumps(v)}" for k, v in s.items()]
    for name, keys in shards.items():
        lines.append(f"[shards.{name}]")
        lines += [f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in keys.items()]
    path = directory / "shardctl.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class TmpfsMount:
    """``mount -t tmpfs -o size=SIZE,mode=0700 tmpfs DIR``; ``unmount()`` in teardown (lazily if busy)."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                                capture_output=True, text=True, timeout=30)
        self.error = None if result.returncode == 0 else (result.stderr.strip() or f"exit {result.returncode}")
        self.mounted = result.returncode == 0

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def unmount(self) -> None:
        if not self.mounted:
            return
        result = subprocess.run(["umount", str(self.path)], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, text=True, timeout=30)
        self.mounted = False


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` for a full disk (needs root, as in CI); skips the test elsewhere, saying why."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for a full disk")
    mount = TmpfsMount(path, size)
    if not mount.mounted:
        pytest.skip(f"cannot mount a tmpfs here: {mount.error}")
    try:
        yield path
    finally:
        mount.unmount()


class LoggedProcess:
    """The tests' one process wrapper: a real subprocess with its output in ``log_path``."""

    def __init__(self, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None, umask: int = -1,
                 pass_fds: tuple[int, ...] = (), append: bool = False) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab" if append else "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, umask=umask,
                                     pass_fds=pass_fds)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """SIGKILL it if it still runs; close the log."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class WorkerProcess(LoggedProcess):
    """A real ``python -m shardctl.worker`` subprocess with its log captured to a file."""

    def __init__(self, config: Path, shard: str, log_path: Path, *, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = (), report: bool = False) -> None:
        """Start the worker; with ``report`` it gets a report pipe (as under the supervisor): see ``reports``."""
        full_env = {**os.environ, **(env or {})}
        self._report_fd: int | None = None
        self._report_buf = b""
        self._reports: list[dict] = []
        pass_fds: tuple[int, ...] = ()
        if report:
            self._report_fd, write_fd = os.pipe()
            os.set_blocking(self._report_fd, False)
            full_env["SHARDCTL_REPORT_FD"] = str(write_fd)
            pass_fds = (write_fd,)
        super().__init__([sys.executable, "-m", "shardctl.worker", "--config", str(config), "--shard", shard,
                          *extra_args], log_path, env=full_env, pass_fds=pass_fds)
        for fd in pass_fds:
            os.close(fd)

    def reports(self) -> list[dict]:
        """Every JSON line the worker has written to its report pipe so far (ready and stats lines)."""
        while self._report_fd is not None:
            try:
                chunk = os.read(self._report_fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._report_buf += chunk
        *lines, self._report_buf = self._report_buf.split(b"\n")
        self._reports.extend(json.loads(line) for line in lines if line.strip())
        return self._reports

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

    def close(self) -> None:
        super().close()
        if self._report_fd is not None:
            os.close(self._report_fd)
            self._report_fd = None


def terminate_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process still running, wait up to 30 s for each, SIGKILL what is left (fixture teardown)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
