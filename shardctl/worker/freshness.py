"""Per-symbol freshness: when each symbol last ticked, how late its ticks arrive, and which ones are stale.

The worker calls ``FreshnessTracker.observe_ticks`` once per burst with its
price events; it is the hot path, so per tick it only stores two floats in the symbol's slot (a ring of the
last ``RING`` delays). Everything else happens at report time, every few
seconds: ``snapshot`` sorts each ring for its p50/p99 and judges staleness.

A symbol is stale when its market is not closed and no tick came for
``stale_after`` seconds: since its last tick, or, when it never ticked,
since the tracker started watching it. A closed market (``MARKET_CLOSED``,
from ``shardctl.worker.markets``) is never stale: a stock that does not
tick at night is fine. Every time comes from the caller, so tests inject a clock.

A symbol is slow (a silent slowdown: it still ticks, so it is never stale)
when its market is not closed and its recent tick rate fell below
``slow_below`` × its own normal rate. Both rates are exponentially weighted
and updated at report time from the tick count (``observe`` only counts):
the recent one with a time constant of ``slow_window / 10``, the normal one
with ``slow_window``. The normal rate is not updated while the symbol is
slow or its market closed (a slowdown does not become the new normal), and a
symbol is judged only once its normal rate promises at least
``MIN_EXPECTED`` ticks per recent time constant (a thin symbol is not slow
by chance) and it has been measured for ``slow_window / 10``.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

from shardctl.report import MARKET_CLOSED, MARKET_UNKNOWN, Market, SymbolFreshness
from shardctl.rows import Tick

#: Delays kept per symbol: percentiles are over the symbol's last RING ticks. A power of two (the ring index is masked).
RING = 128
_MASK = RING - 1
#: Ticks the normal rate must promise per recent time constant before a symbol can be judged slow.
MIN_EXPECTED = 20.0


class _Slot:
    """One symbol's ring of delays; ``count`` is how many ticks it has seen (the ring holds the last RING)."""

    __slots__ = ("last_at", "delays", "count", "since", "rate_count", "rate_at", "recent", "normal", "measured")

    def __init__(self, since: float) -> None:
        self.last_at: float | None = None
        self.delays = [0.0] * RING
        self.count = 0
        #: When the tracker started watching the symbol: a symbol that never ticks turns stale from here.
        self.since = since
        #: Slowdown: the count and time of the last rate update, the two rates (ticks/s), seconds measured.
        self.rate_count = 0
        self.rate_at = since
        self.recent: float | None = None
        self.normal: float | None = None
        self.measured = 0.0

    def update_rates(self, now: float, closed: bool, window: float, below: float) -> bool:
        """Fold the ticks since the last update into both rates; True when the symbol is slow now."""
        dt = now - self.rate_at
        if dt <= 0:
            return self._slow(closed, window, below)
        rate = (self.count - self.rate_count) / dt
        self.rate_count, self.rate_at = self.count, now
        if closed:
            self.recent, self.measured = None, 0.0  # a market that reopens starts its recent rate afresh
            return False
        fast = 1.0 - math.exp(-dt / (window / 10))
        self.recent = rate if self.recent is None else self.recent + fast * (rate - self.recent)
        self.measured += dt
        slow = self._slow(closed, window, below)
        if not slow:
            self.normal = rate if self.normal is None else self.normal + (1.0 - math.exp(-dt / window)) * (
                rate - self.normal)
        return slow

    def _slow(self, closed: bool, window: float, below: float) -> bool:
        if closed or below <= 0 or self.recent is None or self.normal is None or self.measured < window / 10:
            return False
        return self.normal * window / 10 >= MIN_EXPECTED and self.recent < below * self.normal


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q ≤ 1) of a non-empty sorted list."""
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q), at least 1
    return ordered[int(rank) - 1]


class FreshnessTracker:
    """Last-tick times and receipt delays of a shard's symbols; ``observe`` per tick, ``snapshot`` per report."""

    def __init__(self, symbols: Iterable[str], stale_after: float, now: float, *, slow_below: float = 0.0,
                 slow_window: float = 600.0) -> None:
        self.stale_after = stale_after
        self.slow_below, self.slow_window = slow_below, slow_window
        self._slots: dict[str, _Slot] = {}
        self.set_symbols(symbols, now)

    def set_symbols(self, symbols: Iterable[str], now: float) -> None:
        """Watch exactly ``symbols``: new ones start their stale clock at ``now``, removed ones are forgotten."""
        wanted = list(dict.fromkeys(symbols))
        self._slots = {s: self._slots.get(s) or _Slot(now) for s in wanted}

    def observe(self, symbol: str, event_ts: float, received_at: float) -> None:
        """Record one tick: ``event_ts`` is its own timestamp, ``received_at`` when it came (Unix seconds)."""
        slot = self._slots.get(symbol)
        if slot is None:  # a symbol the server sends without being asked (or a removed one still in flight)
            slot = self._slots[symbol] = _Slot(received_at)
        slot.last_at = received_at
        slot.delays[slot.count & _MASK] = received_at - event_ts
        slot.count += 1

    def observe_ticks(self, ticks: Sequence[Tick], received_at: float) -> None:
        """``observe`` each of ``ticks``, all received at ``received_at`` (one burst: the worker's hot path)."""
        slots = self._slots
        moment, ts = None, 0.0
        for tick in ticks:
            if tick.time is not moment:  # the ticks of one second share their datetime (the parser's cache)
                moment = tick.time
                ts = moment.timestamp()
            slot = slots.get(tick.symbol)
            if slot is None:
                slot = slots[tick.symbol] = _Slot(received_at)
            slot.last_at = received_at
            slot.delays[slot.count & _MASK] = received_at - ts
            slot.count += 1

    def snapshot(self, now: float,
                 markets: Mapping[str, Market] | Callable[[str], Market]) -> tuple[SymbolFreshness, ...]:
        """Every watched symbol's record at ``now``; ``markets`` gives each symbol's MARKET_* value."""
        market_of = markets if callable(markets) else (lambda s: markets.get(s, MARKET_UNKNOWN))
        out = []
        for symbol, slot in self._slots.items():
            p50 = p99 = None
            if slot.count:
                ordered = sorted(slot.delays[:min(slot.count, RING)])
                p50, p99 = round(percentile(ordered, 0.5), 3), round(percentile(ordered, 0.99), 3)
            market = market_of(symbol)
            quiet_since = slot.last_at if slot.last_at is not None else slot.since
            stale = market != MARKET_CLOSED and now - quiet_since > self.stale_after
            slow = slot.update_rates(now, market == MARKET_CLOSED, self.slow_window, self.slow_below)
            out.append(SymbolFreshness(symbol, slot.last_at, p50, p99, market, stale, _per_minute(slot.recent),
                                       _per_minute(slot.normal), slow and not stale))
        return tuple(out)


def _per_minute(rate: float | None) -> float | None:
    return None if rate is None else round(rate * 60.0, 3)
