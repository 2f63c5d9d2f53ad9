"""``/metrics`` (Prometheus text) and ``/healthz`` on a tiny asyncio HTTP server.

The data comes from one callable returning the supervisor's per-shard status
dicts (the same ones ``shardctl status --json`` prints); a custom prometheus
Collector turns them into families at scrape time, so nothing is copied
between scrapes. Counters are per-shard totals across worker restarts, so
they never go down while the supervisor lives.

``/healthz`` answers 200 ``ok`` when every shard that should run is
RUNNING, else 503 with one ``shard: STATE (reason)`` line per problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from shardctl.errors import ShardctlError
from shardctl.states import ShardState

log = logging.getLogger("shardctl.metrics")

Snapshot = Callable[[], Iterable[Mapping[str, Any]]]
Health = Callable[[], tuple[bool, list[str]]]

#: status key → (metric name without the shardctl_ prefix and _total suffix, help)
COUNTERS = {
    "ticks_received": ("ticks_received", "Price events received from the source"),
    "rows_written": ("rows_written", "Tick rows committed to the database"),
    "batches": ("batches_written", "Batches committed to the database"),
    "reconnects": ("reconnects", "Websocket reconnects"),
    "dead_letters": ("dead_letters", "Events dead-lettered (unparsable or rejected)"),
    "parse_errors": ("parse_errors", "Frames that failed to parse"),
    "restarts": ("restarts", "Worker processes started after the shard's first"),
    "journal_dropped": ("journal_dropped_frames", "Uncommitted frames dropped at the journal cap (recorded as gaps)"),
}
#: status key → (gauge name without the shardctl_ prefix, help)
JOURNAL_GAUGES = {
    "journal_backlog": ("journal_backlog_records", "Journal records not yet committed to the database"),
    "journal_bytes": ("journal_bytes", "Bytes in the shard's journal segments"),
    "seconds_behind": ("seconds_behind", "Age of the oldest journal record not yet committed"),
    "journal_full": ("journal_full", "1 while the journal is at its cap and reading has stopped"),
}


class ShardCollector(Collector):
    """Renders the supervisor's shard status dicts as Prometheus families."""

    def __init__(self, snapshot: Snapshot, clock: Callable[[], float] = time.time) -> None:
        self.snapshot = snapshot
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        shards = list(self.snapshot())
        now = self.clock()
        counters = {key: CounterMetricFamily(f"shardctl_{name}", doc, labels=["shard"])
                    for key, (name, doc) in COUNTERS.items()}
        latency = SummaryMetricFamily("shardctl_batch_seconds", "Time to write one batch (COPY + commit)",
                                      labels=["shard"])
        batch_max = GaugeMetricFamily("shardctl_batch_seconds_max",
                                      "Slowest batch of the current worker process", labels=["shard"])
        state = GaugeMetricFamily("shardctl_shard_state", "1 for the shard's current state", labels=["shard", "state"])
        up = GaugeMetricFamily("shardctl_shard_up", "1 when the shard is RUNNING", labels=["shard"])
        pending = GaugeMetricFamily("shardctl_pending_rows", "Rows received but not yet committed",
                                    labels=["shard"])
        connected = GaugeMetricFamily("shardctl_connected", "1 while the worker's websocket is connected",
                                      labels=["shard"])
        tick_age = GaugeMetricFamily("shardctl_last_tick_age_seconds", "Seconds since the last tick was received",
                                     labels=["shard"])
        lag = GaugeMetricFamily("shardctl_event_lag_seconds",
                                "Now minus the last tick's own timestamp", labels=["shard"])
        gauges = {key: GaugeMetricFamily(f"shardctl_{name}", doc, labels=["shard"])
                  for key, (name, doc) in JOURNAL_GAUGES.items()}
        for shard in shards:
            name = str(shard["name"])
            for key, family in counters.items():
                family.add_metric([name], float(shard.get(key) or 0))
            for key, gauge in gauges.items():
                gauge.add_metric([name], float(shard.get(key) or 0))
            latency.add_metric([name], count_value=int(shard.get("batches") or 0),
                               sum_value=float(shard.get("batch_seconds_sum") or 0.0))
            batch_max.add_metric([name], float(shard.get("batch_seconds_max") or 0.0))
            for candidate in ShardState:
                state.add_metric([name, candidate.value], 1.0 if shard.get("state") == candidate.value else 0.0)
            up.add_metric([name], 1.0 if shard.get("state") == ShardState.RUNNING.value else 0.0)
            pending.add_metric([name], float(shard.get("pending_rows") or 0))
            connected.add_metric([name], 1.0 if shard.get("connected") else 0.0)
            if shard.get("last_tick_at") is not None:
                tick_age.add_metric([name], max(0.0, now - float(shard["last_tick_at"])))
            if shard.get("last_event_ts") is not None:
                lag.add_metric([name], max(0.0, now - float(shard["last_event_ts"])))
        yield from counters.values()
        yield from gauges.values()
        yield from (latency, batch_max, state, up, pending, connected, tick_age, lag)


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text exposition for ``snapshot``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShardCollector(snapshot))
    return generate_latest(registry)


def health(shards: Iterable[Mapping[str, Any]]) -> tuple[bool, list[str]]:
    """(healthy, problems): a shard that should run but is not RUNNING is a problem."""
    problems = [f"{s['name']}: {s['state']} ({s.get('reason') or 'no reason'})"
                for s in shards if s.get("wanted") and s.get("state") != ShardState.RUNNING.value]
    return (not problems, problems)


class MetricsServer:
    """Serves GET /metrics and GET /healthz on host:port (port 0 picks a free one; see ``.port``)."""

    def __init__(self, host: str, port: int, snapshot: Snapshot) -> None:
        self.host = host
        self.port = port
        self.snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen, or raise ShardctlError with one line when the port is taken."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ShardctlError(f"metrics port {self.host}:{self.port} is already in use; choose another "
                                    "supervisor.metrics_port (0 turns metrics off)") from None
            raise ShardctlError(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, path = _request_line(head)
            status, ctype, body = self._route(method, path)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        except Exception:  # never let a scrape hurt the supervisor
            log.exception("metrics request failed")
            status, ctype, body = "500 Internal Server Error", "text/plain", b"internal error\n"
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4; charset=utf-8", render(self.snapshot)
        if path == "/healthz":
            ok, problems = health(self.snapshot())
            if ok:
                return "200 OK", "text/plain", b"ok\n"
            return "503 Service Unavailable", "text/plain", ("\n".join(problems) + "\n").encode()
        return "404 Not Found", "text/plain", b"try /metrics or /healthz\n"


def _request_line(head: bytes) -> tuple[str, str]:
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(parts) < 2:
        return "", ""
    return parts[0], parts[1].split("?", 1)[0]
