"""One shard's worker process: stream → parse → batch → commit.

``python -m shardctl.worker --config FILE --shard NAME``

The stop contract: on SIGTERM or SIGINT, or when the parent process goes
away, the worker stops reading, flushes and commits every tick it has
received, closes the socket with 1001 and exits 0 within the shard's
``stop_timeout`` (exit 1 if the database could not take the last rows in
time, saying how many). Exit 2 means the configuration is unusable.

When ``SHARDCTL_REPORT_FD`` names an inherited pipe, the worker writes JSON
lines to it for the supervisor: ``{"type": "ready"}`` once subscribed, and
``{"type": "stats", ...}`` every second (which doubles as its heartbeat).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import orjson

from shardctl import logs
from shardctl.batcher import Batcher
from shardctl.committer import Committer, LatencyLog
from shardctl.config import Config, ShardConfig, load_config
from shardctl.deadletters import DeadLetters, dead_letter_path
from shardctl.errors import EXIT_OK, EXIT_RUNTIME, ShardctlError
from shardctl.parse import FrameParser, Kind, Parsed
from shardctl.stream import StreamClient
from shardctl.writer import Writer

log = logging.getLogger("shardctl.worker")

REPORT_INTERVAL = 1.0
#: Rows that may wait for the database before reading pauses (memory bound).
MAX_PENDING_ROWS = 200_000
_POLL_SLICE = 0.2


class Reporter:
    """JSON lines to the supervisor's pipe; a broken pipe means the supervisor is gone."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self.broken = False

    def send(self, message: dict[str, Any]) -> None:
        if self._fd is None or self.broken:
            return
        try:
            os.write(self._fd, orjson.dumps(message) + b"\n")
        except OSError:
            self.broken = True


class Worker:
    """Runs one shard until asked to stop; ``run`` returns the process exit code."""

    def __init__(self, config: Config, shard: ShardConfig, dsn: str, *, report_fd: int | None = None) -> None:
        self.config = config
        self.shard = shard
        self.settings = shard.settings
        self.stop_requested = threading.Event()
        self._stop_reason = ""
        self._reporter = Reporter(report_fd)
        self._parser = FrameParser()
        self._batcher: Batcher[tuple] = Batcher(self.settings.batch_size, self.settings.flush_interval)
        latency_path = os.environ.get("SHARDCTL_LATENCY_LOG")
        #: Per-tick monotonic arrival times, recorded only for benchmarks.
        self._arrivals: list[float] | None = [] if latency_path else None
        self._committer = Committer(
            Writer(dsn, config.tables, shard.name),
            max_pending_rows=max(MAX_PENDING_ROWS, 2 * self.settings.batch_size),
            latency_log=LatencyLog(Path(latency_path)) if latency_path else None)
        self._dead = DeadLetters(dead_letter_path(config, shard.name), self.settings.dead_letter_log_interval)
        api_key = config.api_key(shard)
        if api_key is None:
            raise ShardctlError(f"no API key: export it in ${shard.api_key_env}")
        self._stream = StreamClient(config.source.url, api_key, shard.symbols, self.settings,
                                    api_key_env=shard.api_key_env, on_subscribed=self._subscribed)
        self._ready_sent = False
        #: Rows taken from the batcher that the full queue did not accept before a stop.
        self._held: list[tuple] = []
        self._held_since: float | None = None
        self.ticks_received = 0
        self.other_events = 0
        self._last_tick_at: float | None = None
        self._last_event_ts: int | None = None

    # ------------------------------------------------------------ lifecycle

    def request_stop(self, reason: str) -> None:
        """Ask the main loop to stop (safe from a signal handler)."""
        if not self.stop_requested.is_set():
            self._stop_reason = reason
            self.stop_requested.set()

    def run(self) -> int:
        """Stream until asked to stop, then flush; the exit code follows the module's stop contract."""
        parent = os.getppid()
        self._committer.start()
        log.info("worker started: %d symbol(s), batch_size %d, flush_interval %gs, source %s",
                 len(self.shard.symbols), self.settings.batch_size, self.settings.flush_interval,
                 self._stream.url)
        next_report = time.monotonic()
        try:
            while not self.stop_requested.is_set():
                now = time.monotonic()
                deadline = self._batcher.deadline()
                wait = _POLL_SLICE if deadline is None else min(_POLL_SLICE, max(0.0, deadline - now))
                frame = self._stream.poll(wait)
                now = time.monotonic()
                if frame is not None:
                    self._handle(frame, now)
                if self._batcher.due(now):
                    self._flush(now)
                if now >= next_report:
                    next_report = now + REPORT_INTERVAL
                    self._report()
                    self._dead.flush_log(now)
                    if os.getppid() != parent or self._reporter.broken:
                        self.request_stop("parent process went away")
        finally:
            code = self._shutdown()
        return code

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.stop_timeout
        log.info("stopping (%s): flushing %d pending row(s)", self._stop_reason or "error",
                 len(self._batcher) + self._committer.pending_rows)
        rows = self._held + self._batcher.take()
        if rows:
            self._committer.submit(rows, self._held_since or time.monotonic(), force=True)
        flushed = self._committer.drain(deadline - 0.5)
        lost = self._committer.pending_rows
        self._stream.close()
        self._committer.close()
        self._dead.close()
        self._report()
        if not flushed:
            log.error("stop deadline passed with %d row(s) not written (database unavailable: %s)",
                      lost, self._committer.stats.last_error)
            return EXIT_RUNTIME
        log.info("stopped: %d tick(s) received, %d row(s) written in %d batch(es)", self.ticks_received,
                 self._committer.stats.rows_written, self._committer.stats.batches)
        return EXIT_OK

    # ------------------------------------------------------------ per frame

    def _handle(self, frame: bytes, now: float) -> None:
        parsed: Parsed = self._parser.parse(frame)
        kind = parsed.kind
        if kind is Kind.PRICE:
            row = parsed.row
            assert row is not None
            self.ticks_received += 1
            self._last_tick_at = now
            if self._arrivals is not None:
                self._arrivals.append(now)
            if self._batcher.add(row, now):
                self._flush(now)
        elif kind is Kind.BAD:
            self._dead.add(frame, parsed.reason or "malformed", now)
        elif kind is Kind.STATUS:
            assert parsed.event is not None
            self._stream.handle_status(parsed.event)
        elif kind is Kind.OTHER:
            self.other_events += 1

    def _flush(self, now: float) -> None:
        first_at = self._batcher.first_at or now
        rows = self._batcher.take()
        arrivals = None
        if self._arrivals is not None:
            arrivals, self._arrivals = self._arrivals, []
        if rows:
            self._last_event_ts = int(rows[-1][0].timestamp())
            if not self._committer.submit(rows, first_at, stop=self.stop_requested, arrivals=arrivals):
                self._held.extend(rows)
                self._held_since = self._held_since or first_at

    def _subscribed(self) -> None:
        if not self._ready_sent:
            self._ready_sent = True
            self._reporter.send({"type": "ready"})

    def stats(self) -> dict[str, Any]:
        """The counters the supervisor shows and exports (cumulative for this process)."""
        commit = self._committer.stats
        return {
            "type": "stats",
            "ticks_received": self.ticks_received,
            "rows_written": commit.rows_written,
            "batches": commit.batches,
            "batch_seconds_sum": round(commit.batch_seconds_sum, 6),
            "batch_seconds_max": round(commit.batch_seconds_max, 6),
            "reconnects": self._stream.reconnects,
            "dead_letters": self._dead.count,
            "parse_errors": self._dead.count,
            "other_events": self.other_events,
            "failed_symbols": sorted(self._stream.failed_symbols),
            "pending_rows": len(self._batcher) + len(self._held) + self._committer.pending_rows,
            "connected": self._stream.connected,
            "subscribed": self._stream.subscribed,
            "last_tick_at": None if self._last_tick_at is None
            else time.time() - (time.monotonic() - self._last_tick_at),
            "last_event_ts": self._last_event_ts,
            "last_error": commit.last_error or (None if self._stream.connected else self._stream.last_error),
        }

    def _report(self) -> None:
        self._reporter.send(self.stats())


class _ShardLock:
    """An exclusive lock file per shard: two workers for one shard on this host would interleave batches."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise ShardctlError(f"another worker (pid {holder}) is already running this shard ({path})") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        self._file.close()


def _install_signals(worker: Worker) -> None:
    def handler(signum: int, _frame: object) -> None:
        worker.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardctl.worker", description="Run one shard in the foreground.")
    parser.add_argument("--config", required=True, help="path of the TOML config")
    parser.add_argument("--shard", required=True, help="name of the shard to run")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    args = parser.parse_args(argv)
    logs.configure(args.shard, level=args.log_level, fmt=args.log_format)
    report_fd = int(os.environ["SHARDCTL_REPORT_FD"]) if os.environ.get("SHARDCTL_REPORT_FD") else None
    try:
        config = load_config(args.config, require_env=True)
        shard = config.shard(args.shard)
        lock = _ShardLock(config.shard_dir(shard.name) / "worker.lock")
        try:
            return _run(config, shard, report_fd)
        finally:
            lock.release()
    except ShardctlError as exc:
        log.error("%s", exc)
        return exc.exit_code


def _run(config: Config, shard: ShardConfig, report_fd: int | None) -> int:
    from shardctl import database, schema

    dsn = database.resolve_dsn(config)
    if report_fd is None:
        # Run by hand: make sure the tables exist (the supervisor does this otherwise).
        conn = database.connect(dsn, application_name=f"shardctl-{shard.name}")
        try:
            schema.apply_schema(conn, config.tables)
        finally:
            conn.close()
    worker = Worker(config, shard, dsn, report_fd=report_fd)
    _install_signals(worker)
    return worker.run()


if __name__ == "__main__":
    raise SystemExit(main())
