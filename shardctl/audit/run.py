"""One audit, end to end: the config's symbols over a window of minutes → an ``AuditReport``.

``run_audit`` reads the facts (``readout``), classifies every minute
(``classify``) and, with ``online``, asks REST about the minutes still
unexplained (``online``) and classifies again. Used by ``shardctl audit``
and by the supervisor's ``[audit]`` schedule.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from shardctl.audit.classify import (
    AuditedSymbol,
    MinuteClass,
    SymbolAudit,
    SymbolFacts,
    classify_symbol,
    collecting_minutes,
    gap_minutes,
)
from shardctl.audit.online import ask_rest
from shardctl.audit.readout import read_facts
from shardctl.config.model import Config
from shardctl.db.collection import collection_stretches
from shardctl.db.connection import connect
from shardctl.errors import UsageError

__all__ = ["AuditReport", "AuditedSymbol", "run_audit", "minute_stamp", "unscheduled_shards"]


@dataclass(frozen=True)
class AuditReport:
    """The audit of minutes ``first``..``last`` (minute numbers): one ``SymbolAudit`` per symbol, config order."""

    first: int
    last: int
    online: bool
    symbols: tuple[SymbolAudit, ...]
    #: Minutes with ticks found in the candles, and minutes probed in the ticks' index.
    from_candles: int = 0
    probes: int = 0
    rest_requests: int = 0
    rest_errors: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def minutes(self) -> int:
        return self.last - self.first + 1

    @property
    def totals(self) -> dict[MinuteClass, int]:
        """Minutes per class over every symbol."""
        out = dict.fromkeys(MinuteClass, 0)
        for audit in self.symbols:
            for cls, n in audit.counts.items():
                out[cls] += n
        return out

    @property
    def unexplained(self) -> int:
        return self.totals[MinuteClass.UNEXPLAINED]


def _utc(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, timezone.utc)


def minute_stamp(minute: int) -> str:
    """``2026-11-27 21:40`` (UTC) for a minute number."""
    return datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%Y-%m-%d %H:%M")


def configured_symbols(config: Config, only: Sequence[str] = ()) -> list[AuditedSymbol]:
    """The config's symbols in order (only those named in ``only``, by config text or bare symbol, if given)."""
    out = [AuditedSymbol(text, text.partition(":")[0].strip(), shard.name, shard.settings.market_hours)
           for shard in config.shards.values() for text in shard.symbols]
    if only:
        wanted = set(only)
        unknown = wanted - {s.text for s in out} - {s.symbol for s in out}
        if unknown:
            raise UsageError(f"--symbol {', '.join(sorted(unknown))}: not in {config.path}; the audit covers the "
                             "config's symbols")
        out = [s for s in out if s.text in wanted or s.symbol in wanted]
    return out


def unscheduled_shards(config: Config) -> list[str]:
    """Shards whose ``market_hours`` is "auto": the audit has no calendar for their past and reads them open."""
    return [shard.name for shard in config.shards.values()
            if not shard.settings.market_hours.scheduled]


def unscheduled_note(config: Config) -> str | None:
    """One line for the user naming the shards the audit reads as always open, and the fix; None when none."""
    names = unscheduled_shards(config)
    if not names:
        return None
    return (f"note: {', '.join(names)}: market_hours = \"auto\" has no calendar for the past, so the audit reads "
            "every minute as open (nights and weekends may show as unexplained); set market_hours in "
            f"{config.path} (\"24/7\", \"forex\", \"XNYS\", ...)")


def run_audit(config: Config, dsn: str, first: int, last: int, *, only: Sequence[str] = (), online: bool = False,
              api_key: str | None = None, tolerance: float = 1e-6) -> AuditReport:
    """Audit minutes first..last of the config's symbols (see the module docstring).

    ``online`` needs ``api_key``; REST requests go through one ``CreditLimiter``
    of ``backfill.credits_per_minute``. Raises DatabaseError / DatabaseUnavailable.
    """
    if last < first:
        raise UsageError("the audit window is empty: --to must come after --from")
    started = time.monotonic()
    entries = configured_symbols(config, only)
    calendars = {e.market_hours: e.market_hours.open_minutes(first, last) for e in entries}
    hours_of = {e.symbol: calendars[e.market_hours] for e in entries}

    def probe_mask(_symbol: str, collecting_from: int | None) -> list[bool]:
        if collecting_from is None:
            return [False] * (last - first + 1)
        return [first + i >= collecting_from for i in range(last - first + 1)]

    conn = connect(dsn, application_name="shardctl audit")
    try:
        db = read_facts(conn, config.tables, [e.symbol for e in entries], sorted({e.shard for e in entries}),
                        first, last, probe_mask)
        stretches = collection_stretches(conn, [e.symbol for e in entries], _utc(first), _utc(last + 1))
    finally:
        conn.close()
    gaps_of = {shard: gap_minutes(spans, first, last) for shard, spans in db.gaps.items()}
    facts = [SymbolFacts(e.symbol, e.shard, first, last, db.ticks[e.symbol], db.backfilled[e.symbol],
                         gaps_of[e.shard], hours_of[e.symbol],
                         collecting_minutes(stretches[e.symbol], db.first_tick.get(e.symbol), first, last))
             for e in entries]
    audits = [classify_symbol(f, tolerance) for f in facts]
    requests, errors = 0, list[str]()
    if online:
        if not api_key:
            raise UsageError(f"--online needs a Twelve Data API key in ${config.source.api_key_env}")
        answers = ask_rest(config, dsn, api_key, entries, audits)
        requests, errors = answers.requests, answers.errors
        facts = [f if f.symbol not in answers.bars else
                 dataclasses.replace(f, rest=answers.bars[f.symbol], rest_asked=answers.asked[f.symbol])
                 for f in facts]
        audits = [classify_symbol(f, tolerance) for f in facts]
    return AuditReport(first, last, online, tuple(audits), db.from_candles, db.probes, requests, tuple(errors),
                       round(time.monotonic() - started, 3))
