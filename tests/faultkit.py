"""Helpers for the fault-injection suite (tests/test_faults.py).

What is here, and why:

* ``TimedFeed``: the real local feed (``shardctl.feed.server.FeedServer``), observed,
  not replaced. It records, for every price event, the wall-clock time it was
  handed to the socket and its end position in its connection's byte stream
  (every byte the feed writes on a connection goes through the transport's
  ``write``, which it counts). The event's own ``timestamp`` is whole seconds,
  too coarse to place a tick against a gap.
* ``freeze_then_kill``: ``kill -9`` of a worker, with a measurement taken at the
  instant of death. The worker is stopped (SIGSTOP: from then on it does
  nothing, exactly as if it had died), the feed stops writing on its
  connection, the bytes not yet pulled off the socket are counted (feed
  transport buffer + the feed socket's send queue + the worker socket's
  receive queue, from /proc/net/tcp), then SIGKILL. Every tick before that
  position was *read* by the worker ("read means in the OS", DESIGN.md) and
  must reach the database (less the last READ_SLACK bytes: the instant
  between a socket read and its journal write); the ones after it were never
  read and may only be lost inside a recorded gap. Errors in the count (a
  delayed ACK counted in both queues) only make the "read" claim smaller,
  never larger.
* ``tally``: the feed's sent ticks against the database's rows and the shard's
  gaps, tick by tick: sent, stored, lost inside gaps, lost outside gaps,
  duplicated, and lost although read.
* ``SupervisorRun``: ``shardctl start CONFIG`` as a subprocess (its log, with
  the workers' stderr, in a file), with its status over the control socket.
* ``ScriptedServer``: a tiny Twelve Data look-alike on 127.0.0.1 for frames the
  feed's fault switches cannot send (binary, oversized, invalid UTF-8,
  nested, floods, an error that echoes the API key).
* ``journal_ticks``: the price events in a shard's journal segment files
  (``shardctl.journal.format``), read while the database is down.
* ``pg_kill_hard``: ``pg_ctl stop -m immediate`` on the session's embedded server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat as stat_mod
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import parse_qs, urlsplit

import orjson
import psutil
from support import LoggedProcess, query, settle, wait_until
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from shardctl.config import load_config
from shardctl.errors import ControlError
from shardctl.feed.server import FeedServer
from shardctl.feed.session import frame_text
from shardctl.supervisor.control import ControlClient

Key = tuple[str, int, float, int]

STOCKS = ("AAPL", "MSFT")
CRYPTO = ("BTC/USD", "ETH/USD")
#: A lost tick may lie this far outside a gap and still count as inside: timer and rounding slack
#: (gaps are stored as TIMESTAMPTZ, microseconds) and a status or heartbeat frame read just before death.
GAP_TOLERANCE = 0.05
#: No program can pull bytes off a socket and write them to its journal in one atomic step: a kill can
#: land between the two. Ticks in the last this-many bytes a worker read before its kill may be lost
#: (inside a gap, like unread ones); anything it had read before that must be in the database. 16 KiB is
#: about 70 ticks, ~90 ms of this suite's streams: far more than one socket read of a worker that keeps
#: up, far less than an in-process buffer flushed once a second.
READ_SLACK = 16 * 1024
#: The most one socket read of a worker brings (``shardctl.twelvedata.frames``): the burst a kill can catch
#: between a read and its journal write, when the worker had fallen behind its socket.
ONE_READ = 256 * 1024


def tick_key(event: dict[str, Any]) -> Key:
    """(symbol, timestamp, price, day_volume): day_volume grows with every tick, so the key is unique."""
    return (event["symbol"], int(event["timestamp"]), float(event["price"]), int(event["day_volume"]))


# ---------------------------------------------------------------- the feed, observed

@dataclass(frozen=True)
class SentTick:
    conn: int
    sent_at: float   #: wall clock when the feed wrote it to the socket
    key: Key
    end: int         #: end position of its frame in the connection's byte stream (feed-side count)


class TimedFeed(FeedServer):
    """``FeedServer`` that also records each price event's send time and stream position (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("keep_sent", 0)  # the timed record below replaces the feed's own ring
        super().__init__(*args, **kwargs)
        self._timed_lock = threading.Lock()
        self._timed: list[tuple[int, float, int, bytes]] = []
        self._written: dict[int, int] = {}
        self._transports: dict[int, Any] = {}
        self._peer_port: dict[int, int] = {}
        #: Per connection: the peer's address and when the feed accepted it (wall clock).
        self.peers: dict[int, tuple[str, float]] = {}

    def _register(self, ws: ServerConnection):  # type: ignore[override]
        session = super()._register(ws)
        cid, transport = session.id, ws.transport
        self._written[cid] = 0
        self._transports[cid] = transport
        if ws.remote_address:
            self._peer_port[cid] = ws.remote_address[1]
            self.peers[cid] = (ws.remote_address[0], time.time())
        write = transport.write

        def counting_write(data: Any) -> None:  # loop thread only
            write(data)
            self._written[cid] += len(data)

        transport.write = counting_write
        return session

    def record_sent(self, conn: Any, prices: list[bytes]) -> None:
        now = time.time()
        # Session._write wrote exactly these frames in one transport.write just before calling us.
        end = self._written.get(conn.id, 0)
        start = end - sum(len(frame_text(p)) for p in prices)
        rows = []
        for p in prices:
            start += len(frame_text(p))
            rows.append((conn.id, now, start, p))
        with self._timed_lock:
            self._timed.extend(rows)
        super().record_sent(conn, prices)

    def sent_ticks(self) -> list[SentTick]:
        with self._timed_lock:
            raw = list(self._timed)
        return [SentTick(cid, at, tick_key(orjson.loads(p)), end) for cid, at, end, p in raw]

    def conn_for_peer(self, port: int) -> int | None:
        open_now = set(self.connection_ids())
        for cid, peer in self._peer_port.items():
            if peer == port and cid in open_now:
                return cid
        return None

    def drop(self, cid: int) -> None:
        """Drop connection ``cid`` at once, as a server drops a slow consumer: what the feed still holds for
        it is lost (the ``abort`` fault waits for the next send, which a full socket never reaches)."""
        self._in_loop(self._transports[cid].abort)

    def unsent_bytes(self, cid: int) -> tuple[int, int]:
        """(bytes written on ``cid`` so far, bytes still in the feed's transport buffer), read on the loop."""
        out: list[tuple[int, int]] = []

        def read() -> None:
            transport = self._transports[cid]
            out.append((self._written[cid], 0 if transport.is_closing() else transport.get_write_buffer_size()))

        self._in_loop(read)
        return out[0]


def _tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(tx_queue, rx_queue) of the IPv4 loopback socket local_port -> remote_port, from /proc/net/tcp."""
    want_local, want_remote = f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1] == want_local and parts[2] == want_remote:
            tx, rx = parts[4].split(":")
            return int(tx, 16), int(rx, 16)
    return None


@dataclass
class Frozen:
    """A connection whose worker was killed: the stream position up to which the worker had read it."""

    conn: int
    frozen_at: float
    read_to: int


def freeze_then_kill(pid: int, feed: TimedFeed) -> Frozen | None:
    """SIGSTOP the worker, measure how far it had read its feed connection, SIGKILL it (see module doc).

    Returns None when the worker had no connection to the feed (killed while starting or reconnecting).
    """
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return None
    frozen_at = time.time()
    try:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp4")
        except psutil.Error:
            return None
        ports = [c.laddr.port for c in conns if c.raddr and c.raddr.port == feed.port
                 and c.status == psutil.CONN_ESTABLISHED]
        if not ports:
            return None
        local = ports[0]
        cid = feed.conn_for_peer(local)
        if cid is None:
            return None
        feed.inject("silence", conn=cid, seconds=600)  # the feed stops writing on this connection

        def measure() -> int | None:
            written, buffered = feed.unsent_bytes(cid)
            worker_side = _tcp_queues(local, feed.port)
            feed_side = _tcp_queues(feed.port, local)
            if worker_side is None or feed_side is None:
                return None
            return written - buffered - feed_side[0] - worker_side[1]

        last = measure()
        deadline = time.monotonic() + 3.0
        while last is not None and time.monotonic() < deadline:  # loopback ACKs settle within milliseconds
            time.sleep(0.05)
            now = measure()
            if now == last:
                break
            last = now
        return None if last is None else Frozen(cid, frozen_at, last)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- the database side

def stored_keys(dsn: str, symbols: Iterable[str] | None = None) -> Counter:
    sql = "SELECT symbol, extract(epoch FROM time)::bigint, price, day_volume FROM crypto_ticks"
    params: tuple = ()
    if symbols is not None:
        sql += " WHERE symbol = ANY(%s)"
        params = (list(symbols),)
    return Counter((s, int(t), float(p), int(v)) for s, t, p, v in query(dsn, sql, params) if v is not None)


def gap_rows(dsn: str) -> dict[str, list[tuple[float, float, str]]]:
    """shardctl_gaps per shard: (gap_from, gap_to, reason), epoch seconds (worker clock = this machine's)."""
    if not query(dsn, "SELECT to_regclass('shardctl_gaps') IS NOT NULL")[0][0]:
        return {}
    out: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for shard, a, b, reason in query(dsn, "SELECT shard, extract(epoch FROM gap_from), extract(epoch FROM gap_to), "
                                          "reason FROM shardctl_gaps ORDER BY gap_from"):
        out[shard].append((float(a), float(b), reason))
    return dict(out)


def gap_lines(dsn: str, shard: str) -> list[str]:
    """The shard's gaps, one "reason [from, to]" each, for a failure message."""
    return [f"{reason} [{lo:.3f}, {hi:.3f}]" for lo, hi, reason in gap_rows(dsn).get(shard, [])]


def ledger_rows(dsn: str) -> int:
    return int(query(dsn, "SELECT coalesce(sum(rows_total), 0) FROM shardctl_ledger")[0][0])


# ---------------------------------------------------------------- the comparison

@dataclass
class Tally:
    """Sent vs stored, tick by tick. ``lost_read``: ticks the worker had pulled off the socket, then lost."""

    scenario: str
    sent: int = 0
    stored: int = 0
    lost_in_gaps: int = 0
    lost_outside: int = 0
    duplicated: int = 0
    lost_read: int = 0
    lost_last_read: int = 0  #: in the worker's last ``read_slack`` bytes before its kill (allowed, inside a gap)
    read_slack: int = READ_SLACK
    #: With the journals read: the most bytes a killed worker had read but not journaled (its burst in hand).
    in_hand: int | None = None
    open_missing: int = 0  #: ticks sent on connections still open, not stored (yet)
    gaps: int = 0
    outside_examples: list[str] = field(default_factory=list)
    read_examples: list[str] = field(default_factory=list)
    duplicate_examples: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.extra.items())
        return (f"[faults:{self.scenario}] sent {self.sent}, stored {self.stored}, lost inside gaps "
                f"{self.lost_in_gaps}, lost outside gaps {self.lost_outside}, duplicated {self.duplicated}, "
                f"lost after the worker read them {self.lost_read} (+{self.lost_last_read} in its "
                + (f"last {self.read_slack // 1024} KiB read" if self.in_hand is None else
                   f"burst in hand, at most {self.in_hand:,} bytes")
                + f"), gaps recorded {self.gaps}{extra}")

    def problems(self, *, read_hint: str = "", outside_hint: str = "") -> list[str]:
        """The promises this tally breaks, one line each (empty: none): nothing duplicated, nothing read
        then lost, every loss inside a gap, every tick on a live connection stored."""
        problems = []
        if self.duplicated:
            problems.append(f"{self.duplicated} tick(s) stored twice or never sent")
        if self.lost_read:
            problems.append(f"{self.lost_read} tick(s) the worker had read were lost at its kill -9"
                            + (f" ({read_hint})" if read_hint else ""))
        if self.in_hand is not None and self.in_hand > self.read_slack:
            problems.append(f"a killed worker had read {self.in_hand:,} bytes it had not journaled: more than one "
                            f"socket read ({self.read_slack:,})" + (f" ({read_hint})" if read_hint else ""))
        if self.lost_outside:
            problems.append(f"{self.lost_outside} lost tick(s) lie outside every recorded gap"
                            + (f" ({outside_hint})" if outside_hint else ""))
        if self.open_missing:
            problems.append(f"{self.open_missing} tick(s) sent on a live connection never reached the database")
        return problems

    def details(self) -> str:
        parts = [self.line()]
        if self.outside_examples:
            parts.append("lost outside any gap (first few): " + "; ".join(self.outside_examples))
        if self.read_examples:
            parts.append("read by the worker, then lost (first few): " + "; ".join(self.read_examples))
        if self.duplicate_examples:
            parts.append("duplicated or never sent (first few): " + "; ".join(self.duplicate_examples))
        return "\n".join(parts)


def tally(scenario: str, sent: list[SentTick], stored: Counter, gaps: dict[str, list[tuple[float, float, str]]],
          shard_of: Callable[[str], str], *, frozen: dict[int, Frozen] | None = None,
          open_conns: Iterable[int] = (), read_slack: int = READ_SLACK, journaled: Counter | None = None) -> Tally:
    """Compare, tick by tick (see ``Tally``).

    Which time of a lost tick to hold against a gap: it was never received, so
    it has no receive time; the feed's send time is the earliest it could have
    been received and, on loopback with a worker that keeps up, equal to it
    within milliseconds. It is also the time backfill needs (a gap is filled
    with REST bars over [gap_from, gap_to]). It comes from this machine's
    clock, like the worker's gap stamps; the event's own ``timestamp`` is
    whole seconds, too coarse. So: a lost tick is inside a gap when its send
    time lies within [gap_from, gap_to] of a gap of its shard (± GAP_TOLERANCE).
    On a frozen connection, a tick the worker had read more than ``read_slack``
    bytes before its kill is "lost after read" whatever the gaps say. With
    ``journaled`` (the keys the shards' journals hold: ``journal_ticks``) the
    line is exact: a tick up to the last one journaled on its connection was
    read and journaled, so losing it is "lost after read"; what the worker read
    after that was its burst in hand, which must fit ``read_slack``.
    """
    frozen = frozen or {}
    open_set = set(open_conns)
    result = Tally(scenario, sent=len(sent), stored=sum(stored.values()),
                   gaps=sum(len(v) for v in gaps.values()), read_slack=read_slack)
    read_line = {conn: fz.read_to - read_slack for conn, fz in frozen.items()}
    if journaled is not None:
        read_line = dict.fromkeys(frozen, 0)
        for t in sent:
            if t.conn in frozen and journaled[t.key] and t.end > read_line[t.conn]:
                read_line[t.conn] = t.end
        result.in_hand = max((fz.read_to - read_line[conn] for conn, fz in frozen.items()), default=0)
    sent_count = Counter(t.key for t in sent)
    for key, n in stored.items():
        extra = n - sent_count.get(key, 0)
        if extra > 0:
            result.duplicated += extra
            if len(result.duplicate_examples) < 5:
                result.duplicate_examples.append(f"{key} stored {n}x, sent {sent_count.get(key, 0)}x")
    remaining = Counter(stored)
    for tick in sorted(sent, key=lambda t: (t.conn, t.end)):
        if remaining[tick.key] > 0:
            remaining[tick.key] -= 1
            continue
        if tick.conn in open_set:
            result.open_missing += 1
            continue
        fz = frozen.get(tick.conn)
        if fz is not None and tick.end <= read_line[tick.conn]:
            result.lost_read += 1
            if len(result.read_examples) < 5:
                result.read_examples.append(f"{tick.key} conn {tick.conn} ending at byte {tick.end} "
                                            f"(the worker had read to byte {fz.read_to})")
            continue
        if fz is not None and tick.end <= fz.read_to:
            result.lost_last_read += 1
        at = tick.sent_at
        shard = shard_of(tick.key[0])
        if any(a - GAP_TOLERANCE <= at <= b + GAP_TOLERANCE for a, b, _ in gaps.get(shard, ())):
            result.lost_in_gaps += 1
        else:
            result.lost_outside += 1
            if len(result.outside_examples) < 5:
                near = sorted(gaps.get(shard, ()), key=lambda g: min(abs(g[0] - at), abs(g[1] - at)))[:1]
                where = (f"nearest gap {near[0][2]!r} [{near[0][0]:.3f}, {near[0][1]:.3f}]" if near
                         else "no gap recorded for the shard")
                result.outside_examples.append(f"{shard} {tick.key} conn {tick.conn} sent at {at:.3f}; {where}")
    return result


def settled(current: Callable[[], Tally]) -> Tally:
    """The tally once every tick sent on a live connection is stored (up to 60 s) and the last gaps are
    written (up to 5 s more); the caller asserts on it."""
    settle(lambda: current().open_missing == 0, 60)
    settle(lambda: current().lost_outside == 0, 5)
    return current()


def assert_no_loss(result: Tally, message: str, *, read_hint: str = "", outside_hint: str = "") -> None:
    """Every promise at once, so a failure names every broken one."""
    problems = result.problems(read_hint=read_hint, outside_hint=outside_hint)
    assert not problems, "\n".join(problems) + "\n" + message


# ---------------------------------------------------------------- config and supervisor

class SupervisorRun(LoggedProcess):
    """``python -m shardctl start CONFIG``; its output (and the workers' stderr) in ``log_path``."""

    def __init__(self, config: Path, log_path: Path, *, env: dict[str, str] | None = None,
                 umask: int = -1, prefix: Sequence[str] = ()) -> None:
        self.config_path = config
        self.config = load_config(config)
        base = {k: v for k, v in os.environ.items() if k != "SHARDCTL_DSN"}
        # prefix: e.g. ``ip netns exec NS``, which execs: the pid is still the supervisor's
        super().__init__([*prefix, sys.executable, "-m", "shardctl", "start", str(config)], log_path,
                         env={**base, **(env or {})}, umask=umask, append=True)
        self.client = ControlClient(self.config.supervisor.control_socket, config)

    def status(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in self.client.request("status", timeout=10)["shards"]}

    def try_status(self) -> dict[str, dict[str, Any]] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"supervisor exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
        try:
            return self.status()
        except (ControlError, OSError):
            return None

    def wait_running(self, names: Iterable[str], timeout: float = 30.0, rows: int = 0) -> dict[str, dict[str, Any]]:
        names = list(names)

        def check() -> dict[str, dict[str, Any]] | None:
            shards = self.try_status()
            if shards and all(shards[n]["state"] == "RUNNING" and shards[n]["rows_written"] >= rows for n in names):
                return shards
            return None

        return wait_until(check, timeout, interval=0.1, what=f"{names} RUNNING with >= {rows} rows written")

    def stop(self, timeout: float = 60.0) -> int:
        return self.terminate(timeout)

    def close(self) -> None:
        super().close()
        # Workers run in their own sessions: kill any this supervisor left behind (by pid, ours only).
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if "shardctl.worker" in cmdline and str(self.config_path) in cmdline:
                try:
                    proc.kill()
                except psutil.Error:
                    pass


# ---------------------------------------------------------------- the embedded server, killed hard

def pg_kill_hard(pg_server: Any) -> None:
    """``pg_ctl stop -m immediate`` on the session's embedded server: no checkpoint, clients cut, crash recovery next.

    Uses the same binaries and system user as ``EmbeddedPostgres.stop`` (which uses ``-m fast``).
    """
    server = pg_server.server
    if server is None:
        import pytest

        pytest.skip("kills the database server: needs the embedded test server (not SHARDCTL_TEST_DSN)")
    server.pg_ctl("-w", "-t", "60", "-m", "immediate", "stop", timeout=70)
    wait_until(lambda: not server.running(), 30, what="the killed PostgreSQL to be gone")


# ---------------------------------------------------------------- a tmpfs

# ---------------------------------------------------------------- a scripted Twelve Data look-alike

class ScriptedServer:
    """A minimal Twelve Data websocket server on 127.0.0.1 that runs ``script(conn)`` per connection.

    It answers heartbeats; ``script`` is an async callable taking a ``ScriptedConn`` (which has the
    subscribe message, the API key from the handshake, and ``send_text``/``send_binary``/``close``).
    """

    def __init__(self, script: Callable[[ScriptedConn], Any]) -> None:
        self.script = script
        self.connections = 0
        self.port = 0
        self.errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripted-server", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/quotes/price"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                         max_size=2**20, server_header=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        key = (parse_qs(urlsplit(ws.request.path).query).get("apikey") or [""])[0] if ws.request else ""
        conn = ScriptedConn(ws, self.connections, key)
        try:
            first = await ws.recv()
            message = orjson.loads(first)
            while message.get("action") != "subscribe":
                first = await ws.recv()
                message = orjson.loads(first)
            conn.subscribe = message
            replies = asyncio.get_running_loop().create_task(conn.answer_heartbeats())
            try:
                await self.script(conn)
                await conn.closed_or_forever()
            finally:
                replies.cancel()
        except ConnectionClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{type(exc).__name__}: {exc}")


class ScriptedConn:
    def __init__(self, ws: ServerConnection, number: int, key: str) -> None:
        self.ws, self.number, self.key = ws, number, key
        self.subscribe: dict[str, Any] = {}

    def symbols(self) -> list[str]:
        items = (self.subscribe.get("params") or {}).get("symbols") or ""
        return [s for s in items.split(",") if s] if isinstance(items, str) else [str(s) for s in items]

    async def send_text(self, data: str | bytes) -> None:
        """A TEXT frame; bytes go out as they are (they need not be valid UTF-8)."""
        await self.ws.send(data, text=True)

    async def send_binary(self, data: bytes) -> None:
        await self.ws.send(data, text=False)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)

    async def answer_heartbeats(self) -> None:
        try:
            async for message in self.ws:
                try:
                    if orjson.loads(message).get("action") == "heartbeat":
                        await self.ws.send('{"event":"heartbeat","status":"ok"}')
                except (orjson.JSONDecodeError, AttributeError):
                    pass
        except ConnectionClosed:
            pass

    async def closed_or_forever(self) -> None:
        await self.ws.wait_closed()


def price_event(symbol: str, price: float, day_volume: int, ts: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"event": "price", "symbol": symbol, "currency": "USD", "exchange": "NASDAQ", "mic_code": "XNGS",
            "type": "Common Stock", "timestamp": int(time.time()) if ts is None else ts, "price": price,
            "day_volume": day_volume, **extra}


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def loose_modes(root: Path) -> list[str]:
    """Group/other permission bits under a state dir: on any directory (``root`` included), on any file under
    ``root/shards`` (journal segments, dead letters, stamps, locks). Files elsewhere (the pidfile) sit in 0700
    directories and are not listed.
    """
    found = []
    for path in [root, *sorted(root.rglob("*"))]:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        if not (is_dir or (stat_mod.S_ISREG(st.st_mode) and (root / "shards") in path.parents)):
            continue
        if st.st_mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat_mod.filemode(st.st_mode)} "
                         f"({oct(st.st_mode & 0o777)})")
    return found


def grep_files(root: Path, needle: bytes) -> list[str]:
    """Files under ``root`` whose bytes contain ``needle``."""
    hits = []
    for path in files_under(root):
        try:
            if needle in path.read_bytes():
                hits.append(str(path.relative_to(root)))
        except OSError:
            continue
    return hits


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



def journal_ticks(directory: Path) -> Counter:
    """Keys of the price events in a journal directory's segment files now (a torn or growing tail is skipped).

    Reads the on-disk format of ``shardctl.journal.format`` directly; run it while nothing is committed
    (database down), or segments may be deleted under it.
    """
    from shardctl.journal.format import SEG_HEADER, _scan

    found: Counter = Counter()
    for path in sorted(directory.glob("*.seg")):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        records: list = []
        with memoryview(data) as view:
            _scan(view, SEG_HEADER, None, len(data), records, 0)
        for record in records:
            try:
                event = orjson.loads(record.frame)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("event") == "price" and "day_volume" in event:
                found[tick_key(event)] += 1
    return found
