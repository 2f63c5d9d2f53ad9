"""The local Twelve Data–compatible websocket server (``FeedServer``; ``shardctl feed`` is in ``feed.cli``).

Serves ``ws://127.0.0.1:PORT/v1/quotes/price`` (or another loopback
address; tests that make network namespaces add link-local 169.254.x.x
addresses with ``also_on``, on the same port) with the wire protocol of
``reference/twelvedata-protocol.md``: subscribe/unsubscribe/reset/heartbeat,
then price events for the connection's symbols, either simulated (a random
walk per symbol shared by all connections, at ``rate`` ticks/s per connection,
0 = as fast as the client reads) or replayed from a JSON-lines file. Fault
modes (``shardctl.feed.faults``) let tests and demos break the connection on
purpose. The demo, the integration tests (``FeedServer`` in a background
thread) and the benchmark (``shardctl feed`` as a subprocess) all use it.

Handshake: the key comes from ``?apikey=`` or the ``X-TD-APIKEY`` header; a
missing or wrong key (or the ``bad_key`` fault) is refused with HTTP 200
instead of 101, as Twelve Data does. A 4th concurrent connection with one key
closes the oldest with code 4000 (``CLOSE_EVICTED``).

The same port answers plain HTTP GETs of Twelve Data's REST ``/time_series``
(deterministic one-minute bars, for gap backfill), ``/api_usage`` and
``/technical_indicators``: see ``shardctl.feed.rest`` (``rest_url``, ``rest``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import ipaddress
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from shardctl.config.model import MAX_CONNECTIONS_PER_KEY
from shardctl.feed.catalog import Catalog, PriceState
from shardctl.feed.faults import CLOSE_EVICTED, STREAM_FAULTS, Fault, make_fault
from shardctl.feed.rest import REST_FAULTS, RestApi
from shardctl.feed.session import FeedError, ReplayEntry, Session, load_replay
from shardctl.feed.tape import Tape

__all__ = ["FeedServer", "FeedStats", "FeedError", "CLOSE_EVICTED", "PATH"]

log = logging.getLogger("shardctl.feed")
PATH = "/v1/quotes/price"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")


def _local_only(host: str) -> str:
    """``host`` if it is loopback or IPv4 link-local (a test's own network namespaces), else ValueError."""
    try:
        link_local = ipaddress.ip_address(host) in LINK_LOCAL
    except ValueError:
        link_local = False
    if host not in LOOPBACK_HOSTS and not link_local:
        raise ValueError(f"the feed only listens on loopback ({', '.join(LOOPBACK_HOSTS)}) or link-local "
                         f"169.254.x.x addresses, not {host!r}")
    return host


def _netloc(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"



@dataclass(frozen=True)
class FeedStats:
    """A snapshot of the feed's counters (price events only in ``sent``)."""

    sent: int
    open_connections: int
    accepted: int
    rejected: int
    evicted: int
    garbage_sent: int
    malformed_sent: int
    per_connection: dict[int, int]


class FeedServer:
    """A Twelve Data–compatible websocket server running its own asyncio loop in a daemon thread.

    ``start()`` returns once it listens (``port``, ``url``); ``stop()`` closes every
    connection (code 1001), flushes the sent-log and joins the thread. All public
    methods are thread-safe. ``rate`` is ticks/s per connection (0 or None = as fast
    as the client reads); ``count`` and ``duration`` bound each connection's stream
    (the connection then stays open and still answers heartbeats).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, symbols: Iterable[str] = (),
                 rate: float | None = 100.0, count: int | None = None, duration: float | None = None,
                 api_key: str | None = None, sent_log: str | os.PathLike[str] | None = None,
                 replay: str | os.PathLike[str] | None = None, replay_fast: bool = False,
                 seed: int | None = None, faults: Iterable[Fault] = (), keep_sent: int = 100_000,
                 close_timeout: float = 2.0, also_on: Iterable[str] = (),
                 clock: Callable[[], float] = time.time, record_bars: bool = False) -> None:
        _local_only(host)
        #: Further addresses served on the same port (link-local ones: a test's network namespaces).
        self.also_on = tuple(_local_only(h) for h in also_on)
        if rate is not None and rate < 0:
            raise ValueError("rate cannot be negative")
        self.host, self.port = host, port
        self.rate = float(rate or 0.0)
        self.count, self.duration = count, duration
        self.api_key = api_key
        self.replay_fast = replay_fast
        self.close_timeout = close_timeout
        self._sent_log_path = sent_log
        self._replay_path = replay
        self.replay_entries: list[ReplayEntry] | None = None
        self.catalog = Catalog(symbols, seed=seed)
        #: Unix time as the feed sees it: its ticks' timestamps and REST's "now" (tests pass a simulated clock).
        self.clock = clock
        #: The bars it streamed, for REST (``shardctl.feed.tape``), with ``record_bars``.
        self.tape = Tape() if record_bars else None
        #: Twelve Data REST (``/time_series``...) on the same port; see ``shardctl.feed.rest``.
        self.rest = RestApi(self.catalog, api_key=api_key, clock=clock, tape=self.tape)
        self._cond = threading.Condition()
        #: The API key each accepted handshake gave, until its session starts.
        self._handshake_keys: weakref.WeakKeyDictionary[ServerConnection, str] = weakref.WeakKeyDictionary()
        self._standing: list[Fault] = list(faults)
        self._bad_key = any(f.name == "bad_key" for f in self._standing)
        #: Symbols whose price events are not sent (``mute``), sent at a fraction (``slow``: symbol -> [fraction,
        #: credit]), and exchanges whose symbols are not sent (``close_market``, upper case).
        self.muted: frozenset[str] = frozenset()
        self.slowed: dict[str, list[float]] = {}
        self.closed_streams: frozenset[str] = frozenset()
        self.shaping = self.tape is not None
        for fault in [f for f in self._standing if f.name in STREAM_FAULTS]:
            self._apply_stream_fault(fault)
        self._standing = [f for f in self._standing if f.name != "bad_key" and f.name not in STREAM_FAULTS]
        self._conns: dict[int, Session] = {}
        self._per_conn: dict[int, int] = {}
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=keep_sent or None)
        self._keep_sent = keep_sent > 0
        self._next_id = 0
        self._sent = self._accepted = self._rejected = self._evicted = 0
        self._garbage = self._malformed = 0
        self._log_file: BinaryIO | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/v1/quotes/price`` (valid once started)."""
        return self.url_on(self.host)

    def url_on(self, address: str) -> str:
        """The websocket URL on one of the addresses the feed listens on (``host`` or ``also_on``)."""
        return f"ws://{_netloc(address, self.port)}{PATH}"

    def rest_url_on(self, address: str) -> str:
        """The REST base URL on one of the addresses the feed listens on."""
        return f"http://{_netloc(address, self.port)}"

    @property
    def rest_url(self) -> str:
        """``http://HOST:PORT``: the REST base URL (``TDClient(base_url=...)``), valid once started."""
        return self.rest_url_on(self.host)

    @property
    def symbol_count(self) -> int:
        """How many symbols the feed knows (built-in, declared and replayed)."""
        return len(self.catalog)

    def start(self, timeout: float = 10.0) -> FeedServer:
        """Listen and serve in a daemon thread; return once listening. Raises ``FeedError`` (port in use...)."""
        if self._thread is not None:
            raise RuntimeError("FeedServer already started")
        if self._replay_path is not None:
            self.replay_entries = load_replay(self._replay_path)
            for entry in self.replay_entries:
                if entry.symbol:
                    self.catalog.add(entry.symbol)
        if self._sent_log_path is not None:
            try:
                self._log_file = open(self._sent_log_path, "ab")
            except OSError as exc:
                raise FeedError(f"cannot open sent-log {self._sent_log_path}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._run, name="shardctl-feed", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise FeedError(f"feed did not start listening within {timeout:g}s")
        if self._start_error is not None:
            self._thread.join(timeout)
            self._close_log()
            raise self._start_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection (1001), stop listening, flush and close the sent-log, join the thread.

        Idempotent. If the loop has not finished within ``timeout`` seconds the daemon
        thread is left behind (logged); the sent-log is flushed either way.
        """
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive() and self._stop_event is not None:
            try:
                loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:
                pass
            thread.join(timeout)
            if thread.is_alive():
                log.warning("feed thread did not stop within %.1fs", timeout)
        self._close_log()

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_log(self) -> None:
        with self._cond:
            if self._log_file is not None:
                try:
                    self._log_file.flush()
                    self._log_file.close()
                finally:
                    self._log_file = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged
            if not self._ready.is_set():
                self._start_error = exc
            else:
                log.error("feed loop failed: %s", exc, exc_info=True)
        finally:
            self._ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        ws_logger = logging.getLogger("shardctl.feed.ws")
        ws_logger.setLevel(logging.WARNING)  # its DEBUG lines would print request headers (the key)

        async def listen(host: str) -> Server:
            try:
                return await serve(
                    self._handler, host, self.port, process_request=self._process_request,
                    compression=None, ping_interval=None, close_timeout=self.close_timeout,
                    max_size=2**20, write_limit=2**18, logger=ws_logger, server_header=None)
            except OSError as exc:
                reason = "address already in use" if exc.errno in (98, 48, 10048) else (exc.strerror or str(exc))
                raise FeedError(f"cannot listen on {host}:{self.port}: {reason}; choose another --port") from None

        servers = [await listen(self.host)]
        self.port = servers[0].sockets[0].getsockname()[1]
        try:
            for host in self.also_on:  # the same port on every address
                servers.append(await listen(host))
            self._ready.set()
            await self._stop_event.wait()
        finally:
            for server in servers:
                server.close(close_connections=True)
            try:
                await asyncio.wait_for(asyncio.gather(*(server.wait_closed() for server in servers)),
                                       self.close_timeout + 1.0)
            except TimeoutError:  # a peer that does not answer the close (e.g. behind a dead link)
                for conn in list(self._conns.values()):
                    conn.ws.transport.abort()
                with contextlib.suppress(TimeoutError):  # let their handlers see the abort and end
                    await asyncio.wait_for(asyncio.gather(*(server.wait_closed() for server in servers)), 1.0)

    # ---------------------------------------------------------------- handshake & messages

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        rest = self.rest.handle(connection, request)
        if rest is not None:
            return rest
        parts = urlsplit(request.path)
        if parts.path.rstrip("/") != PATH:
            return connection.respond(404, "Not Found\n")
        key = (parse_qs(parts.query).get("apikey") or [""])[0] or request.headers.get("X-TD-APIKEY", "")
        with self._cond:
            bad = self._bad_key or not key or (
                self.api_key is not None and not hmac.compare_digest(key.encode(), self.api_key.encode()))
            if bad:
                self._rejected += 1
                self._cond.notify_all()
        if bad:
            log.info("refused a handshake: %s", "bad_key fault" if self._bad_key else "missing or wrong API key")
            return connection.respond(200, '{"status":"error","message":"invalid api key"}\n')
        self._handshake_keys[connection] = key
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        session = self._register(ws)
        try:
            await session.serve()
        finally:
            with self._cond:
                self._conns.pop(session.id, None)
                self._cond.notify_all()
            code = ws.close_code if ws.close_code is not None else "none (aborted)"
            log.info("conn %d closed after %d events, close code %s", session.id, session.sent, code)

    def _register(self, ws: ServerConnection) -> Session:
        with self._cond:
            self._next_id += 1
            conn = Session(self._next_id, self._handshake_keys.pop(ws, ""), ws, self)
            self._accepted += 1
            self._conns[conn.id] = conn
            self._per_conn[conn.id] = 0
            for fault in self._standing:
                if fault.conn is None or fault.conn == conn.id:
                    conn.faults.append([fault.after, fault])
            same_key = [c for c in self._conns.values() if c.key == conn.key and not c.evicted]
            self._cond.notify_all()
        peer = "%s:%s" % tuple(ws.remote_address[:2]) if ws.remote_address else "?"
        log.info("conn %d open from %s", conn.id, peer)
        if len(same_key) > MAX_CONNECTIONS_PER_KEY:
            oldest = min(same_key, key=lambda c: c.id)
            oldest.evicted = True
            with self._cond:
                self._evicted += 1
            log.info("conn %d evicted: more than %d connections with one API key", oldest.id,
                     MAX_CONNECTIONS_PER_KEY)
            task = asyncio.get_running_loop().create_task(
                oldest.ws.close(CLOSE_EVICTED, "too many connections for this API key"))
            self._tasks.add(task)  # keep a reference until done
            task.add_done_callback(self._tasks.discard)
        return conn

    def record_sent(self, conn: Session, prices: list[bytes]) -> None:
        """Count and log price events a session has just written (called on the loop thread)."""
        with self._cond:
            self._sent += len(prices)
            self._per_conn[conn.id] = conn.sent
            if self._keep_sent:
                cid = conn.id
                self._recent.extend([(cid, p) for p in prices])
            if self._log_file is not None:
                head = b'{"conn":%d,"event":' % conn.id
                self._log_file.write(b"".join([head + p + b"}\n" for p in prices]))
                self._log_file.flush()
            self._cond.notify_all()

    def record_fault(self, name: str) -> None:
        """Count a fault that fired (called by sessions on the loop thread)."""
        with self._cond:
            if name == "garbage":
                self._garbage += 1
            elif name == "malformed_price":
                self._malformed += 1
            self._cond.notify_all()

    # ---------------------------------------------------------------- faults API

    def inject(self, fault: str, *, standing: bool = False, **params: Any) -> None:
        """Arm a fault (see ``shardctl.feed.faults``); thread-safe.

        One-shot (default): fires once on each connection open now (or only ``conn=ID``)
        after it sends ``after`` more price events. ``standing=True``: also arms it on
        every future connection until ``clear``. ``bad_key`` refuses new handshakes
        until cleared. ``rate_limit`` (``count=N``) answers the next N REST ``/time_series``
        requests with 429. Raises ``ValueError`` for an unknown fault or parameter.
        """
        if fault in REST_FAULTS:
            self.rest.inject(fault, **params)
            return
        f = make_fault(fault, **params)
        if f.name in STREAM_FAULTS:
            self._apply_stream_fault(f)
            return
        if f.name == "bad_key":
            with self._cond:
                self._bad_key = True
            log.info("fault bad_key on: refusing new handshakes")
            return
        if standing:
            with self._cond:
                self._standing.append(f)

        def arm() -> None:
            now = asyncio.get_running_loop().time()
            for conn in list(self._conns.values()):
                if f.conn is None or f.conn == conn.id:
                    conn.arm(f, now)
        self._in_loop(arm)

    def clear(self, fault: str | None = None) -> None:
        """Disarm ``fault`` (every fault when None): standing and pending ones, an ongoing silence, bad_key."""
        self.rest.clear(fault)
        if fault in REST_FAULTS:
            return
        with self._cond:
            self._standing = [f for f in self._standing if fault not in (None, f.name)]
            if fault in (None, "bad_key"):
                self._bad_key = False
            if fault in (None, "mute"):
                self.muted = frozenset()
            if fault in (None, "slow"):
                self.slowed = {}
            if fault in (None, "close_market"):
                for exchange in self.closed_streams:
                    self.rest.set_market(exchange, open=True)
                    if self.tape is not None:
                        self.tape.open_market(exchange, self.clock())
                self.closed_streams = frozenset()
            self.shaping = bool(self.tape is not None or self.muted or self.slowed or self.closed_streams)

        def disarm() -> None:
            now = asyncio.get_running_loop().time()
            for conn in list(self._conns.values()):
                conn.disarm(fault, now)
        self._in_loop(disarm)

    def _apply_stream_fault(self, fault: Fault) -> None:
        """Arm a mute, slow or close_market (thread-safe; the loop reads the new sets on its next burst)."""
        with self._cond:
            if fault.name == "mute":
                self.muted = self.muted | {str(fault.params["symbol"])}
            elif fault.name == "slow":
                self.slowed = {**self.slowed, str(fault.params["symbol"]): [float(fault.params["fraction"]), 0.0]}
            else:
                exchange = str(fault.params["exchange"]).strip().upper()
                self.closed_streams = self.closed_streams | {exchange}
                self.rest.set_market(exchange, open=False)
                if self.tape is not None:
                    self.tape.close_market(exchange, self.clock())
            self.shaping = True
        log.info("fault %s on: %s", fault.name, ", ".join(f"{k}={v}" for k, v in fault.params.items()))

    def withheld(self, state: PriceState) -> bool:
        """True when a stream fault keeps this tick of ``state``'s symbol from being sent (loop thread)."""
        instrument = state.instrument
        if instrument.symbol in self.muted:
            return True
        closed = self.closed_streams
        if closed and (instrument.mic_code.upper() in closed or instrument.exchange.upper() in closed):
            return True
        slow = self.slowed.get(instrument.symbol)
        if slow is None:
            return False
        slow[1] += slow[0]  # evenly spread: one tick goes each time the credit reaches 1
        if slow[1] < 1.0:
            return True
        slow[1] -= 1.0
        return False

    def set_market(self, exchange: str, *, open: bool) -> None:
        """Make REST ``/market_state`` call ``exchange`` (MIC or name) open or closed (``shardctl.feed.markets``)."""
        self.rest.set_market(exchange, open=open)

    def _in_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or not self._ready.is_set():
            return
        if threading.current_thread() is self._thread:
            fn()
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def call() -> None:
            try:
                fn()
                done.set_result(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)
        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # loop closed meanwhile
            return
        done.result(timeout=10)

    # ---------------------------------------------------------------- observation

    def _snapshot(self) -> FeedStats:
        return FeedStats(self._sent, len(self._conns), self._accepted, self._rejected, self._evicted,
                         self._garbage, self._malformed, dict(self._per_conn))

    def stats(self) -> FeedStats:
        """The counters now."""
        with self._cond:
            return self._snapshot()

    def connection_ids(self) -> list[int]:
        """Ids of the connections open now, oldest first."""
        with self._cond:
            return sorted(self._conns)

    def sent_events(self, conn: int | None = None) -> list[dict[str, Any]]:
        """The price events sent (the last ``keep_sent``), oldest first; only connection ``conn`` if given."""
        with self._cond:
            recent = list(self._recent)
        return [orjson.loads(data) for cid, data in recent if conn is None or cid == conn]

    def wait_for(self, predicate: Callable[[FeedStats], bool] | int, timeout: float = 10.0) -> FeedStats:
        """Block until ``predicate(stats)`` holds (an int n means ``sent >= n``); return those stats.

        Raises ``TimeoutError`` showing the last stats when ``timeout`` passes first.
        """
        if isinstance(predicate, int):
            n = predicate
            predicate = lambda s: s.sent >= n  # noqa: E731
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snap = self._snapshot()
                if predicate(snap):
                    return snap
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"feed condition not met within {timeout:g}s; stats {snap}")
                self._cond.wait(remaining)

    def wait_sent(self, n: int, timeout: float = 10.0) -> FeedStats:
        """Block until at least ``n`` price events were sent in total; ``TimeoutError`` otherwise."""
        return self.wait_for(lambda s: s.sent >= n, timeout)

    def wait_connections(self, n: int, timeout: float = 10.0) -> FeedStats:
        """Block until exactly ``n`` connections are open; ``TimeoutError`` otherwise."""
        return self.wait_for(lambda s: s.open_connections == n, timeout)

    def wait_accepted(self, n: int, timeout: float = 10.0) -> FeedStats:
        """Block until at least ``n`` connections were accepted since start; ``TimeoutError`` otherwise."""
        return self.wait_for(lambda s: s.accepted >= n, timeout)
