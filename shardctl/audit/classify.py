"""The audit's classes and rules: one class per (symbol, minute), from facts; pure, no I/O.

Minutes are numbers (Unix seconds // 60). For one minute of one symbol, the
first rule that holds decides:

    ticks        at least one tick stored in the minute
    closed       its market was closed (the shard's calendar, ``shardctl.markethours``)
    off          shardctl was not collecting the symbol: outside every stretch its supervisor recorded
                 (``shardctl_collection``: before its shard first streamed it, after its removal, while
                 its shard was stopped on purpose), or, with no stretch recorded, before its first tick
    backfilled   no tick, but a REST bar stored (``shardctl_bars``)
    gap          inside a gap its shard recorded (and not filled)
    quiet        market open, no tick, no gap, and REST confirms nothing traded (no bar, or zero volume)
    unexplained  market open, no tick, no gap, and REST has a bar that traded (``--online``), or REST was not asked
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Mapping, Sequence

from shardctl.markethours import MarketHours

__all__ = ["AuditedSymbol", "MinuteClass", "RestBar", "TickMinute", "SymbolFacts", "Quality", "SymbolAudit",
           "classify_symbol", "collecting_minutes", "gap_minutes", "EXPECTED"]


class MinuteClass(enum.Enum):
    """What one minute of one symbol holds; ``value`` is the name in JSON and text."""

    TICKS = "ticks"
    BACKFILLED = "backfilled"
    CLOSED = "closed"
    OFF = "off"
    GAP = "gap"
    QUIET = "quiet"
    UNEXPLAINED = "unexplained"


#: Classes of minutes in which data could have been collected: completeness counts over these.
EXPECTED = frozenset({MinuteClass.TICKS, MinuteClass.BACKFILLED, MinuteClass.GAP, MinuteClass.UNEXPLAINED})


@dataclass(frozen=True)
class AuditedSymbol:
    """One configured symbol: its text in the config, as stored (no ``:EXCHANGE``), its shard and calendar."""

    text: str
    symbol: str
    shard: str
    market_hours: MarketHours


@dataclass(frozen=True)
class TickMinute:
    """A minute with ticks: the last tick's price (the candle's close) and day volume."""

    close: float | None
    day_volume: Decimal | None


@dataclass(frozen=True)
class RestBar:
    """One REST one-minute bar: its close and volume (None: the instrument has no volume, e.g. forex)."""

    close: float
    volume: Decimal | None

    @property
    def traded(self) -> bool:
        """True unless the bar says nothing traded (zero volume)."""
        return self.volume is None or self.volume > 0


@dataclass(frozen=True)
class SymbolFacts:
    """What is known of one symbol over minutes ``first``..``last``."""

    symbol: str
    shard: str
    first: int
    last: int
    #: Minutes with at least one stored tick.
    ticks: Mapping[int, TickMinute]
    #: Minutes with a stored REST bar (backfill).
    backfilled: frozenset[int]
    #: Minutes overlapping a gap recorded by the symbol's shard.
    gaps: frozenset[int]
    #: One flag per minute first..last: the market was open at the minute's start.
    market_open: Sequence[bool]
    #: One flag per minute first..last: shardctl meant to collect the symbol then.
    collecting: Sequence[bool]
    #: ``--online``: REST's bars over the minutes it was asked about (None: not asked).
    rest: Mapping[int, RestBar] | None = None
    #: ``--online``: the minutes REST was asked about (a minute outside is not confirmed either way).
    rest_asked: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Quality:
    """Tick-derived candles against REST bars over minutes that have both."""

    compared: int = 0
    close_mismatches: int = 0
    volume_compared: int = 0
    volume_mismatches: int = 0


@dataclass(frozen=True)
class SymbolAudit:
    """One symbol's classes, minute by minute from ``first``, and its summary."""

    symbol: str
    shard: str
    first: int
    classes: tuple[MinuteClass, ...]
    quality: Quality = field(default_factory=Quality)

    def count(self, cls: MinuteClass) -> int:
        return sum(1 for c in self.classes if c is cls)

    @property
    def counts(self) -> dict[MinuteClass, int]:
        """Minutes per class (every class present, zero included)."""
        out = dict.fromkeys(MinuteClass, 0)
        for c in self.classes:
            out[c] += 1
        return out

    @property
    def completeness(self) -> float | None:
        """Percent of the minutes that could hold data (ticks, backfilled, gap, unexplained) that do; None if none."""
        counts = self.counts
        expected = sum(counts[c] for c in EXPECTED)
        return None if expected == 0 else round(100.0 * (counts[MinuteClass.TICKS] + counts[MinuteClass.BACKFILLED])
                                                 / expected, 3)

    @property
    def longest_unexplained(self) -> tuple[int, int] | None:
        """(first minute, length in minutes) of the longest unexplained stretch, or None."""
        best: tuple[int, int] | None = None
        run_start, run = 0, 0
        for i, c in enumerate((*self.classes, None)):
            if c is MinuteClass.UNEXPLAINED:
                run_start, run = (run_start, run + 1) if run else (i, 1)
                continue
            if run and (best is None or run > best[1]):
                best = (self.first + run_start, run)
            run = 0
        return best


def collecting_minutes(stretches: Sequence[tuple[float, float | None]], first_tick: int | None, first: int,
                       last: int) -> list[bool]:
    """Per minute first..last: inside a recorded collection stretch (end None: open) that covers the minute's
    start, or, before the first recorded stretch (none at all: ever), at or after the symbol's first tick."""
    out = [False] * (last - first + 1)
    recorded_from = min((start for start, _ in stretches), default=None)
    for i in range(len(out)):
        t = (first + i) * 60
        if recorded_from is None or t < recorded_from:
            out[i] = first_tick is not None and first + i >= first_tick
        else:
            out[i] = any(start <= t + 59 and (stop is None or t < stop) for start, stop in stretches)
    return out


def gap_minutes(spans: Sequence[tuple[float, float]], first: int, last: int) -> frozenset[int]:
    """The minutes first..last that overlap any [start, end) span of Unix seconds."""
    out: set[int] = set()
    for lo, hi in spans:
        a = max(first, math.floor(lo / 60))
        b = min(last, math.ceil(hi / 60) - 1)  # the last minute starting before hi
        out.update(range(a, b + 1))
    return frozenset(out)


def classify_minute(facts: SymbolFacts, minute: int) -> MinuteClass:
    """The class of one minute (see the module docstring for the rules, in order)."""
    if minute in facts.ticks:
        return MinuteClass.TICKS
    if not facts.market_open[minute - facts.first]:
        return MinuteClass.CLOSED
    if not facts.collecting[minute - facts.first]:
        return MinuteClass.OFF
    if minute in facts.backfilled:
        return MinuteClass.BACKFILLED
    if minute in facts.gaps:
        return MinuteClass.GAP
    if facts.rest is not None and minute in facts.rest_asked:
        bar = facts.rest.get(minute)
        if bar is None or not bar.traded:
            return MinuteClass.QUIET
    return MinuteClass.UNEXPLAINED


def compare_quality(facts: SymbolFacts, tolerance: float) -> Quality:
    """Count close (and, between two minutes with ticks, volume) discrepancies beyond ``tolerance`` (relative)."""
    if not facts.rest:
        return Quality()
    compared = close_bad = vol_compared = vol_bad = 0
    for minute, bar in facts.rest.items():
        tick = facts.ticks.get(minute)
        if tick is None or tick.close is None:
            continue
        compared += 1
        if abs(tick.close - bar.close) > tolerance * max(abs(bar.close), 1e-12):
            close_bad += 1
        before = facts.ticks.get(minute - 1)
        if bar.volume is None or tick.day_volume is None or before is None or before.day_volume is None:
            continue
        vol_compared += 1
        if abs((tick.day_volume - before.day_volume) - bar.volume) > Decimal(tolerance) * max(bar.volume, Decimal(1)):
            vol_bad += 1
    return Quality(compared, close_bad, vol_compared, vol_bad)


def classify_symbol(facts: SymbolFacts, tolerance: float = 1e-6) -> SymbolAudit:
    """Every minute of ``facts`` classified, with the data-quality figures when REST was asked."""
    classes = tuple(classify_minute(facts, m) for m in range(facts.first, facts.last + 1))
    return SymbolAudit(facts.symbol, facts.shard, facts.first, classes, compare_quality(facts, tolerance))
