"""One connection of the local feed: its messages, its price stream and the faults armed on it.

A ``Session`` lives on the feed's event-loop thread only. ``serve()`` answers
the client's messages and runs the stream beside them; the stream sends
bursts of price events as one transport write of ready-made text frames, then
awaits the transport's drain, so "as fast as possible" means as fast as the
client reads (backpressure) and a paced rate costs one wake-up per burst, not
one sleep per tick.

Subscribe-status rule: ``status`` is ``"error"`` only when every symbol
failed; a partial failure is ``"ok"`` with the failures in ``fails``
(``fails`` is null when none failed).

Replay: entries are sent in file order; a price event only if its symbol is
subscribed on this connection, any other line (other events, non-JSON text)
always. At recorded pace an entry waits until its ``timestamp`` minus the
first one has elapsed since streaming started (lines without a timestamp
inherit the previous one); ``count`` and ``duration`` apply as in simulation.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from shardctl.errors import ShardctlError
from shardctl.feed.catalog import Catalog, PriceState
from shardctl.feed.faults import GARBAGE_FRAME, Fault
from shardctl.feed.tape import Tape

log = logging.getLogger("shardctl.feed")

#: Most price events one connection sends per event-loop turn.
MAX_BURST = 256
_HEADERS = [b"\x81" + bytes((n,)) for n in range(126)]


class FeedError(ShardctlError):
    """The local feed could not start: port in use, unreadable replay file or sent-log..."""


@dataclass
class ReplayEntry:
    """One line of a replay file: the exact bytes to send, its timestamp, its symbol if a price event."""

    data: bytes
    timestamp: float | None
    symbol: str | None


def load_replay(path: str | os.PathLike[str]) -> list[ReplayEntry]:
    """Read a JSON-lines replay file: one event per line, or sent-log lines ``{"conn": N, "event": {...}}``.

    Lines that are not JSON are kept and sent verbatim (garbage frames). Raises ``FeedError`` when unreadable.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise FeedError(f"cannot read replay file {path}: {exc.strerror or exc}") from None
    entries: list[ReplayEntry] = []
    last_ts: float | None = None
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            entries.append(ReplayEntry(line, last_ts, None))
            continue
        if isinstance(obj, dict) and "conn" in obj and isinstance(obj.get("event"), dict):
            obj = obj["event"]
            line = orjson.dumps(obj)
        ts = obj.get("timestamp") if isinstance(obj, dict) else None
        if isinstance(ts, (int, float)) and not isinstance(ts, bool):
            last_ts = float(ts)
        symbol = obj.get("symbol") if isinstance(obj, dict) and obj.get("event") == "price" else None
        entries.append(ReplayEntry(line, last_ts, symbol if isinstance(symbol, str) else None))
    return entries


def frame_text(payload: bytes) -> bytes:
    """An unmasked, final websocket TEXT frame (RFC 6455 §5.2) carrying ``payload`` (UTF-8)."""
    n = len(payload)
    if n < 126:
        return _HEADERS[n] + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def error_event(message: str) -> dict[str, Any]:
    """The error event Twelve Data sends for a message it cannot use."""
    return {"event": "subscribe-status", "status": "error", "messages": [message]}


class Hub(Protocol):
    """What a session needs from its feed (``FeedServer`` provides it)."""

    catalog: Catalog
    rate: float
    count: int | None
    duration: float | None
    replay_entries: list[ReplayEntry] | None
    replay_fast: bool
    #: True while some stream fault (mute, slow, close_market) or the tape wants each tick looked at.
    shaping: bool
    #: What streamed ticks are recorded on (``FeedServer(record_bars=True)``), or None.
    tape: Tape | None

    def clock(self) -> float: ...

    def withheld(self, state: PriceState) -> bool: ...

    def record_sent(self, session: Session, prices: list[bytes]) -> None: ...

    def record_fault(self, name: str) -> None: ...


class Session:
    """One open websocket connection and its streaming state (event-loop thread only)."""

    def __init__(self, cid: int, key: str, ws: ServerConnection, hub: Hub) -> None:
        self.id, self.key, self.ws, self.hub = cid, key, ws, hub
        self.symbols: dict[str, PriceState] = {}
        self.order: list[PriceState] = []
        self.rr = 0
        self.sent = 0
        self.faults: list[list[Any]] = []  # [trigger: price events sent, Fault]
        self.silence_until = 0.0
        self.wake = asyncio.Event()
        self.done = False
        self.evicted = False
        self.stream_t0: float | None = None  # loop time of the first successful subscribe
        self.pace_t0 = 0.0
        self.pace_sent = 0
        self.replay_pos = 0
        self.replay_t0 = 0.0
        self.replay_base: float | None = None

    def rebase(self, now: float) -> None:
        """Restart pacing from ``now``: no catch-up burst after a silence or a stall."""
        self.pace_t0, self.pace_sent = now, 0
        self.replay_base = None

    def arm(self, fault: Fault, now: float) -> None:
        """Arm ``fault`` to fire after ``fault.after`` more price events; a silence with after=0 starts now."""
        if fault.name == "silence" and fault.after == 0:
            log.info("conn %d: fault silence after %d events", self.id, self.sent)
            self.silence_until = now + fault.seconds
            if fault.every:
                self.faults.append([self.sent + fault.every, fault])
        else:
            self.faults.append([self.sent + fault.after, fault])
        self.wake.set()

    def disarm(self, name: str | None, now: float) -> None:
        """Drop pending faults called ``name`` (all when None) and end a silence being cleared."""
        self.faults = [e for e in self.faults if name not in (None, e[1].name)]
        if name in (None, "silence") and self.silence_until:
            self.silence_until = now
        self.wake.set()

    # ---------------------------------------------------------------- messages

    async def serve(self) -> None:
        """Answer messages and stream until the connection closes; never raises ConnectionClosed."""
        stream = asyncio.create_task(self._stream())
        loop = asyncio.get_running_loop()
        try:
            async for message in self.ws:
                reply = self.on_message(message)
                if reply is not None and loop.time() >= self.silence_until:
                    await self.ws.send(orjson.dumps(reply).decode())
        except ConnectionClosed:
            pass
        finally:
            self.done = True
            self.wake.set()
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)

    def on_message(self, message: str | bytes) -> dict[str, Any] | None:
        """Apply one client message; return the event to answer with."""
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError:
            return error_event("Cant parse message")
        if not isinstance(msg, dict):
            return error_event("Cant parse message")
        action = msg.get("action")
        if action == "heartbeat":
            return {"event": "heartbeat", "status": "ok"}
        if action == "reset":
            self.symbols.clear()
            self.order = []
            return {"event": "reset-status", "status": "ok"}
        if action not in ("subscribe", "unsubscribe"):
            return error_event("Cant parse message")
        params = msg.get("params")
        items = params.get("symbols") if isinstance(params, dict) else None
        if isinstance(items, str):
            items = [s for s in items.split(",") if s.strip()]
        if not isinstance(items, list) or not items:
            return error_event("Cant parse message")
        catalog = self.hub.catalog
        success: list[dict[str, str]] = []
        fails: list[dict[str, str]] = []
        for item in items:
            name = item.get("symbol") if isinstance(item, dict) else item
            inst = catalog.lookup(name) if isinstance(name, str) else None
            if inst is None or (action == "unsubscribe" and inst.symbol not in self.symbols):
                fails.append({"symbol": str(name).strip() if name is not None else ""})
                continue
            success.append(inst.status_entry())
            if action == "subscribe":
                self.symbols.setdefault(inst.symbol, catalog.state(inst.symbol))
            else:
                self.symbols.pop(inst.symbol, None)
        self.order = list(self.symbols.values())
        if action == "subscribe" and success and self.stream_t0 is None:
            now = asyncio.get_running_loop().time()
            self.stream_t0 = now
            self.rebase(now)
        self.wake.set()
        return {"event": f"{action}-status", "status": "ok" if success or not fails else "error",
                "success": success, "fails": fails or None}

    # ---------------------------------------------------------------- streaming

    async def _stream(self) -> None:
        loop = asyncio.get_running_loop()
        fast = not self.hub.rate or self.hub.replay_fast
        try:
            while not self.done:
                now = loop.time()
                if await self._fire_due_faults(now):
                    continue
                if self.silence_until > now:
                    await self._sleep(self.silence_until - now)
                    if self.silence_until and loop.time() >= self.silence_until:
                        self.silence_until = 0.0
                        self.rebase(loop.time())
                        log.info("conn %d: silence over", self.id)
                    continue
                frames, prices, wait = self._due_frames(now)
                if not frames:
                    await self._sleep(wait)
                    continue
                if not self._write(frames, prices):
                    break
                await self.ws.drain()  # waits only while the transport's buffer is over its limit
                if fast:
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("conn %d: streaming failed", self.id)
            self.ws.transport.abort()

    async def _sleep(self, timeout: float | None) -> None:
        if timeout is None:
            await self.wake.wait()
        else:
            try:
                await asyncio.wait_for(self.wake.wait(), max(timeout, 0.0005))
            except TimeoutError:
                pass
        self.wake.clear()

    def _limit(self, now: float) -> tuple[int, float | None]:
        """How many price events may go now (burst, count, fault triggers) and seconds left of ``duration``."""
        n = MAX_BURST
        if self.hub.count is not None:
            n = min(n, self.hub.count - self.sent)
        for trigger, _ in self.faults:
            n = min(n, max(trigger - self.sent, 0))
        left = None
        if self.hub.duration is not None and self.stream_t0 is not None:
            left = self.stream_t0 + self.hub.duration - now
            if left <= 0:
                n = 0
        return n, left

    def _due_frames(self, now: float) -> tuple[list[bytes], list[bytes], float | None]:
        """(frames to send now, the price events among them, seconds to wait when nothing is due)."""
        if self.stream_t0 is None or not self.order:
            return [], [], None
        n, left = self._limit(now)
        if n <= 0:
            return [], [], left if left is not None and left > 0 else None
        if self.hub.replay_entries is not None:
            return self._due_replay(now, n)
        rate = self.hub.rate
        if rate:
            due = int((now - self.pace_t0) * rate) - self.pace_sent
            if due <= 0:
                return [], [], (self.pace_sent + 1) / rate - (now - self.pace_t0)
            lag_cap = max(MAX_BURST, int(rate * 0.25))
            if due > lag_cap:  # the client fell behind: drop the backlog instead of bursting it
                self.pace_sent += due - lag_cap
                due = lag_cap
            n = min(n, due)
        self.pace_sent += n
        hub = self.hub
        ts = int(hub.clock())
        order, count, tick = self.order, len(self.order), hub.catalog.tick
        start = self.rr
        self.rr = (start + n) % count
        if hub.shaping:
            frames = []
            tape, withheld = hub.tape, hub.withheld
            for i in range(n):
                state = order[(start + i) % count]
                if withheld(state):
                    continue
                frames.append(tick(state, ts))
                if tape is not None:
                    tape.record(state, ts)
        else:
            frames = [tick(order[(start + i) % count], ts) for i in range(n)]
        if not frames:  # every slot due was withheld (muted...): look again at the next slot, never wait for a wake-up
            return [], [], (self.pace_sent + 1) / rate - (now - self.pace_t0) if rate else 0.0
        return frames, frames, None

    def _due_replay(self, now: float, n: int) -> tuple[list[bytes], list[bytes], float | None]:
        entries = self.hub.replay_entries
        assert entries is not None
        fast = self.hub.replay_fast
        frames: list[bytes] = []
        prices: list[bytes] = []
        pos = self.replay_pos
        while pos < len(entries) and len(prices) < n and len(frames) < MAX_BURST:
            entry = entries[pos]
            if not fast and entry.timestamp is not None:
                if self.replay_base is None:
                    self.replay_base, self.replay_t0 = entry.timestamp, now
                wait = self.replay_t0 + (entry.timestamp - self.replay_base) - now
                if wait > 0:
                    if not frames:
                        self.replay_pos = pos
                        return [], [], wait
                    break
            pos += 1
            if entry.symbol is None:
                frames.append(entry.data)
            elif entry.symbol in self.symbols:
                frames.append(entry.data)
                prices.append(entry.data)
        self.replay_pos = pos
        return frames, prices, None

    def _write(self, frames: list[bytes], prices: list[bytes]) -> bool:
        """Queue ``frames`` as text frames in one transport write; False once the connection is closing."""
        ws = self.ws
        if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
            self.done = True
            return False
        ws.transport.write(b"".join([frame_text(f) for f in frames]))
        self.sent += len(prices)
        if prices:
            self.hub.record_sent(self, prices)
        return True

    # ---------------------------------------------------------------- faults

    async def _fire_due_faults(self, now: float) -> bool:
        for entry in list(self.faults):
            trigger, fault = entry
            if trigger > self.sent or self.done:
                continue
            if fault.name in ("garbage", "malformed_price") and self.silence_until > now:
                continue
            if fault.every:
                entry[0] = max(trigger + fault.every, self.sent + 1)
            else:
                self.faults.remove(entry)
            await self._apply(fault, now)
            return True
        return False

    async def _apply(self, fault: Fault, now: float) -> None:
        ws = self.ws
        log.info("conn %d: fault %s after %d events", self.id, fault.name, self.sent)
        if fault.name == "close":
            self.done = True
            await ws.close(fault.code, fault.reason)
        elif fault.name == "abort":
            self.done = True
            ws.transport.abort()
        elif fault.name == "silence":
            self.silence_until = now + fault.seconds
        elif fault.name == "garbage":
            await ws.send(GARBAGE_FRAME)
        elif fault.name == "malformed_price":
            catalog = self.hub.catalog
            state = self.order[self.rr % len(self.order)] if self.order else catalog.state("AAPL")
            await ws.send(catalog.malformed(state, int(self.hub.clock())).decode())
        self.hub.record_fault(fault.name)
