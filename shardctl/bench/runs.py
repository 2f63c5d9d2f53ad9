"""One benchmark run each: shardctl workers, the tutorial baseline, and the two limits.

Every run gets a fresh database on the benchmark's server (created, given
shardctl's schema, dropped afterwards) and its own ``shardctl feed``
subprocess, so runs never see each other's rows, bloat or sockets. A run's
rows are checked in the database afterwards (``bench_data.compare``); a run
whose check fails has ``ok=False`` and no ``rows_per_s``, whatever it measured.

Throughput is rows committed over the time from the first tick received to
the last commit ("first tick → last commit"), for every system alike.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import psycopg2
import psycopg2.extensions
from psycopg2.extensions import connection as Connection

from shardctl.bench import data as bench_data
from shardctl.bench.monitor import (
    CommitWatcher,
    ProcMonitor,
    Usage,
    percentiles,
    read_latencies,
)
from shardctl.bench.proc import FeedProcess, WorkerProcess, write_config
from shardctl.config.model import TablesConfig
from shardctl.errors import ShardctlError

_POLL = 0.005


class BenchError(ShardctlError):
    """A benchmark run could not be carried out (not: a run that measured badly)."""


@dataclass
class RunResult:
    """One measured run; ``rows_per_s`` is None whenever ``ok`` is False (the database check failed)."""

    system: str                 #: shardctl | baseline | copy-limit | socket-limit
    kind: str                   #: throughput | latency | soak | profile
    batch_size: int | None
    shards: int
    rate: float | None          #: ticks/s asked of the feed; None = as fast as read
    sent: int
    stored: int
    ok: bool
    check: str
    rows_per_s: float | None = None
    seconds: float | None = None
    commits: int | None = None
    latency_ms: dict[str, float] | None = None
    process_cpu: float | None = None
    postgres_cpu: float | None = None
    peak_rss_mb: float | None = None
    dropped: int | None = None
    notes: str = ""
    rss_series: list[tuple[float, float]] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        batch = f" batch {self.batch_size}" if self.batch_size else ""
        return f"{self.system} {self.kind}{batch}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchContext:
    """What every run needs: the server, a scratch directory, the replay data and a progress sink."""

    admin_dsn: str
    pg_pid: int | None
    workdir: Path
    replay: Path
    expected: bench_data.Expected
    flush_interval: float = 1.0
    stall_timeout: float = 15.0
    progress: Callable[[str], None] = lambda text: None
    #: "postgresql" or "timescaledb": what ``run_database`` found on the server (set by its first run).
    flavour: str = "postgresql"
    #: TimescaleDB: workers and the COPY limit write with ``timescaledb.enable_direct_compress_copy`` on.
    direct_compress: bool = False
    _serial: int = 0

    def next_name(self, label: str) -> str:
        self._serial += 1
        return f"{self._serial:02d}-{label}"


def _finish(result: RunResult, check: bench_data.Check, span: float | None, *, lossy: bool = False) -> RunResult:
    """Attach the database check; a failed check withholds the throughput."""
    result.ok, result.check, result.stored = check.ok, check.summary(), check.stored
    if lossy and check.ok:
        result.dropped = result.sent - check.stored
        if result.dropped:
            result.check = f"lossy: {result.dropped} of {result.sent} ticks never stored"
    result.seconds = span
    if not check.ok:
        result.rows_per_s = None
    elif span and result.kind in ("throughput", "profile") and check.stored:
        result.rows_per_s = check.stored / span
    return result


def _apply_usage(result: RunResult, usage: Usage) -> None:
    result.process_cpu, result.postgres_cpu = usage.process_cpu, usage.postgres_cpu
    result.peak_rss_mb = usage.peak_rss_mb


@contextmanager
def run_database(ctx: BenchContext, name: str) -> Iterator[str]:
    """A fresh database with shardctl's schema for one run; dropped (WITH FORCE) afterwards."""
    from shardctl.db import schema

    dbname = "shardctl_bench_" + "".join(c if c.isalnum() else "_" for c in name)
    admin = psycopg2.connect(ctx.admin_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{dbname}"')
    except psycopg2.Error as exc:
        admin.close()
        raise BenchError(f"cannot create a benchmark database on the server: {str(exc).strip().splitlines()[0]}; "
                         "the benchmark needs CREATEDB rights") from None
    dsn = psycopg2.extensions.make_dsn(ctx.admin_dsn, dbname=dbname)
    try:
        conn = psycopg2.connect(dsn)
        try:
            ctx.flavour = schema.apply_schema(conn, TablesConfig())
        finally:
            conn.close()
        yield dsn
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()


def _check_db(dsn: str, expected: bench_data.Expected, *, lossy_ok: bool = False) -> bench_data.Check:
    conn = psycopg2.connect(dsn)
    try:
        return bench_data.compare(expected, bench_data.stored(conn), lossy_ok=lossy_ok)
    finally:
        conn.close()


def _feed_args(ctx: BenchContext, kind: str, ticks: int, rate: float | None, conns: int,
               sent_log: Path) -> list[str]:
    if kind in ("throughput", "profile"):
        return ["--replay", str(ctx.replay), "--fast"]
    assert rate
    return ["--rate", f"{rate / conns:g}", "--count", str(ticks // conns), "--seed", "7",
            "--sent-log", str(sent_log)]


def run_shardctl(ctx: BenchContext, kind: str, batch_size: int, shards: int, ticks: int, rate: float | None, *,
                 prepare_db: Callable[[str], None] | None = None, profile: Path | None = None) -> RunResult:
    """Run ``shards`` real worker processes against one feed; measure, stop them, check the database.

    ``kind`` "throughput"/"profile": the replay file as fast as they read
    (``profile``: the worker runs under ``shardctl.bench.profile``, writing
    ``profile``.*.prof); "latency"/"soak": ``ticks`` simulated ticks at
    ``rate`` ticks/s in total. ``prepare_db(dsn)`` runs after the schema.
    """
    name = ctx.next_name(f"{kind}-b{batch_size}-k{shards}")
    groups = bench_data.shard_symbols(shards)
    result = RunResult("shardctl", kind, batch_size, shards, None if kind in ("throughput", "profile") else rate,
                       0, 0, False, "")
    with run_database(ctx, name) as dsn:
        if prepare_db is not None:
            prepare_db(dsn)
        sent_log = ctx.workdir / f"{name}.sent.jsonl"
        with FeedProcess(ctx.workdir / f"{name}.feed.log",
                         _feed_args(ctx, kind, ticks, rate, shards, sent_log)) as feed:
            config = write_config(ctx.workdir / f"{name}.toml", feed.url, groups, batch_size=batch_size,
                                  flush_interval=ctx.flush_interval, state_dir=ctx.workdir / f"{name}.state",
                                  direct_compress=ctx.direct_compress)
            lat_paths = [ctx.workdir / f"{name}.s{i}.lat" for i in range(shards)]
            workers = [WorkerProcess(config, f"s{i}", dsn, lat_paths[i], ctx.workdir / f"{name}.s{i}.log",
                                     profile=None if profile is None else Path(f"{profile}.s{i}"))
                       for i in range(shards)]
            try:
                target = ctx.expected.total if kind in ("throughput", "profile") else (ticks // shards) * shards
                watcher = CommitWatcher(lat_paths)
                monitor = ProcMonitor([w.pid for w in workers], ctx.pg_pid,
                                      interval=1.0 if kind == "soak" else 0.25).start()
                notes = _wait_rows(ctx, result.label, watcher, workers, target)
                usage = monitor.stop()
            finally:
                codes = [w.stop() for w in workers]
        sent = ctx.expected if kind in ("throughput", "profile") else bench_data.expected_from_sent_log(sent_log)
        result.sent = sent.total
        check = _check_db(dsn, sent)
    if any(codes):
        notes.append(f"worker exit codes {codes}")
        check = bench_data.Check(False, check.expected, check.stored, [f"worker exit codes {codes}"] + check.problems)
    watcher.poll()
    span = watcher.span()
    _apply_usage(result, usage)
    result.commits = sum(w.report.counters.batches for w in workers)
    result.latency_ms = _ms(percentiles(watcher.latencies()))
    result.notes = "; ".join(notes)
    if kind == "soak":
        result.rss_series = usage.rss_series
    return _finish(result, check, None if span is None else span[1] - span[0])


def _ms(p: dict[str, float] | None) -> dict[str, float] | None:
    return None if p is None else {k: round(v * 1000.0, 2) for k, v in p.items()}


def _wait_rows(ctx: BenchContext, label: str, watcher: CommitWatcher, workers: list[WorkerProcess],
               target: int) -> list[str]:
    """Poll until ``target`` rows are committed, a worker dies, or nothing commits for ``stall_timeout``."""
    last_rows, last_change = 0, time.monotonic()
    next_show = 0.0
    while True:
        rows = watcher.poll()
        now = time.monotonic()
        if rows != last_rows:
            last_rows, last_change = rows, now
        if now >= next_show:
            next_show = now + 0.5
            ctx.progress(f"{label}: {rows:,}/{target:,} rows committed")
        if rows >= target:
            return []
        dead = [w for w in workers if w.poll() is not None]
        if dead:
            return [f"worker {dead[0].shard} exited early (code {dead[0].poll()}): {dead[0].last_log_line()}"]
        if now - last_change > ctx.stall_timeout:
            return [f"stalled: no commit for {ctx.stall_timeout:g}s at {rows} of {target} rows"]
        time.sleep(_POLL)


def run_baseline(ctx: BenchContext, kind: str, ticks: int, rate: float | None) -> RunResult:
    """The tutorial's ingester (``shardctl.bench.baseline``) in its own process, same feed, fresh database."""
    name = ctx.next_name(f"baseline-{kind}")
    result = RunResult("baseline", kind, 100, 1, None if kind == "throughput" else rate, 0, 0, False, "")
    out = ctx.workdir / f"{name}.json"
    with run_database(ctx, name) as dsn:
        sent_log = ctx.workdir / f"{name}.sent.jsonl"
        with FeedProcess(ctx.workdir / f"{name}.feed.log", _feed_args(ctx, kind, ticks, rate, 1, sent_log)) as feed:
            target = ctx.expected.total if kind == "throughput" else ticks
            cmd = [sys.executable, "-m", "shardctl.bench.baseline", "--url", feed.url, "--dsn", dsn,
                   "--symbols", ",".join(bench_data.BENCH_SYMBOLS), "--expect", str(target), "--out", str(out),
                   "--idle", str(min(ctx.stall_timeout, 5.0))]
            with open(ctx.workdir / f"{name}.log", "wb") as log_file:
                proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
            monitor = ProcMonitor([proc.pid], ctx.pg_pid).start()
            deadline = time.monotonic() + max(120.0, 4 * target / 1000.0)
            while proc.poll() is None and time.monotonic() < deadline:
                ctx.progress(f"{result.label}: running (tutorial ingester)")
                time.sleep(0.2)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            usage = monitor.stop()
        sent = ctx.expected if kind == "throughput" else bench_data.expected_from_sent_log(sent_log)
        result.sent = sent.total
        check = _check_db(dsn, sent, lossy_ok=True)
    try:
        summary = orjson.loads(out.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        raise BenchError(f"the baseline process wrote no summary; see {ctx.workdir / (name + '.log')}") from None
    _apply_usage(result, usage)
    if summary.get("cpu_seconds") is not None and usage.wall:
        result.process_cpu = 100.0 * summary["cpu_seconds"] / usage.wall
    result.peak_rss_mb = summary.get("peak_rss_mb")
    result.commits = summary["commits"]
    result.latency_ms = _ms(percentiles(read_latencies(Path(str(out) + ".lat"))))
    result.notes = (f"queue-full drops {summary['queue_dropped']}, unwritten tail {summary['unwritten_tail']}, "
                    f"insert errors {summary['insert_errors']}; ended: {summary['ended']}")
    span = None
    if summary.get("first_arrival") is not None and summary.get("last_commit") is not None:
        span = summary["last_commit"] - summary["first_arrival"]
    return _finish(result, check, span, lossy=True)


def prepare_copy(conn: Connection, ctx: BenchContext, rows: list[tuple[Any, ...]]) -> None:
    """Before COPYing ``rows`` as the writer would: day partitions (PostgreSQL) or direct compress (TimescaleDB)."""
    from shardctl.db.schema import ensure_partition
    from shardctl.db.writer import DIRECT_COMPRESS_GUC, utc_day

    if ctx.flavour == "postgresql":
        for day in sorted({utc_day(r[0]) for r in rows}):
            ensure_partition(conn, TablesConfig(), day)
    elif ctx.direct_compress:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config(%s, 'on', false)", (DIRECT_COMPRESS_GUC,))
        conn.commit()


def run_copy_limit(ctx: BenchContext, batch_size: int) -> RunResult:
    """The replay rows, pre-encoded by the writer's own pgcopy encoder, COPY'd in ``batch_size`` transactions.

    Only the COPY and COMMIT calls are timed (one connection): what the
    database takes, without websocket, parsing or encoding.
    """
    from shardctl.db.writer import TickCopyManager
    from shardctl.rows import COLUMNS

    name = ctx.next_name(f"copy-limit-b{batch_size}")
    result = RunResult("copy-limit", "throughput", batch_size, 1, None, ctx.expected.total, 0, False, "")
    rows = bench_data.replay_rows(ctx.replay)
    with run_database(ctx, name) as dsn:
        conn = psycopg2.connect(dsn)
        try:
            prepare_copy(conn, ctx, rows)
            manager = TickCopyManager(conn, "crypto_ticks", COLUMNS)
            ctx.progress(f"{result.label}: encoding {len(rows):,} rows")
            buffers = []
            for start in range(0, len(rows), batch_size):
                buf = io.BytesIO()
                manager.writestream(rows[start:start + batch_size], buf)
                buffers.append(buf.getvalue())
            del rows
            ctx.progress(f"{result.label}: COPY {len(buffers)} batch(es)")
            monitor = ProcMonitor([os.getpid()], ctx.pg_pid).start()
            started = time.perf_counter()
            for data in buffers:
                manager.copystream(io.BytesIO(data))
                conn.commit()
            span = time.perf_counter() - started
            usage = monitor.stop()
        finally:
            conn.close()
        check = _check_db(dsn, ctx.expected)
    _apply_usage(result, usage)
    result.peak_rss_mb = None  # the bench process itself: not meaningful
    result.commits = len(buffers)
    result.notes = "COPY (FORMAT binary) + COMMIT only; process CPU is the bench process (client side)"
    return _finish(result, check, span)


def run_socket_limit(ctx: BenchContext, *, reader: str = "framereader") -> RunResult:
    """How fast one websocket connection delivers the replay: receive only, no parsing.

    ``reader`` "framereader": shardctl's buffered ``FrameReader``;
    "websocket-client": websocket-client's ``recv()`` with UTF-8 validation off.
    """
    import websocket

    from shardctl.twelvedata.frames import FrameReader

    name = ctx.next_name(f"socket-limit-{reader}")
    total = ctx.expected.total
    result = RunResult("socket-limit", "throughput", None, 1, None, total, 0, False, "", notes=reader)
    with FeedProcess(ctx.workdir / f"{name}.feed.log", ["--replay", str(ctx.replay), "--fast"]) as feed:
        ws = websocket.create_connection(f"{feed.url}?apikey=bench", timeout=30, skip_utf8_validation=True)
        try:
            ws.send(orjson.dumps({"action": "subscribe",
                                  "params": {"symbols": ",".join(bench_data.BENCH_SYMBOLS)}}).decode())
            assert ws.sock is not None
            frames = FrameReader(ws.sock, ws.pong)
            monitor = ProcMonitor([os.getpid()], None).start()
            count, first, last = 0, 0.0, 0.0
            while count < total:
                burst = frames.read_burst() if reader == "framereader" else [ws.recv()]
                prices = sum(1 for data in burst if data[:16] in (b'{"event":"price"', '{"event":"price"'))
                if prices:
                    last = time.perf_counter()
                    if not count:
                        first = last
                    count += prices
            usage = monitor.stop()
        finally:
            ws.abort()
    _apply_usage(result, usage)
    result.peak_rss_mb = None
    span = last - first
    return _finish(result, bench_data.Check(True, total, count, []), span if count > 1 else None)
