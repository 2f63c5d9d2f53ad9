"""What the local feed streamed, minute by minute, so its REST ``time_series`` agrees with its stream.

``Tape.record`` folds each streamed tick into its symbol's one-minute bar
(open, high, low, close, and the minute's volume as the rise of
``day_volume``); ``close_market``/``open_market`` keep when an exchange was
closed. ``Tape.bar`` answers REST for one (instrument, minute): the bar
built from what was streamed; no bar at all when the instrument's market
was closed at the minute's start; otherwise the synthetic bar: the market
traded but the feed did not stream it (a mute, a slowdown, a disconnected
client), which is what REST shows for a silent loss.

``record`` runs on the feed's loop thread only (like ``bar``); the market
history takes a lock (tests close markets from their own thread).
"""

from __future__ import annotations

import threading

from shardctl.feed.catalog import Instrument, PriceState

__all__ = ["Tape"]

class Tape:
    """Streamed bars per (symbol, minute) and closed stretches per exchange (see the module docstring)."""

    def __init__(self) -> None:
        #: (symbol, minute) -> [open, high, low, close, volume or -1 when the instrument has none]
        self._bars: dict[tuple[str, int], list[float]] = {}
        self._day_volume: dict[str, int] = {}
        self._lock = threading.Lock()
        #: Upper-case MIC code or exchange name -> [[closed_from, closed_to or None], ...] (Unix seconds)
        self._closed: dict[str, list[list[float | None]]] = {}

    def record(self, state: PriceState, timestamp: int) -> None:
        """Fold one streamed tick (``state`` after ``Catalog.tick``) into its minute's bar."""
        symbol, price = state.instrument.symbol, round(state.price, state.decimals)  # the price as sent
        increase = -1.0
        if state.has_volume:
            before = self._day_volume.get(symbol)
            increase = float(state.day_volume - before) if before is not None else 0.0
            self._day_volume[symbol] = state.day_volume
        key = (symbol, timestamp // 60)
        bar = self._bars.get(key)
        if bar is None:
            self._bars[key] = [price, price, price, price, increase]
            return
        bar[1], bar[2], bar[3] = max(bar[1], price), min(bar[2], price), price
        if increase >= 0:
            bar[4] += increase

    def streamed(self, symbol: str, minute: int) -> tuple[float, float, float, float, float | None] | None:
        """The bar built from what was streamed of ``symbol`` in ``minute`` (volume None: no volume), or None."""
        bar = self._bars.get((symbol, minute))
        if bar is None:
            return None
        return bar[0], bar[1], bar[2], bar[3], (None if bar[4] < 0 else bar[4])

    def close_market(self, exchange: str, at: float) -> None:
        """``exchange`` (MIC code or name) is closed from ``at`` on."""
        with self._lock:
            spans = self._closed.setdefault(exchange.strip().upper(), [])
            if not spans or spans[-1][1] is not None:
                spans.append([at, None])

    def open_market(self, exchange: str, at: float) -> None:
        """``exchange`` trades again from ``at`` on."""
        with self._lock:
            spans = self._closed.get(exchange.strip().upper())
            if spans and spans[-1][1] is None:
                spans[-1][1] = at

    def was_closed(self, instrument: Instrument, at: float) -> bool:
        """True when ``instrument``'s exchange (by MIC code or name) was closed at Unix time ``at``."""
        with self._lock:
            for key in (instrument.mic_code.upper(), instrument.exchange.upper()):
                for start, end in self._closed.get(key, ()):
                    assert start is not None
                    if start <= at and (end is None or at < end):
                        return True
        return False
