"""Which market each symbol of a shard trades on, and whether that market is open now.

The shard's ``market_hours`` setting decides:

    "auto"   (default) crypto (type "Digital Currency") trades 24/7; every other
             symbol follows its exchange in Twelve Data's ``/market_state``
             (matched by MIC code, else by exchange name), fetched in a thread
             every ``market_state_refresh`` (one API credit a fetch, all
             exchanges at once), and only while some symbol needs it
    "24/7"   every symbol trades all the time (no REST calls): any quiet symbol turns stale
    "forex", "XNYS", "America/New_York 09:30-16:00"...   a schedule (``shardctl.markethours``, the
             calendar ``shardctl audit`` uses too): open or closed by the wall clock, no REST calls

A symbol's exchange, MIC and type come from the server's subscribe-status
``success`` entries (``learn``). A symbol whose exchange is not known (yet),
or is not in the list (forex pairs), is ``MARKET_UNKNOWN``, which counts as
open: it may turn stale. A failed fetch keeps the last known states and is
logged once per distinct error.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from shardctl.markethours import ALWAYS, AUTO, MarketHours
from shardctl.report import MARKET_ALWAYS, MARKET_CLOSED, MARKET_OPEN, MARKET_UNKNOWN, Market
from shardctl.twelvedata.markets import ExchangeState, MarketStateUnavailable
from shardctl.twelvedata.parse import StatusEvent

log = logging.getLogger("shardctl.worker")

CRYPTO_TYPE = "Digital Currency"
Fetch = Callable[[], Iterable[ExchangeState]]


class MarketWatch:
    """Each symbol's MARKET_* value; ``start`` runs the refresh thread (mode "auto" only), ``stop`` ends it."""

    def __init__(self, hours: MarketHours, fetch: Fetch, refresh: float,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.hours = hours
        self.mode = hours.name
        self._wall = wall
        self._scheduled: tuple[int, Market] = (-1, MARKET_UNKNOWN)  # (second, state): one calendar look per second
        self.refresh = refresh
        self._fetch = fetch
        self._clock = clock
        #: symbol → (MIC code, exchange name lower-case, type), from subscribe-status.
        self._listing: dict[str, tuple[str, str, str]] = {}
        #: MIC code or lower-case exchange name → open now; replaced whole by each fetch.
        self._open: dict[str, bool] = {}
        self.fetched_at: float | None = None
        self.fetches = 0
        self._next = 0.0
        self._last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def learn(self, event: StatusEvent) -> None:
        """Take a subscribe-status event's ``success`` entries: each symbol's MIC, exchange and type."""
        if event.name == "subscribe-status":
            for entry in event.success:
                self._listing[entry.symbol] = (entry.mic_code, entry.exchange.lower(), entry.type)

    def market(self, symbol: str) -> Market:
        """The symbol's MARKET_* value now."""
        if self.mode == ALWAYS:
            return MARKET_ALWAYS
        if self.mode != AUTO:
            second = int(self._wall())
            if self._scheduled[0] != second:
                self._scheduled = (second, MARKET_OPEN if self.hours.is_open(second) else MARKET_CLOSED)
            return self._scheduled[1]
        info = self._listing.get(symbol)
        if info is None:
            return MARKET_UNKNOWN
        mic, exchange, kind = info
        if kind == CRYPTO_TYPE:
            return MARKET_ALWAYS
        table = self._open
        state = table.get(mic) if mic in table else table.get(exchange)
        return MARKET_UNKNOWN if state is None else MARKET_OPEN if state else MARKET_CLOSED

    def needs_exchanges(self) -> bool:
        """True when some symbol's state depends on an exchange (a listed symbol that is not crypto)."""
        return self.mode == AUTO and any(kind != CRYPTO_TYPE for _, _, kind in self._listing.values())

    def refresh_now(self) -> bool:
        """Fetch ``/market_state`` if due and needed; True if it fetched. Errors keep the last states (logged once)."""
        now = self._clock()
        if now < self._next or not self.needs_exchanges():
            return False
        self._next = now + self.refresh
        try:
            exchanges = list(self._fetch())
        except MarketStateUnavailable as exc:
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                log.warning("market hours: %s; keeping the last known states (a symbol of an unknown market "
                            "counts as open)", exc)
            return False
        table: dict[str, bool] = {}
        for ex in exchanges:
            for key in (ex.code, ex.name.lower()):
                if key:
                    table[key] = table.get(key, False) or ex.is_open
        self._open = table
        self.fetched_at = now
        self.fetches += 1
        self._last_error = ""
        return True

    def start(self) -> None:
        """Refresh in a daemon thread (mode "auto"): looks every second, fetches every ``refresh`` when needed."""
        if self.mode != AUTO or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="market-state", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh_now()
            except Exception:  # never let the market clock take the worker down
                log.exception("market hours: refresh failed")
            self._stop.wait(1.0)

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to end and wait up to ``timeout`` (a fetch in flight is abandoned: it is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
