"""Twelve Data websocket client on websocket-client: one connection, kept alive.

``StreamClient.poll(timeout)`` is the whole interface: it returns the
messages one read of the socket brought, as bytes (a binary one behind
``BINARY_FRAME_MARK``, so that it is dead-lettered live and on journal replay
alike), or [] after at most ``timeout`` seconds. Behind it the client connects, subscribes, sends a
heartbeat every ``heartbeat_interval``, reconnects when the watchdog sees no
frame for ``watchdog_timeout``, backs off (capped, jittered, reset after a
healthy period) and resubscribes after every reconnect. Network trouble
never raises out of ``poll``. A graceful stop says goodbye first
(``say_goodbye``: unsubscribe, then a close frame); ``poll`` goes on returning
what the server sent before its answering close, then ``connected`` is False. The API key is never logged: only the URL
without its query string is.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
import websocket

from shardctl.backoff import Backoff
from shardctl.config.model import ShardSettings
from shardctl.twelvedata.frames import FrameReader, ProtocolError
from shardctl.twelvedata.parse import StatusEvent

log = logging.getLogger("shardctl.stream")

#: Handshake answers that mean "your key is refused" (Twelve Data answers 200 instead of 101).
BAD_KEY_STATUSES = frozenset((200, 400, 401, 403))
#: Symbols per subscribe message (client messages must stay well under 1 MB).
SUBSCRIBE_CHUNK = 500
STATUS_GOING_AWAY = 1001
_CONNECT_TIMEOUT = 10.0


def public_url(url: str) -> str:
    """The URL without its query string (which may hold the API key)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _with_key(url: str, api_key: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"apikey": api_key})) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class StreamClient:
    """A self-healing subscription to ``symbols`` on a Twelve Data–compatible websocket."""

    def __init__(self, url: str, api_key: str, symbols: Sequence[str], settings: ShardSettings, *,
                 api_key_env: str = "TWELVEDATA_API_KEY",
                 on_subscribed: Callable[[], None] | None = None,
                 before_recv: Callable[[], None] | None = None,
                 read_until: Callable[[], float | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``read_until``: the latest event time (Unix seconds) in what the caller read last, or None; a lost
        connection's gap starts there when that is before the last frame's arrival (a caller behind its
        socket: what the server dropped was sent before that arrival)."""
        self._url = _with_key(url, api_key)
        self.url = public_url(url)
        self.symbols = tuple(symbols)
        self.settings = settings
        self.api_key_env = api_key_env
        self._on_subscribed = on_subscribed
        self._before_recv = before_recv
        self._read_until = read_until
        self._clock = clock
        self._backoff = Backoff(settings.reconnect_initial, settings.reconnect_max,
                                reset_after=settings.reconnect_reset_after)
        self._ws: websocket.WebSocket | None = None
        self._reader: FrameReader | None = None
        self._timeout: float | None = None
        self._next_attempt = 0.0
        self._next_heartbeat = 0.0
        self._last_frame_at = 0.0
        self._bad_key_reported = False
        self._failed_symbols: set[str] = set()
        self.connects = 0
        self.reconnects = 0
        self.subscribed = False
        self.last_error: str | None = None
        #: Wall-clock time of the first successful connection (None before it).
        self.first_connected_at: float | None = None
        #: Disconnection intervals not yet taken: (from, to, reason), wall-clock seconds.
        self.gaps: list[tuple[float, float, str]] = []
        self._down_since: float | None = None
        self._down_reason = ""
        #: True from ``say_goodbye`` on: the close frame is sent, the server's answer not read yet.
        self.closing = False

    def change_symbols(self, symbols: Sequence[str]) -> tuple[list[str], list[str]]:
        """Stream ``symbols`` from now on: (added, removed).

        On an open connection the removed symbols are unsubscribed and the
        added ones subscribed (the protocol allows both at any time), so the
        others never pause; a later reconnect subscribes the new list.
        """
        wanted = list(dict.fromkeys(symbols))
        added = [s for s in wanted if s not in self.symbols]
        removed = [s for s in self.symbols if s not in wanted]
        self.symbols = tuple(wanted)
        self._failed_symbols.difference_update(removed)
        for action, chunk in (("unsubscribe", removed), ("subscribe", added)):
            for start in range(0, len(chunk), SUBSCRIBE_CHUNK):
                self._send({"action": action, "params": {"symbols": ",".join(chunk[start:start + SUBSCRIBE_CHUNK])}})
        if self._ws is not None and (added or removed):
            log.info("symbols changed on the open connection: +%d -%d (%d now)", len(added), len(removed),
                     len(self.symbols))
        return added, removed

    def resume_reading(self) -> None:
        """The caller stopped polling for a while (a full disk): count the silence from now, not from then."""
        self._last_frame_at = max(self._last_frame_at, self._clock())

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def failed_symbols(self) -> frozenset[str]:
        return frozenset(self._failed_symbols)

    # ------------------------------------------------------------ the loop

    def poll(self, timeout: float) -> list[bytes]:
        """Return the messages that arrived together (one read of the socket), or [] after at most ``timeout`` s.

        A text message comes back as its payload; a binary one as
        ``BINARY_FRAME_MARK`` + payload. Never raises on network trouble; what
        ``before_recv`` raises propagates (the connection stays as it was).
        Messages read before a close frame or a broken frame are returned
        first; the connection is then lost (reconnected later) or, after
        ``say_goodbye``, ended.
        """
        now = self._clock()
        if self._ws is None:
            if now < self._next_attempt:
                time.sleep(max(0.0, min(timeout, self._next_attempt - now)))
                return []
            self._connect(now)
            return []
        ws = self._ws
        if self.closing:
            wait = timeout
        else:
            if now >= self._next_heartbeat:
                self._send({"action": "heartbeat"})
                self._next_heartbeat = now + self.settings.heartbeat_interval
                if self._ws is None:
                    return []
            silent_for = now - self._last_frame_at
            if silent_for >= self.settings.watchdog_timeout:
                self._lost(now, f"no frame for {silent_for:.1f}s (watchdog)", abort=True)
                return []
            wait = min(timeout, self._next_heartbeat - now, self.settings.watchdog_timeout - silent_for)
        # On a 10 ms grid (rounded down: at worst an early wake-up), so a busy stream changes the socket's
        # timeout (a system call) a hundred times a second at most, not once a read.
        wait = max(0.001, math.floor(wait * 100) / 100)
        if wait != self._timeout and ws.sock is not None:
            ws.sock.settimeout(wait)
            self._timeout = wait
        reader = self._reader
        assert reader is not None
        try:
            messages = reader.read_burst()
        except (ProtocolError, websocket.WebSocketException, OSError) as exc:
            problem = f"connection lost{' while closing' if self.closing else ''}: {exc or type(exc).__name__}"
            if self.closing:
                self._end(problem)
            else:
                self._lost(self._clock(), problem)
            return []
        if messages:
            self._last_frame_at = self._clock()
        if reader.close_payload is not None:
            if self.closing:
                self._end("")
            else:
                data = reader.close_payload
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                reason = data[2:].decode("utf-8", "replace") if len(data) > 2 else ""
                self._lost(self._clock(),
                           f"server closed the connection (code {code}{', ' + reason if reason else ''})")
        return messages

    def say_goodbye(self) -> bool:
        """Unsubscribe every symbol and send a close frame (1001); False when no connection is open.

        ``poll`` then returns the frames the server sent before its own close frame, and
        ``connected`` turns False when that arrives (or the connection fails).
        """
        if self._ws is None or self.closing:
            return False
        for start in range(0, len(self.symbols), SUBSCRIBE_CHUNK):
            self._send({"action": "unsubscribe",
                        "params": {"symbols": ",".join(self.symbols[start:start + SUBSCRIBE_CHUNK])}})
        if self._ws is None:
            return False
        try:
            self._ws.send_close(STATUS_GOING_AWAY, b"")
        except (websocket.WebSocketException, OSError) as exc:
            self._lost(self._clock(), f"send failed: {exc or type(exc).__name__}")
            return False
        self.closing = True
        return True

    def _end(self, problem: str) -> None:
        ws, self._ws, self._reader = self._ws, None, None
        self.closing = False
        if problem:
            log.warning("%s", problem)
        if ws is not None:
            ws.shutdown()

    def handle_status(self, event: StatusEvent) -> None:
        """Take a subscribe/unsubscribe/reset status event: log fails once per symbol, signal readiness."""
        if event.name == "unsubscribe-status":
            log.info("unsubscribed from %d symbol(s)", len(event.success))
        if event.name != "subscribe-status":
            return
        for fail in event.fails:
            if fail.symbol not in self._failed_symbols:
                self._failed_symbols.add(fail.symbol)
                log.error("Twelve Data refused symbol %s%s; the other symbols keep streaming",
                          fail.symbol, f": {fail.message}" if fail.message else "")
        if event.status == "error":
            log.error("subscribe failed: %s", event.messages or event)
            return
        log.info("subscribed to %d symbol(s) on %s (%d refused)", len(event.success), self.url,
                 len(self._failed_symbols))
        if not self.subscribed:
            self.subscribed = True
            if self._on_subscribed is not None:
                self._on_subscribed()

    def close(self) -> None:
        """Close the connection with code 1001 (going away), or at once after a goodbye; idempotent."""
        if self.closing:
            self._end("")
            return
        ws, self._ws, self._reader = self._ws, None, None
        if ws is None:
            return
        try:
            ws.close(status=STATUS_GOING_AWAY, timeout=1.0)
        except (websocket.WebSocketException, OSError):
            ws.abort()

    # ------------------------------------------------------------ internals

    def _connect(self, now: float) -> None:
        try:
            ws = websocket.create_connection(self._url, timeout=_CONNECT_TIMEOUT, skip_utf8_validation=True,
                                             enable_multithread=False)
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code in BAD_KEY_STATUSES:
                self._bad_key(now, exc.status_code)
            else:
                self._retry_later(now, f"handshake refused with HTTP {exc.status_code}")
            return
        except (websocket.WebSocketException, OSError) as exc:
            self._retry_later(now, f"cannot connect to {self.url}: {exc or type(exc).__name__}")
            return
        assert ws.sock is not None, "create_connection returns a connected websocket"
        self._ws, self._timeout = ws, None
        self._reader = FrameReader(ws.sock, ws.pong, before_recv=self._before_recv)
        wall = time.time()
        if self.first_connected_at is None:
            self.first_connected_at = wall
        if self._down_since is not None:
            self.gaps.append((self._down_since, wall, f"disconnected: {self._down_reason}"))
            self._down_since = None
        self._bad_key_reported = False
        self.subscribed = False
        if self.connects:
            self.reconnects += 1
        self.connects += 1
        self._backoff.succeeded(now)
        self._last_frame_at = now
        self._next_heartbeat = now + self.settings.heartbeat_interval
        log.info("connected to %s; subscribing %d symbol(s)", self.url, len(self.symbols))
        for start in range(0, len(self.symbols), SUBSCRIBE_CHUNK):
            self._send({"action": "subscribe",
                        "params": {"symbols": ",".join(self.symbols[start:start + SUBSCRIBE_CHUNK])}})

    def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None:
            return
        try:
            self._ws.send(orjson.dumps(message).decode())
        except (websocket.WebSocketException, OSError) as exc:
            self._lost(self._clock(), f"send failed: {exc or type(exc).__name__}")

    def _lost(self, now: float, reason: str, *, abort: bool = False) -> None:
        ws, self._ws = self._ws, None
        self._reader = None
        self.subscribed = False
        if ws is not None and self._down_since is None:
            # From the last frame that arrived: whatever the server sent after it was not read.
            since = time.time() - max(0.0, now - self._last_frame_at)
            until = self._read_until() if self._read_until is not None else None
            self._down_since, self._down_reason = since if until is None else min(since, until), reason
        if ws is not None:
            if abort:
                ws.abort()
            try:
                ws.shutdown()
            except (websocket.WebSocketException, OSError):
                pass
        self._retry_later(now, reason)

    def _retry_later(self, now: float, reason: str) -> None:
        delay = self._backoff.failed(now)
        self._next_attempt = now + delay
        self.last_error = reason
        log.warning("%s; reconnecting in %.1fs", reason, delay)

    def _bad_key(self, now: float, status: int) -> None:
        self._next_attempt = now + self.settings.bad_key_backoff
        self.last_error = f"bad API key (handshake status {status})"
        if not self._bad_key_reported:
            self._bad_key_reported = True
            log.error("Twelve Data refused the API key in $%s (handshake status %d): check the key; "
                      "retrying every %.0fs", self.api_key_env, status, self.settings.bad_key_backoff)
        else:
            log.debug("API key still refused (status %d)", status)
