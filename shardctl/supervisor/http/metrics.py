"""``/metrics`` (Prometheus text) and ``/healthz`` on a tiny asyncio HTTP server.

The data comes from one callable returning the supervisor's ``ShardStatus``
list (what ``shardctl status --json`` prints); a custom prometheus
Collector turns them into families at scrape time, so nothing is copied
between scrapes. Counters are per-shard totals across worker restarts, so
they never go down while the supervisor lives.

``/healthz`` answers 200 ``ok`` when every shard that should run is
RUNNING, else 503 with one ``shard: STATE (reason)`` line per problem.
Stale symbols (``shardctl.worker.freshness``) are named after ``ok`` with
a ``stale:`` line per shard and the answer stays 200, unless the server is
built with ``fail_on_stale`` (``supervisor.healthz_fails_on_stale``): then
they are problems and the answer is 503.

Per symbol, three series and no histogram (1,500 symbols → 4,500 series):
``shardctl_symbol_last_tick_age_seconds`` and ``shardctl_symbol_delay_seconds``
with ``quantile`` 0.5 and 0.99; per shard, ``shardctl_stale_symbols``.

Every other path goes to an optional ``App`` (the supervisor mounts the
status page, ``shardctl.supervisor.http.statuspage``, there); requests are bounded
(MAX_HEAD, MAX_BODY, READ_TIMEOUT) and clients never see a traceback.
``/metrics`` and ``/healthz`` answer any Host header (probes and Prometheus
use pod IPs and service names); the status page checks Host and Origin itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Awaitable, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from shardctl.audit.classify import MinuteClass
from shardctl.errors import ShardctlError
from shardctl.report import ShardState, ShardStatus
from shardctl.supervisor.audits import LastAudit

log = logging.getLogger("shardctl.metrics")

Snapshot = Callable[[], Iterable[ShardStatus]]
Health = Callable[[], tuple[bool, list[str]]]
Reading = Callable[[ShardStatus], float]

#: (metric name without the shardctl_ prefix and _total suffix, help, reading)
COUNTERS: tuple[tuple[str, str, Reading], ...] = (
    ("ticks_received", "Price events received from the source", lambda s: s.counters.ticks_received),
    ("rows_written", "Tick rows committed to the database", lambda s: s.counters.rows_written),
    ("batches_written", "Batches committed to the database", lambda s: s.counters.batches),
    ("reconnects", "Websocket reconnects", lambda s: s.counters.reconnects),
    ("dead_letters", "Events dead-lettered (unparsable or rejected)", lambda s: s.counters.dead_letters),
    ("dead_letters_dropped", "Dead letters deleted at the dead_letter_max_bytes cap",
     lambda s: s.counters.dead_letters_dropped),
    ("restarts", "Worker processes started after the shard's first", lambda s: s.restarts),
    ("journal_dropped_frames", "Uncommitted frames dropped at the journal cap (recorded as gaps)",
     lambda s: s.counters.journal_dropped),
    ("database_rollbacks", "Times the database was found behind what the shard had committed (a failover to "
     "an asynchronous standby, a restore); the stretch is written again from the journal",
     lambda s: s.counters.database_rollbacks),
)
#: (gauge name without the shardctl_ prefix, help, reading) of the current worker
GAUGES: tuple[tuple[str, str, Reading], ...] = (
    ("journal_backlog_records", "Journal records not yet committed to the database",
     lambda s: s.worker.journal_backlog),
    ("journal_bytes", "Bytes in the shard's journal segments", lambda s: s.worker.journal_bytes),
    ("seconds_behind", "Age of the oldest journal record not yet committed", lambda s: s.worker.seconds_behind),
    ("journal_full", "1 while the journal is at its cap and reading has stopped", lambda s: s.worker.journal_full),
    ("disk_full", "1 while the journal's disk refuses writes and reading has stopped", lambda s: s.worker.disk_full),
    ("disk_free_bytes", "Bytes free on the filesystem of the shard's journal",
     lambda s: s.worker.disk_free_bytes or 0),
    ("batch_seconds_max", "Slowest batch of the current worker process", lambda s: s.worker.batch_seconds_max),
    ("pending_rows", "Rows received but not yet committed", lambda s: s.worker.pending_rows),
    ("connected", "1 while the worker's websocket is connected", lambda s: s.worker.connected),
    ("shard_up", "1 when the shard is RUNNING", lambda s: s.state is ShardState.RUNNING),
)


class ShardCollector(Collector):
    """Renders the supervisor's shard statuses (and the last scheduled audit) as Prometheus families."""

    def __init__(self, snapshot: Snapshot, clock: Callable[[], float] = time.time,
                 audit: Callable[[], LastAudit | None] = lambda: None) -> None:
        self.snapshot = snapshot
        self.clock = clock
        self.audit = audit

    def collect(self) -> Iterator[Metric]:
        shards = list(self.snapshot())
        now = self.clock()
        counters = [(CounterMetricFamily(f"shardctl_{name}", doc, labels=["shard"]), reading)
                    for name, doc, reading in COUNTERS]
        gauges = [(GaugeMetricFamily(f"shardctl_{name}", doc, labels=["shard"]), reading)
                  for name, doc, reading in GAUGES]
        latency = SummaryMetricFamily("shardctl_batch_seconds", "Time to write one batch (COPY + commit)",
                                      labels=["shard"])
        state = GaugeMetricFamily("shardctl_shard_state", "1 for the shard's current state", labels=["shard", "state"])
        tick_age = GaugeMetricFamily("shardctl_last_tick_age_seconds", "Seconds since the last tick was received",
                                     labels=["shard"])
        lag = GaugeMetricFamily("shardctl_event_lag_seconds",
                                "Now minus the last tick's own timestamp", labels=["shard"])
        hosts = GaugeMetricFamily("shardctl_shard_host", "Cluster mode: 1 per host that streams the shard "
                                  "(role=streaming) or stands by for it (role=standby), as this host last read it",
                                  labels=["shard", "host", "role"])
        epoch = GaugeMetricFamily("shardctl_lease_epoch", "Cluster mode: the epoch of the shard's lease",
                                  labels=["shard"])
        for shard in shards:
            name = shard.name
            for counter, reading in counters:
                counter.add_metric([name], float(reading(shard)))
            for gauge, reading in gauges:
                gauge.add_metric([name], float(reading(shard)))
            latency.add_metric([name], count_value=shard.counters.batches,
                               sum_value=shard.counters.batch_seconds_sum)
            for candidate in ShardState:
                state.add_metric([name, candidate.value], 1.0 if shard.state is candidate else 0.0)
            if shard.worker.last_tick_at is not None:
                tick_age.add_metric([name], max(0.0, now - shard.worker.last_tick_at))
            if shard.worker.last_event_ts is not None:
                lag.add_metric([name], max(0.0, now - shard.worker.last_event_ts))
            if shard.lease_owner:
                hosts.add_metric([name, shard.lease_owner, "streaming"], 1.0)
            for standby in shard.standby_hosts:
                hosts.add_metric([name, standby, "standby"], 1.0)
            if shard.lease_epoch is not None:
                epoch.add_metric([name], float(shard.lease_epoch))
        yield from (family for family, _ in counters)
        yield from (family for family, _ in gauges)
        yield from (latency, state, tick_age, lag)
        if any(s.host_id for s in shards):
            yield from (hosts, epoch)
        yield from symbol_families(shards, now)
        yield from audit_families(self.audit())


def audit_families(last: LastAudit | None) -> tuple[Metric, ...]:
    """The last scheduled audit (``[audit]``): minutes per class, when it ran, how long, whether it failed."""
    if last is None:
        return ()
    minutes = GaugeMetricFamily("shardctl_audit_minutes", "The last audit's symbol-minutes per class",
                                labels=["class"])
    symbols = GaugeMetricFamily("shardctl_audit_unexplained_symbols", "Symbols with an unexplained minute in "
                                "the last audit")
    finished = GaugeMetricFamily("shardctl_audit_last_run_timestamp_seconds", "When the last audit finished")
    seconds = GaugeMetricFamily("shardctl_audit_duration_seconds", "How long the last audit took")
    failed = GaugeMetricFamily("shardctl_audit_failed", "1 when the last audit failed (see the log)")
    finished.add_metric([], last.finished_at)
    failed.add_metric([], 0.0 if last.report is not None else 1.0)
    if last.report is None:
        return finished, failed
    for cls, n in last.report.totals.items():
        minutes.add_metric([cls.value], float(n))
    symbols.add_metric([], float(sum(1 for a in last.report.symbols if a.count(MinuteClass.UNEXPLAINED))))
    seconds.add_metric([], last.report.seconds)
    return minutes, symbols, finished, seconds, failed


#: Stale symbols named per shard in /healthz; more are counted.
HEALTHZ_MAX_NAMES = 20


def symbol_families(shards: list[ShardStatus], now: float) -> tuple[Metric, ...]:
    """Per-symbol freshness gauges (last tick age, delay p50/p99) and the per-shard stale count."""
    age = GaugeMetricFamily("shardctl_symbol_last_tick_age_seconds", "Seconds since the symbol's last tick",
                            labels=["shard", "symbol"])
    delay = GaugeMetricFamily("shardctl_symbol_delay_seconds", "Event timestamp to receipt, over the symbol's "
                              "last ticks (whole-second timestamps: ±1 s)", labels=["shard", "symbol", "quantile"])
    stale = GaugeMetricFamily("shardctl_stale_symbols", "Symbols whose market is not closed and that have not "
                              "ticked for stale_after", labels=["shard"])
    rate = GaugeMetricFamily("shardctl_symbol_ticks_per_minute", "The symbol's tick rate: recent, and its own "
                             "normal (exponentially weighted over slow_window)", labels=["shard", "symbol", "window"])
    slow = GaugeMetricFamily("shardctl_slow_symbols", "Symbols whose market is not closed and whose tick rate fell "
                             "below slow_below of their normal rate", labels=["shard"])
    for shard in shards:
        records = shard.worker.freshness or ()
        for r in records:
            if r.rate is not None and r.last_tick_at is not None:
                rate.add_metric([shard.name, r.symbol, "recent"], r.rate)
            if r.normal_rate is not None and r.last_tick_at is not None:
                rate.add_metric([shard.name, r.symbol, "normal"], r.normal_rate)
            if r.last_tick_at is not None:
                age.add_metric([shard.name, r.symbol], max(0.0, now - r.last_tick_at))
            if r.delay_p50 is not None and r.delay_p99 is not None:
                delay.add_metric([shard.name, r.symbol, "0.5"], r.delay_p50)
                delay.add_metric([shard.name, r.symbol, "0.99"], r.delay_p99)
        stale.add_metric([shard.name], float(sum(r.stale for r in records)))
        slow.add_metric([shard.name], float(sum(r.slow for r in records)))
    return age, delay, stale, rate, slow


def _quiet(last_tick_at: float | None, now: float) -> str:
    return "no tick yet" if last_tick_at is None else f"last tick {max(0.0, now - last_tick_at):.0f}s ago"


def slow_notes(shards: Iterable[ShardStatus]) -> list[str]:
    """One ``slow: shard: SYM (1.2/min, normal 60/min), ...`` line per shard with slow symbols (at most 20 named)."""
    notes = []
    for s in shards:
        slow = [r for r in s.worker.freshness or () if r.slow]
        if not slow:
            continue
        named = ", ".join(f"{r.symbol} ({r.rate:.3g}/min, normal {r.normal_rate:.3g}/min)"
                          for r in slow[:HEALTHZ_MAX_NAMES] if r.rate is not None and r.normal_rate is not None)
        more = f" and {len(slow) - HEALTHZ_MAX_NAMES} more" if len(slow) > HEALTHZ_MAX_NAMES else ""
        notes.append(f"slow: {s.name}: {named}{more}")
    return notes


def stale_notes(shards: Iterable[ShardStatus], now: float) -> list[str]:
    """One ``stale: shard: SYM (last tick 95s ago), ...`` line per shard with stale symbols (at most 20 named)."""
    notes = []
    for s in shards:
        stale = [r for r in s.worker.freshness or () if r.stale]
        if not stale:
            continue
        named = ", ".join(f"{r.symbol} ({_quiet(r.last_tick_at, now)})" for r in stale[:HEALTHZ_MAX_NAMES])
        more = f" and {len(stale) - HEALTHZ_MAX_NAMES} more" if len(stale) > HEALTHZ_MAX_NAMES else ""
        notes.append(f"stale: {s.name}: {named}{more} (stale_after {s.worker.stale_after:g}s)")
    return notes


def render(snapshot: Snapshot, audit: Callable[[], LastAudit | None] = lambda: None) -> bytes:
    """The Prometheus text exposition for ``snapshot`` (and the last scheduled audit)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShardCollector(snapshot, audit=audit))
    return generate_latest(registry)


def health(shards: Iterable[ShardStatus]) -> tuple[bool, list[str]]:
    """(healthy, problems): a shard that should run but is not RUNNING, or whose disk is full, is a problem.

    Cluster mode: STANDBY is healthy (another host streams the shard; this one is ready to take it).
    """
    problems = []
    for s in shards:
        if s.wanted and s.state not in (ShardState.RUNNING, ShardState.STANDBY):
            problems.append(f"{s.name}: {s.state} ({s.reason or 'no reason'})")
        elif s.worker.disk_full:
            problems.append(f"{s.name}: {s.worker.last_error or 'disk full'}")
    return (not problems, problems)


@dataclass(frozen=True)
class HttpRequest:
    """One parsed request: header names lower-cased, ``query`` undecoded, ``body`` at most MAX_BODY bytes."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    peer: str


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


#: Serves what /metrics and /healthz do not: an HttpResponse, or None for 404 (the status page).
App = Callable[[HttpRequest], Awaitable[HttpResponse | None]]
#: Request line + headers, and body, limits; past them the answer is 431 / 413 and the connection closes.
MAX_HEAD = 16 * 1024
MAX_BODY = 8 * 1024
READ_TIMEOUT = 5.0


class MetricsServer:
    """Serves GET /metrics and GET /healthz on host:port (port 0 picks a free one; see ``.port``).

    Any other path goes to ``app`` when given (the status page); without one,
    or when it answers None, the answer is 404. A handler error is logged and
    answered 500 with no detail; a malformed or oversized request gets a 4xx
    and a closed connection.
    """

    def __init__(self, host: str, port: int, snapshot: Snapshot, app: App | None = None, *,
                 fail_on_stale: Callable[[], bool] = lambda: False,
                 fail_on_slow: Callable[[], bool] = lambda: False,
                 audit: Callable[[], LastAudit | None] = lambda: None) -> None:
        self.audit = audit
        #: Asked at every /healthz (a reload may change supervisor.healthz_fails_on_stale / _on_slow).
        self.fail_on_stale = fail_on_stale
        self.fail_on_slow = fail_on_slow
        self.host = host
        self.port = port
        self.snapshot = snapshot
        self.app = app
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen, or raise ShardctlError with one line when the port is taken."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True,
                                                      limit=MAX_HEAD)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ShardctlError(f"metrics port {self.host}:{self.port} is already in use; choose another "
                                    "supervisor.metrics_port (0 turns metrics off)") from None
            raise ShardctlError(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics%s", self.host, self.port,
                 f", status page on http://{self.host}:{self.port}/" if self.app is not None else "")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader, writer)
            response = await self._dispatch(request)
        except _Refused as refused:
            response = HttpResponse(refused.status, refused.message.encode() + b"\n")
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except Exception:  # never let a scrape hurt the supervisor
            log.exception("metrics request failed")
            response = HttpResponse(500, b"internal error\n")
        reason = HTTPStatus(response.status).phrase
        extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers)
        writer.write(f"HTTP/1.1 {response.status} {reason}\r\nContent-Type: {response.content_type}\r\n"
                     f"Content-Length: {len(response.body)}\r\n{extra}Connection: close\r\n\r\n".encode()
                     + response.body)
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def _dispatch(self, request: HttpRequest) -> HttpResponse:
        if request.path in ("/metrics", "/healthz"):
            status, ctype, body = self._route(request.method, request.path)
            return HttpResponse(status, body, ctype, (("Allow", "GET"),) if status == 405 else ())
        response = await self.app(request) if self.app is not None else None
        return response or HttpResponse(404, b"try /metrics or /healthz\n")

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"only GET\n"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", render(self.snapshot, self.audit)
        shards = list(self.snapshot())
        ok, problems = health(shards)
        notes = stale_notes(shards, time.time())
        if notes and self.fail_on_stale():
            ok, problems = False, problems + notes
        slow = slow_notes(shards)
        if slow and self.fail_on_slow():
            ok, problems = False, problems + slow
        notes += slow
        if ok:
            return 200, "text/plain", ("\n".join(["ok", *notes]) + "\n").encode()
        return 503, "text/plain", ("\n".join(problems) + "\n").encode()


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> HttpRequest:
    """Read one request within READ_TIMEOUT; _Refused for one that is malformed or too large."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    except asyncio.LimitOverrunError:
        raise _Refused(431, "request header too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _Refused(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise _Refused(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _Refused(411, "send a Content-Length, not Transfer-Encoding")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise _Refused(400, "bad Content-Length")
    if int(length_text) > MAX_BODY:
        raise _Refused(413, f"request body larger than {MAX_BODY} bytes")
    body = await asyncio.wait_for(reader.readexactly(int(length_text)), READ_TIMEOUT) if int(length_text) else b""
    path, _, query = parts[1].partition("?")
    peer = writer.get_extra_info("peername")
    return HttpRequest(parts[0], path, query, headers, body, str(peer[0]) if peer else "?")
