"""Twelve Data frames → tick rows, or a reason to set the frame aside.

``FrameParser.parse`` never raises: every frame comes back as exactly one
``Parsed`` whose ``kind`` says what it was. A price event becomes a ``Tick``,
a row in the writer's column order (time, symbol, price, day_volume, bid,
ask); a status event a typed ``StatusEvent``. ``FrameParser.read`` is the
same with a price event's ``Tick`` handed back alone (the worker's hot path).

Two decoders, measured (``benchmarks/README.md``): msgspec decodes a
well-formed price event straight into a typed struct, its types checked as
it goes (about twice as fast as decoding to a dict and checking after);
anything it refuses takes the careful path (orjson, then every check by
hand), which tells why or makes the most of the event (an optional field of
the wrong type becomes NULL). The verdict depends on the frame alone, live
and on replay. A frame that is not ASCII takes the careful path (msgspec
would skip invalid UTF-8 in a field the tick does not use; orjson refuses the
frame, which the fault suite wants set aside). Fields a tick does not use
are otherwise skipped unread: a number out of range there does not cost the tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal, get_args

import msgspec
import orjson

from shardctl.rows import Tick
from shardctl.twelvedata.frames import BINARY_FRAME_MARK


class Kind(Enum):
    PRICE = "price"          #: ``row`` holds the tick
    STATUS = "status"        #: subscribe/unsubscribe/reset status; ``status`` holds it
    HEARTBEAT = "heartbeat"  #: heartbeat reply
    OTHER = "other"          #: valid JSON event we do not use (counted)
    BAD = "bad"              #: malformed; ``reason`` says why (dead-lettered)


StatusName = Literal["subscribe-status", "unsubscribe-status", "reset-status"]


@dataclass(frozen=True, slots=True)
class Listing:
    """A subscribed symbol as a subscribe-status event lists it (empty strings where it says nothing)."""

    symbol: str
    exchange: str = ""
    mic_code: str = ""
    type: str = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A symbol the server refused to subscribe, with its message if it gave one."""

    symbol: str
    message: str | None = None


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A subscribe/unsubscribe/reset answer, decoded once (entries of the wrong shape are left out)."""

    name: StatusName
    status: str | None = None
    #: The symbols it confirms: listings for a subscribe, bare symbols for an unsubscribe.
    success: tuple[Listing, ...] = ()
    fails: tuple[Refusal, ...] = ()
    #: The server's error messages, as it sent them (for the log).
    messages: object = None


@dataclass(frozen=True, slots=True)
class Parsed:
    """What a frame was; the worker's hot path gets a price event's ``Tick`` itself (``FrameParser.read``)."""

    kind: Kind
    row: Tick | None = None
    status: StatusEvent | None = None
    reason: str | None = None


_HEARTBEAT = Parsed(Kind.HEARTBEAT)
_OTHER = Parsed(Kind.OTHER)
_BINARY = Parsed(Kind.BAD, reason="binary websocket frame (opcode 2), Twelve Data sends text")
_STATUS_NAMES: dict[str, StatusName] = {name: name for name in get_args(StatusName)}
#: A price event longer than this is set aside: a real one is a few hundred bytes, padding is hostile.
MAX_PRICE_FRAME = 64 * 1024
_LATEST_TS = 32503680000  # year 3000


def _number(value: Any) -> float | int | None:
    """The value if it is a finite JSON number (not a bool), else None."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        return value
    return None


_NO_SYMBOL = Parsed(Kind.BAD, reason="price event without a symbol")
_BAD_SYMBOL = Parsed(Kind.BAD, reason="price event with an unprintable or overlong symbol")


def _symbol_problem(symbol: str) -> Parsed | None:
    """Why a price event's symbol, met for the first time, is refused; None if it is fine."""
    if not symbol:
        return _NO_SYMBOL
    if not symbol.isprintable() or len(symbol) > 64:
        # PostgreSQL refuses NUL in TEXT; a control character is never a real symbol.
        return _BAD_SYMBOL
    return None


def _asset_name(frame: bytes | str) -> object:
    """The ``currency_base`` of a price event (its first of a symbol: not on the hot path); None if unreadable."""
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:  # a field the tick does not use is malformed
        return None
    return event.get("currency_base") if isinstance(event, dict) else None


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def status_event(name: StatusName, event: dict[str, Any]) -> StatusEvent:
    """The typed form of a decoded status event."""
    entries, refusals = event.get("success"), event.get("fails")
    success: list[Listing] = []
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("symbol"), str):
            success.append(Listing(entry["symbol"], _text(entry.get("exchange")), _text(entry.get("mic_code")),
                                   _text(entry.get("type"))))
        elif isinstance(entry, str):
            success.append(Listing(entry))
    fails: list[Refusal] = []
    for fail in refusals if isinstance(refusals, list) else ():
        symbol = fail.get("symbol") if isinstance(fail, dict) else fail
        if isinstance(symbol, str):
            message = fail.get("message") if isinstance(fail, dict) else None
            fails.append(Refusal(symbol, message if isinstance(message, str) and message else None))
    status = event.get("status")
    return StatusEvent(name, status if isinstance(status, str) else None, tuple(success), tuple(fails),
                       event.get("messages"))


class _PriceEvent(msgspec.Struct):
    """A well-formed price event, as msgspec decodes and checks it in one step (other fields are skipped)."""

    event: Literal["price"]
    symbol: str
    timestamp: int
    price: float
    day_volume: int | float | None = None
    bid: float | None = None
    ask: float | None = None


_decode_price = msgspec.json.Decoder(_PriceEvent).decode


class FrameParser:
    """Turns frames into ticks or verdicts.

    State: a cache of the last timestamp's datetime (ticks arrive in time
    order), and the symbols met so far with the asset name their first event
    carried (``take_new_names`` hands over the new ones).
    """

    def __init__(self) -> None:
        self._last_ts = -1
        self._last_dt = datetime.fromtimestamp(0, timezone.utc)
        self._names: dict[str, str | None] = {}
        self._new_names: dict[str, str | None] = {}

    def take_new_names(self) -> dict[str, str | None]:
        """Symbols met for the first time since the last call, with their ``currency_base`` (None: none sent)."""
        names, self._new_names = self._new_names, {}
        return names

    def parse(self, frame: bytes | str) -> Parsed:
        """Classify one frame as ``StreamClient.poll`` returned it; malformed input yields Kind.BAD, never an exception.

        A binary frame (``BINARY_FRAME_MARK`` + payload) is Kind.BAD whatever it holds.
        """
        found = self.read(frame)
        return Parsed(Kind.PRICE, row=found) if isinstance(found, Tick) else found

    def read(self, frame: bytes | str) -> Tick | Parsed:
        """As ``parse``, but a price event comes back as its ``Tick`` alone (the worker's hot path)."""
        if len(frame) <= MAX_PRICE_FRAME and frame.isascii():  # UTF-8 is checked on the careful path
            try:
                event = _decode_price(frame)
            except msgspec.DecodeError:  # not a well-formed price event: the careful path says what it is
                pass
            else:
                symbol = event.symbol
                if symbol not in self._names:
                    problem = _symbol_problem(symbol)
                    if problem is not None:
                        return problem
                    self._learn(symbol, _asset_name(frame))
                ts = event.timestamp
                if ts != self._last_ts:
                    if not 0 < ts < _LATEST_TS:
                        return Parsed(Kind.BAD, reason=f"price event for {symbol} without a valid Unix timestamp")
                    self._last_dt = datetime.fromtimestamp(ts, timezone.utc)
                    self._last_ts = ts
                return Tick(self._last_dt, symbol, event.price, event.day_volume, event.bid, event.ask)
        return self._read_any(frame)

    def _learn(self, symbol: str, name: object) -> None:
        self._names[symbol] = self._new_names[symbol] = name if isinstance(name, str) else None

    def _read_any(self, frame: bytes | str) -> Tick | Parsed:
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
        if name == "price":
            if len(frame) > MAX_PRICE_FRAME:
                return Parsed(Kind.BAD, reason=f"price event of {len(frame):,} bytes (the limit is "
                                               f"{MAX_PRICE_FRAME:,}; a real one is a few hundred)")
            return self._price(event)
        if type(name) is not str:  # a list or an object here would not even hash
            return Parsed(Kind.BAD, reason="no \"event\" field")
        if name == "heartbeat":
            return _HEARTBEAT
        status_name = _STATUS_NAMES.get(name)
        if status_name is not None:
            return Parsed(Kind.STATUS, status=status_event(status_name, event))
        return _OTHER

    def _price(self, event: dict[str, Any]) -> Tick | Parsed:
        symbol = event.get("symbol")
        if type(symbol) is not str:
            return _NO_SYMBOL
        if symbol not in self._names:
            problem = _symbol_problem(symbol)
            if problem is not None:
                return problem
        price = event.get("price")
        if type(price) is not float:  # orjson never decodes a non-finite float (1e400 is an error)
            price = _number(price)
            if price is None:
                return Parsed(Kind.BAD, reason=f"price event for {symbol} without a numeric price")
            price = float(price)
        ts = event.get("timestamp")
        if ts != self._last_ts or type(ts) is not int:
            if type(ts) is float and math.isfinite(ts):
                ts = int(ts)
            if type(ts) is not int or not 0 < ts < _LATEST_TS:
                return Parsed(Kind.BAD, reason=f"price event for {symbol} without a valid Unix timestamp")
            if ts != self._last_ts:
                self._last_dt = datetime.fromtimestamp(ts, timezone.utc)
                self._last_ts = ts
        volume = event.get("day_volume")
        if volume is not None:
            volume = _number(volume)
        bid = event.get("bid")
        if bid is not None and type(bid) is not float:
            bid = _number(bid)
        ask = event.get("ask")
        if ask is not None and type(ask) is not float:
            ask = _number(ask)
        if symbol not in self._names:
            self._learn(symbol, event.get("currency_base"))
        return Tick(self._last_dt, symbol, price, volume, bid, ask)
