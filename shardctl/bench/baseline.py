"""The benchmark's baseline: the Timescale tutorial's ingester, run in its own process.

``python -m shardctl.bench.baseline --url WS_URL --dsn DSN --symbols A,B --expect N --out FILE``

Exactly the tutorial's approach (``reference/seed-schema.md``): the
``twelvedata`` package's ``TDWebSocket`` with an ``on_event`` callback that
appends ``(datetime, symbol, price, day_volume)`` to a list and, when it holds
exactly 100 rows, runs ``psycopg2.extras.execute_values`` INSERT and commits;
a heartbeat every 10 s from the main thread. Nothing is written on exit, so a
last partial batch is lost, as in the tutorial. Its per-event ``print`` lines
are left out (that only makes the baseline faster).

Changes, for the benchmark only: ``TDClient()`` is not built (its constructor
makes a blocking HTTP request) and ``TDWebSocket.url``, hard-coded to
wss://ws.twelvedata.com, is pointed at the local feed. Instrumentation that
does not change behaviour: the receive thread stamps each event's arrival,
queue-full drops are counted, and each commit's time and its rows' latencies
are recorded. The process ends when it has received ``--expect`` price events
and the handler has taken them all (or nothing arrives for ``--idle`` s, or on
SIGTERM), writes a JSON summary to ``--out`` and the latencies (float32, as
``SHARDCTL_LATENCY_LOG``) to ``--out``.lat.
"""

from __future__ import annotations

import argparse
import array
import json
import logging
import os
import signal
import threading
import time
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Sequence

import psycopg2
import psycopg2.extras
from psycopg2.extensions import connection as Connection
from twelvedata import websocket as td_websocket
from twelvedata.websocket import TDWebSocket

MAX_BATCH_SIZE = 100
_ARRIVED = "_bench_arrived"


class BaselineCounters:
    """What the instrumentation saw (written from the receive and handler threads)."""

    def __init__(self) -> None:
        self.received = 0
        self.queue_dropped = 0
        self.handled = 0
        self.stored = 0
        self.commits = 0
        self.insert_errors = 0
        self.first_arrival: float | None = None
        self.first_commit: float | None = None
        self.last_commit: float | None = None
        self.last_activity = time.monotonic()
        self.latencies = array.array("f")


COUNTERS = BaselineCounters()


def _on_message(self: Any, _ws: Any, message: str) -> None:
    """``EventReceiver.on_message`` of twelvedata 1.4, plus an arrival stamp and a receive counter."""
    event = json.loads(message)
    now = time.monotonic()
    if event.get("event") == "price":
        COUNTERS.received += 1
        COUNTERS.last_activity = now
        if COUNTERS.first_arrival is None:
            COUNTERS.first_arrival = now
        event[_ARRIVED] = now
    self.client.logger.debug("Received event: {}".format(event))
    try:
        self.client.events.put_nowait(event)
    except td_websocket.queue.Full:
        self.client.on_queue_full()


class LocalTDWebSocket(TDWebSocket):
    """``TDWebSocket`` aimed at ``url`` instead of wss://ws.twelvedata.com; counts queue-full drops."""

    def __init__(self, ctx: Any, url: str) -> None:
        super().__init__(ctx)
        self.url = f"{url}?apikey={self.apikey}"

    def on_queue_full(self) -> None:
        COUNTERS.queue_dropped += 1
        super().on_queue_full()


class TutorialPipeline:
    """The tutorial's ``WebsocketPipeline``: a list of rows, INSERT + commit at exactly 100."""

    DB_TABLE = "crypto_ticks"
    DB_COLUMNS = ["time", "symbol", "price", "day_volume"]

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.current_batch: list[tuple[Any, ...]] = []
        self.arrivals: list[float] = []
        self.insert_counter = 0

    def _insert_values(self, data: list[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur, f"INSERT INTO {self.DB_TABLE} ({', '.join(self.DB_COLUMNS)}) VALUES %s", data)
        self.conn.commit()

    def on_event(self, event: dict[str, Any]) -> None:
        if event["event"] == "price":
            timestamp = datetime.utcfromtimestamp(event["timestamp"])
            data = (timestamp, event["symbol"], event["price"], event.get("day_volume"))
            self.current_batch.append(data)
            self.arrivals.append(event.get(_ARRIVED, time.monotonic()))
            COUNTERS.handled += 1
            if len(self.current_batch) == MAX_BATCH_SIZE:
                try:
                    self._insert_values(self.current_batch)
                except psycopg2.Error:
                    COUNTERS.insert_errors += 1  # the tutorial's batch stays full: ingest stops silently
                    self.conn.rollback()
                    raise
                now = time.monotonic()
                COUNTERS.latencies.extend(now - a for a in self.arrivals)
                COUNTERS.stored += len(self.current_batch)
                COUNTERS.commits += 1
                COUNTERS.first_commit = COUNTERS.first_commit or now
                COUNTERS.last_commit = now
                COUNTERS.last_activity = now
                self.insert_counter += 1
                self.current_batch = []
                self.arrivals = []


def _vm_hwm_mb() -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardctl.bench.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/v1/quotes/price of the local feed")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--symbols", required=True, help="comma-separated symbols")
    parser.add_argument("--expect", type=int, required=True, help="price events the feed will send")
    parser.add_argument("--idle", type=float, default=5.0, help="give up after this long without progress")
    parser.add_argument("--out", required=True, help="JSON summary path (latencies go to OUT.lat)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    td_websocket.EventReceiver.on_message = _on_message
    quiet = logging.getLogger("ws-twelvedata-bench")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False

    conn = psycopg2.connect(args.dsn)
    pipeline = TutorialPipeline(conn)
    symbols = [s for s in args.symbols.split(",") if s]
    ctx = SimpleNamespace(apikey="demo", self_heal_time_s=None,
                          defaults={"on_event": pipeline.on_event, "logger": quiet})
    ws = LocalTDWebSocket(ctx, args.url)
    ws.subscribe(symbols)
    ws.connect()
    started = time.monotonic()
    next_heartbeat = started + 10
    reason = "signal"
    while not stop.wait(0.05):
        now = time.monotonic()
        if now >= next_heartbeat:
            ws.heartbeat()
            next_heartbeat = now + 10
        idle = ws.events.empty() and COUNTERS.handled + COUNTERS.queue_dropped >= COUNTERS.received
        if COUNTERS.received >= args.expect and idle:
            reason = "all received"
            break
        if now - COUNTERS.last_activity > args.idle and idle:
            reason = f"nothing for {args.idle:g}s"
            break
    c = COUNTERS
    summary = {
        "received": c.received, "queue_dropped": c.queue_dropped, "stored": c.stored, "commits": c.commits,
        "unwritten_tail": len(pipeline.current_batch), "insert_errors": c.insert_errors, "ended": reason,
        "first_arrival": c.first_arrival, "first_commit": c.first_commit, "last_commit": c.last_commit,
        "cpu_seconds": sum(os.times()[:2]), "peak_rss_mb": _vm_hwm_mb(),
    }
    with open(args.out + ".lat", "wb") as f:
        c.latencies.tofile(f)
    with open(args.out, "w") as f:
        json.dump(summary, f)
    conn.close()
    os._exit(0)  # the package's threads (run_forever, handler) never end by themselves


if __name__ == "__main__":
    raise SystemExit(main())
