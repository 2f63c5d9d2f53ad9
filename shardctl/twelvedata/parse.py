"""Twelve Data frames → tick rows, or a reason to set the frame aside.

``FrameParser.parse`` never raises: every frame comes back as exactly one
``Parsed`` whose ``kind`` says what it was. A price event becomes a row in
the writer's column order (time, symbol, price, day_volume, bid, ask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import orjson

from shardctl.rows import Tick
from shardctl.twelvedata.frames import BINARY_FRAME_MARK


class Kind(Enum):
    PRICE = "price"          #: ``row`` holds the tick
    STATUS = "status"        #: subscribe/unsubscribe/reset status; ``event`` holds it
    HEARTBEAT = "heartbeat"  #: heartbeat reply
    OTHER = "other"          #: valid JSON event we do not use (counted)
    BAD = "bad"              #: malformed; ``reason`` says why (dead-lettered)


@dataclass(frozen=True, slots=True)
class Parsed:
    kind: Kind
    row: Tick | None = None
    event: dict[str, Any] | None = None
    reason: str | None = None
    #: A price event's own Unix timestamp (whole seconds), as ``row.time`` holds it; 0 for other kinds.
    ts: int = 0


_HEARTBEAT = Parsed(Kind.HEARTBEAT)
_BINARY = Parsed(Kind.BAD, reason="binary websocket frame (opcode 2), Twelve Data sends text")
_STATUS_EVENTS = frozenset(("subscribe-status", "unsubscribe-status", "reset-status"))
#: A price event longer than this is set aside: a real one is a few hundred bytes, padding is hostile.
MAX_PRICE_FRAME = 64 * 1024


def _number(value: Any) -> float | int | None:
    """The value if it is a finite JSON number (not a bool), else None."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        return value
    return None


class FrameParser:
    """Stateless apart from a cache of the last timestamp's datetime (ticks arrive in time order)."""

    def __init__(self) -> None:
        self._last_ts: int | None = None
        self._last_dt: datetime | None = None

    def _time(self, ts: int) -> datetime:
        if ts != self._last_ts:
            self._last_dt = datetime.fromtimestamp(ts, timezone.utc)
            self._last_ts = ts
        return self._last_dt  # type: ignore[return-value]

    def parse(self, frame: bytes | str) -> Parsed:
        """Classify one frame as ``StreamClient.poll`` returned it; malformed input yields Kind.BAD, never an exception.

        A binary frame (``BINARY_FRAME_MARK`` + payload) is Kind.BAD whatever it holds.
        """
        try:
            event = orjson.loads(frame)
        except (orjson.JSONDecodeError, TypeError) as exc:
            # Checked only here: the mark starts with NUL, which no JSON text can.
            if isinstance(frame, bytes) and frame.startswith(BINARY_FRAME_MARK):
                return _BINARY
            return Parsed(Kind.BAD, reason=f"not JSON: {str(exc)[:120]}")
        if type(event) is not dict:
            return Parsed(Kind.BAD, reason=f"not a JSON object: {type(event).__name__}")
        name = event.get("event")
        if type(name) is not str:  # a list or an object here would not even hash
            return Parsed(Kind.BAD, reason="no \"event\" field")
        if name == "price":
            if len(frame) > MAX_PRICE_FRAME:
                return Parsed(Kind.BAD, reason=f"price event of {len(frame):,} bytes (the limit is "
                                               f"{MAX_PRICE_FRAME:,}; a real one is a few hundred)")
            return self._price(event)
        if name == "heartbeat":
            return _HEARTBEAT
        if name in _STATUS_EVENTS:
            return Parsed(Kind.STATUS, event=event)
        return Parsed(Kind.OTHER, event=event)

    def _price(self, event: dict[str, Any]) -> Parsed:
        symbol = event.get("symbol")
        if type(symbol) is not str or not symbol:
            return Parsed(Kind.BAD, reason="price event without a symbol")
        if not symbol.isprintable() or len(symbol) > 64:
            # PostgreSQL refuses NUL in TEXT; a control character is never a real symbol.
            return Parsed(Kind.BAD, reason="price event with an unprintable or overlong symbol")
        price = _number(event.get("price"))
        if price is None:
            return Parsed(Kind.BAD, reason=f"price event for {symbol} without a numeric price")
        ts = event.get("timestamp")
        if type(ts) is float and math.isfinite(ts):
            ts = int(ts)
        if type(ts) is not int or not 0 < ts < 32503680000:  # before year 3000
            return Parsed(Kind.BAD, reason=f"price event for {symbol} without a valid Unix timestamp")
        bid = event.get("bid")
        ask = event.get("ask")
        volume = event.get("day_volume")
        return Parsed(Kind.PRICE, row=Tick(
            self._time(ts), symbol, float(price),
            None if volume is None else _number(volume),
            None if bid is None else _number(bid),
            None if ask is None else _number(ask),
        ), ts=ts)
