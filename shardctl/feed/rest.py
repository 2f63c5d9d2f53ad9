"""The local feed's REST side: Twelve Data's ``/time_series`` (one-minute bars) on the websocket port.

``FeedServer`` hands every HTTP request to ``RestApi.handle`` from its
websockets ``process_request`` hook before the websocket handshake; a REST
path is answered there with JSON (``Connection: close``), anything else goes
on to the websocket code. So ``TDClient(apikey, base_url=feed.rest_url)``
works offline against the same port the stream uses.

Endpoints:

    GET /time_series?symbol=S&interval=1min[&start_date=..][&end_date=..][&timezone=UTC]
                    [&outputsize=N][&dp=D][&order=asc|desc]&apikey=K
    GET /market_state         which exchanges are open (``shardctl.feed.markets``: open unless set closed)
    GET /api_usage            {"timestamp", "current_usage", "plan_limit", "plan_category"}
    GET /stocks /etfs /indices /cryptocurrencies /forex_pairs   reference lists (``shardctl.feed.reference``)
    GET /technical_indicators {"data": {}, "status": "ok"}   (TDClient() fetches it once per process)

``/time_series`` follows Twelve Data: ``{"meta": {...}, "values": [...], "status": "ok"}``,
values newest first unless ``order=asc``, every number a string, no
``volume`` for forex and metals. ``start_date`` is inclusive and ``end_date``
exclusive; dates are read and written in ``timezone`` (default
``Exchange``: New York for US stocks, UTC for crypto and forex; or any IANA
name). ``outputsize`` (1-5000) defaults to 30 without dates and to 5000 with
one, and keeps the *newest* bars of the range (the truncation pitfall when a
client sends ``outputsize=30`` with a date range). ``dp`` (0-11) rounds
every price (default 5). Bars exist for every minute up to the current one.

Prices are a pure function of (symbol, minute): ``synthetic_bar`` is public so
a test can compute exactly what a backfill must have stored.

Errors come as Twelve Data sends them, HTTP 200 with
``{"code": C, "message": ..., "status": "error"}``: 400 bad parameter or no
data in the range, 401 missing or wrong key, 404 unknown symbol or path,
429 when the ``rate_limit`` fault is armed (``inject("rate_limit", count=N)``
answers the next N ``/time_series`` requests with 429).
"""

from __future__ import annotations

import collections
import email.utils
import hmac
import math
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from shardctl.feed.catalog import CRYPTO, FOREX, METAL, STOCK, Catalog, Instrument
from shardctl.feed.markets import market_state
from shardctl.feed.reference import REFERENCE_PATHS, ReferenceError, reference_list
from shardctl.feed.tape import Tape

__all__ = ["RestApi", "RestError", "Bar", "synthetic_bar", "format_value", "REST_PATHS", "REST_FAULTS",
           "MAX_OUTPUTSIZE"]

#: Paths that cost one API credit per request (``/api_usage`` counts them).
CREDIT_PATHS = frozenset({"/time_series", "/market_state", *REFERENCE_PATHS})
REST_PATHS = frozenset({"/api_usage", "/technical_indicators", *CREDIT_PATHS})
REST_FAULTS = frozenset({"rate_limit"})
MAX_OUTPUTSIZE = 5000
DEFAULT_OUTPUTSIZE = 30
DEFAULT_DP = 5
MAX_DP = 11
PLAN_LIMIT = 8
_MIC_TIMEZONES = {"XNGS": "America/New_York", "XNYS": "America/New_York", "XTSE": "America/Toronto",
                  "XLON": "Europe/London"}
NO_DATA = "No data is available on the specified dates. Try setting different start/end dates."
RATE_LIMITED = ("You have run out of API credits for the current minute. {used} API credits were used, with the "
                "current limit being {limit}. Wait for the next minute or consider switching to a higher tier "
                "plan at https://twelvedata.com/pricing")
BAD_KEY = ("**apikey** parameter is incorrect or not specified. You can get your free API key instantly "
           "following this link: https://twelvedata.com/pricing")


class RestError(Exception):
    """A Twelve Data error answer: ``code`` (400, 401, 404, 429) and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Bar:
    """One synthetic one-minute bar, unrounded; ``volume`` is None for forex and metals."""

    open: float
    high: float
    low: float
    close: float
    volume: int | None


def _unit(symbol: str, minute: int, tag: str) -> float:
    """A stable pseudo-random number in [0, 1) for (symbol, minute, tag)."""
    return zlib.crc32(f"{symbol}|{minute}|{tag}".encode()) / 2**32


def synthetic_bar(instrument: Instrument, minute: int) -> Bar:
    """The bar of ``instrument`` for the minute starting at ``minute * 60`` Unix seconds (deterministic).

    A slow wave around the instrument's start price (±2 % over ~25 h) plus
    per-minute noise; high ≥ max(open, close), low ≤ min(open, close).
    """
    symbol = instrument.symbol
    base = instrument.start_price * (1.0 + 0.02 * math.sin(minute / 240.0))
    spread = 0.002
    open_ = base * (1.0 + (_unit(symbol, minute, "o") - 0.5) * spread)
    close = base * (1.0 + (_unit(symbol, minute, "c") - 0.5) * spread)
    high = max(open_, close) * (1.0 + _unit(symbol, minute, "h") * spread / 2)
    low = min(open_, close) * (1.0 - _unit(symbol, minute, "l") * spread / 2)
    volume = None if instrument.kind in (FOREX, METAL) else 1 + int(_unit(symbol, minute, "v") * 10_000)
    return Bar(open_, high, low, close, volume)


def format_value(value: float, dp: int) -> str:
    """``value`` with exactly ``dp`` decimals, as Twelve Data writes prices."""
    return f"{value:.{dp}f}"


def exchange_timezone(instrument: Instrument) -> str:
    """The IANA zone ``timezone=Exchange`` means for ``instrument`` (UTC for crypto, forex, metals)."""
    return _MIC_TIMEZONES.get(instrument.mic_code, "UTC") if instrument.kind == STOCK else "UTC"


def _meta(instrument: Instrument, zone: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"symbol": instrument.symbol, "interval": "1min"}
    if instrument.kind == STOCK:
        meta.update(currency=instrument.currency, exchange_timezone=zone, exchange=instrument.exchange,
                    mic_code=instrument.mic_code, type=instrument.type)
    else:
        meta.update(currency_base=instrument.currency_base, currency_quote=instrument.currency_quote)
        if instrument.kind == CRYPTO:
            meta.update(exchange=instrument.exchange)
        meta.update(type=instrument.type)
    return meta


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise RestError(400, f"**{name}** must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise RestError(400, f"**{name}** must be in range [{low}, {high}], got {value}")
    return value


def _parse_date(text: str, name: str, zone: tzinfo) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RestError(400, f"**{name}** parameter is incorrect: {text!r} (use YYYY-MM-DD HH:MM:SS)") from None
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment


def recorded_bar(tape: Tape | None, instrument: Instrument, minute: int) -> Bar | None:
    """REST's bar for ``minute``: from the ``tape`` when it has one (None: the market was closed), else synthetic."""
    if tape is None:
        return synthetic_bar(instrument, minute)
    streamed = tape.streamed(instrument.symbol, minute)
    if streamed is not None:
        o, h, lo, c, volume = streamed
        return Bar(o, h, lo, c, None if volume is None else int(volume))
    return None if tape.was_closed(instrument, minute * 60) else synthetic_bar(instrument, minute)


def time_series(catalog: Catalog, params: dict[str, str], now: float, tape: Tape | None = None) -> dict[str, Any]:
    """Answer one ``/time_series`` query (``params``: first value of each query parameter) at Unix time ``now``.

    With a ``tape`` (``FeedServer(record_bars=True)``) the bars agree with what the feed streamed and leave
    out the minutes its market was closed (``recorded_bar``); a range with no bar left is "no data".

    Raises ``RestError`` for anything Twelve Data would refuse (see the module docstring).
    """
    symbol = params.get("symbol", "").strip()
    if not symbol:
        raise RestError(400, "**symbol** parameter is missing or invalid")
    if "," in symbol:
        raise RestError(400, "batch requests are not supported by the local feed: one symbol per request")
    if params.get("interval") != "1min":
        raise RestError(400, f"**interval** {params.get('interval')!r} is not supported by the local feed "
                             "(only 1min)")
    instrument = catalog.lookup(symbol)
    if instrument is None:
        raise RestError(404, f"**symbol** {symbol} not found. Please specify it correctly.")
    zone_name = params.get("timezone") or "Exchange"
    if zone_name.lower() == "exchange":
        zone_name = exchange_timezone(instrument)
    try:
        zone: tzinfo = timezone.utc if zone_name.upper() == "UTC" else ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RestError(400, f"**timezone** {zone_name!r} is not a valid timezone") from None
    dated = bool(params.get("start_date") or params.get("end_date"))
    outputsize = _int_param(params, "outputsize", MAX_OUTPUTSIZE if dated else DEFAULT_OUTPUTSIZE,
                            1, MAX_OUTPUTSIZE)
    dp = _int_param(params, "dp", DEFAULT_DP, 0, MAX_DP)
    order = (params.get("order") or "desc").lower()
    if order not in ("asc", "desc"):
        raise RestError(400, f"**order** must be asc or desc, got {params.get('order')!r}")
    last = int(now // 60)  # the current (still forming) minute is the newest bar
    hi = last + 1
    lo = None
    if params.get("end_date"):
        end = _parse_date(params["end_date"], "end_date", zone).timestamp()
        hi = min(hi, math.ceil(end / 60))
    if params.get("start_date"):
        lo = math.ceil(_parse_date(params["start_date"], "start_date", zone).timestamp() / 60)
    first = hi - outputsize if lo is None else max(lo, hi - outputsize)
    if first >= hi:
        raise RestError(400, NO_DATA)
    values = []
    for minute in range(hi - 1, first - 1, -1):
        bar = recorded_bar(tape, instrument, minute)
        if bar is None:
            continue
        stamp = datetime.fromtimestamp(minute * 60, zone).strftime("%Y-%m-%d %H:%M:%S")
        row = {"datetime": stamp, "open": format_value(bar.open, dp), "high": format_value(bar.high, dp),
               "low": format_value(bar.low, dp), "close": format_value(bar.close, dp)}
        if bar.volume is not None:
            row["volume"] = str(bar.volume)
        values.append(row)
    if not values:
        raise RestError(400, NO_DATA)
    if order == "asc":
        values.reverse()
    return {"meta": _meta(instrument, zone_name), "values": values, "status": "ok"}


def _json_response(payload: dict[str, Any] | list[Any], status: int = 200) -> Response:
    body = orjson.dumps(payload)
    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Length", str(len(body))), ("Content-Type", "application/json; charset=utf-8")])
    return Response(status, "OK" if status == 200 else "Error", headers, body)


def _error(code: int, message: str) -> Response:
    return _json_response({"code": code, "message": message, "status": "error"})


class RestApi:
    """The REST endpoints of one feed: request counters, the ``rate_limit`` fault, the key check.

    ``handle`` runs on the feed's event-loop thread (it reads the catalog,
    which is not thread-safe); ``inject``, ``clear``, ``counts`` and
    ``rate_limited`` are thread-safe. ``api_key`` None accepts any non-empty key.
    """

    def __init__(self, catalog: Catalog, *, api_key: str | None = None,
                 clock: Callable[[], float] = time.time, tape: Tape | None = None) -> None:
        self.catalog = catalog
        self.tape = tape
        self.api_key = api_key
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._limited_left = 0
        self._limited_sent = 0
        #: Upper-case MIC codes or names of the exchanges /market_state calls closed.
        self._closed: frozenset[str] = frozenset()

    def set_market(self, exchange: str, *, open: bool) -> None:
        """Make ``/market_state`` call ``exchange`` (MIC code or name) open or closed; thread-safe."""
        key = exchange.strip().upper()
        with self._lock:
            self._closed = self._closed - {key} if open else self._closed | {key}

    def inject(self, fault: str, *, count: int = 1, **unknown: Any) -> None:
        """Arm ``rate_limit``: the next ``count`` ``/time_series`` requests get 429. Adds to any still armed.

        Raises ``ValueError`` for another fault, another parameter or a count below 1.
        """
        if fault not in REST_FAULTS:
            raise ValueError(f"unknown REST fault {fault!r}; expected one of {', '.join(sorted(REST_FAULTS))}")
        if unknown:
            raise ValueError(f"fault {fault!r} takes no parameter {', '.join(sorted(unknown))} (allowed: count)")
        if int(count) < 1:
            raise ValueError(f"fault {fault!r}: count must be at least 1")
        with self._lock:
            self._limited_left += int(count)

    def clear(self, fault: str | None = None) -> None:
        """Disarm ``rate_limit`` (when ``fault`` is it or None)."""
        if fault in (None, *REST_FAULTS):
            with self._lock:
                self._limited_left = 0

    def counts(self) -> dict[str, int]:
        """Requests received per REST path since start (429 answers included)."""
        with self._lock:
            return dict(self._counts)

    @property
    def rate_limited(self) -> int:
        """How many requests were answered 429 so far."""
        with self._lock:
            return self._limited_sent

    def _key_ok(self, key: str) -> bool:
        if not key:
            return False
        return self.api_key is None or hmac.compare_digest(key.encode(), self.api_key.encode())

    def handle(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer ``request`` if its path is a REST endpoint; None hands it on to the websocket handshake."""
        parts = urlsplit(request.path)
        path = parts.path.rstrip("/") or "/"
        if path not in REST_PATHS:
            return None
        params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        auth = request.headers.get("Authorization", "")
        key = (params.pop("apikey", "") or request.headers.get("X-TD-APIKEY", "")
               or (auth[7:].strip() if auth.lower().startswith("apikey ") else ""))
        with self._lock:
            self._counts[path] += 1
            limited = path == "/time_series" and self._limited_left > 0 and self._key_ok(key)
            if limited:
                self._limited_left -= 1
                self._limited_sent += 1
        if not self._key_ok(key):
            return _error(401, BAD_KEY)
        if limited:
            return _error(429, RATE_LIMITED.format(used=PLAN_LIMIT + 1, limit=PLAN_LIMIT))
        now = self._clock()
        if path == "/technical_indicators":
            return _json_response({"data": {}, "status": "ok"})
        if path == "/api_usage":
            with self._lock:
                used = sum(self._counts[p] for p in CREDIT_PATHS)
            stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            return _json_response({"timestamp": stamp, "current_usage": used, "plan_limit": PLAN_LIMIT,
                                   "plan_category": "local"})
        try:
            if path == "/market_state":
                return _json_response(market_state(self.catalog, self._closed, params))
            if path in REFERENCE_PATHS:
                return _json_response(reference_list(self.catalog, path, params))
            return _json_response(time_series(self.catalog, params, now, self.tape))
        except (RestError, ReferenceError) as exc:
            return _error(exc.code, exc.message)


def minute_of(moment: datetime) -> int:
    """The minute number (Unix seconds // 60) holding the aware datetime ``moment``."""
    return int(moment.timestamp() // 60)


def minute_start(minute: int) -> datetime:
    """The aware UTC start of minute number ``minute``."""
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minute)
