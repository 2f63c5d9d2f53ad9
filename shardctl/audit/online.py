"""``--online``: ask Twelve Data's REST ``time_series`` about the minutes the database cannot explain.

For each symbol with unexplained minutes, one span from its first to its
last such minute is fetched (one request per 4,999 minutes) through a
``Backfiller``'s credit limiter and retries, so the audit spends credits
like backfill does (``backfill.credits_per_minute``). Every minute of the
span counts as asked: a minute without a bar, or with zero volume, is quiet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from shardctl.audit.classify import AuditedSymbol, MinuteClass, RestBar, SymbolAudit
from shardctl.config.model import Config
from shardctl.worker.backfill import Backfiller, RestUnavailable

__all__ = ["RestAnswers", "ask_rest"]


@dataclass(frozen=True)
class RestAnswers:
    """Per symbol (as stored): the bars REST gave and the minutes it was asked about; requests made; errors."""

    bars: dict[str, dict[int, RestBar]]
    asked: dict[str, frozenset[int]]
    requests: int
    errors: list[str]


def ask_rest(config: Config, dsn: str, api_key: str, entries: Sequence[AuditedSymbol],
             audits: Sequence[SymbolAudit]) -> RestAnswers:
    """REST's bars over each symbol's span of unexplained minutes (see the module docstring)."""
    rest = Backfiller(dsn, "audit", [e.text for e in entries], rest_url=config.source.rest_url, api_key=api_key,
                      rate_limit_per_minute=config.backfill.credits_per_minute, dp=config.backfill.dp,
                      max_attempts=config.backfill.max_attempts)
    bars: dict[str, dict[int, RestBar]] = {}
    asked: dict[str, frozenset[int]] = {}
    errors: list[str] = []
    for entry, audit in zip(entries, audits):
        wanted = [audit.first + i for i, c in enumerate(audit.classes) if c is MinuteClass.UNEXPLAINED]
        if not wanted:
            continue
        try:
            rows = rest.fetch_bars(entry.text, wanted[0], wanted[-1])
        except RestUnavailable as exc:
            errors.append(str(exc))
            continue
        bars[entry.symbol] = {int(row[1].timestamp() // 60): RestBar(row[5], row[6]) for row in rows}
        asked[entry.symbol] = frozenset(range(wanted[0], wanted[-1] + 1))
    return RestAnswers(bars, asked, rest.requests, errors)
