"""The audit's facts from the database: set-based reads, no scan per minute.

``read_facts`` promises, for symbols (bare, as stored) over minutes
first..last:

* the minutes with ticks, with each minute's close and day volume: first
  from the one-minute candles (TimescaleDB's continuous aggregate or
  PostgreSQL's candle table: one range read on their ``(symbol, bucket)``
  key), then, for the minutes the candles do not hold (not materialised
  yet, or late ticks), one index probe per minute on the ticks'
  ``(symbol, time)`` index, all in one statement; minutes the caller masks
  out (before the symbol's first tick) are not probed;
* each symbol's first stored tick ever (one index probe per symbol);
* the REST bars stored by backfill, and the gaps of the given shards.

Works on both flavours; the connection is left without an open transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from shardctl.audit.classify import TickMinute
from shardctl.config.model import TablesConfig
from shardctl.db.candlespec import candle_specs
from shardctl.db.connection import map_error, scalar
from shardctl.db.gaps import BARS_TABLE, GAPS_TABLE

__all__ = ["DbFacts", "read_facts"]


@dataclass(frozen=True)
class DbFacts:
    """What the database says about the audited symbols; ``probes`` and ``from_candles`` count minutes read."""

    ticks: Mapping[str, Mapping[int, TickMinute]]
    backfilled: Mapping[str, frozenset[int]]
    first_tick: Mapping[str, int | None]
    gaps: Mapping[str, tuple[tuple[float, float], ...]]
    from_candles: int
    probes: int


#: Masks the minutes worth probing: (symbol, first minute it collected or None) -> one flag per minute.
ProbeMask = Callable[[str, int | None], Sequence[bool]]


def _minute_candle(tables: TablesConfig) -> str | None:
    return next((spec.table for spec in candle_specs(tables) if spec.interval == "1m"), None)


def _exists(cur: psycopg2.extensions.cursor, name: str) -> bool:
    return bool(scalar(cur, "SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(name).as_string(cur.connection),)))


def read_facts(conn: Connection, tables: TablesConfig, symbols: Sequence[str], shards: Sequence[str],
               first: int, last: int, probe_mask: ProbeMask) -> DbFacts:
    """The facts (see the module docstring); raises DatabaseError / DatabaseUnavailable (one line)."""
    ticks: dict[str, dict[int, TickMinute]] = {s: {} for s in symbols}
    lo, hi = first * 60, (last + 1) * 60
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL TimeZone = 'UTC'")
            cur.execute(sql.SQL("SELECT s, (SELECT floor(extract(epoch FROM min(t.\"time\")) / 60)::bigint FROM {} t "
                                "WHERE t.symbol = s) FROM unnest(%s::text[]) AS s").format(
                sql.Identifier(tables.ticks)), (list(symbols),))
            first_tick = {s: (None if m is None else int(m)) for s, m in cur.fetchall()}
            from_candles = 0
            candle = _minute_candle(tables)
            if candle is not None and _exists(cur, candle):
                cur.execute(sql.SQL("SELECT symbol, floor(extract(epoch FROM bucket) / 60)::bigint, \"close\", "
                                    "day_volume FROM {} WHERE symbol = ANY(%s) AND bucket >= to_timestamp(%s) "
                                    "AND bucket < to_timestamp(%s)").format(sql.Identifier(candle)),
                            (list(symbols), lo, hi))
                for symbol, minute, close, volume in cur.fetchall():
                    ticks[symbol][int(minute)] = TickMinute(close, volume)
                    from_candles += 1
            want_s: list[str] = []
            want_m: list[int] = []
            for symbol in symbols:
                mask, have = probe_mask(symbol, first_tick.get(symbol)), ticks[symbol]
                for i, probe in enumerate(mask):
                    if probe and first + i not in have:
                        want_s.append(symbol)
                        want_m.append(first + i)
            if want_s:
                cur.execute(sql.SQL(
                    "SELECT c.s, c.m, t.price, t.day_volume FROM unnest(%s::text[], %s::bigint[]) AS c(s, m) "
                    "CROSS JOIN LATERAL (SELECT price, day_volume FROM {} WHERE symbol = c.s "
                    "AND \"time\" >= to_timestamp(c.m * 60) AND \"time\" < to_timestamp(c.m * 60 + 60) "
                    "ORDER BY \"time\" DESC, price DESC LIMIT 1) t").format(sql.Identifier(tables.ticks)),
                    (want_s, want_m))
                for symbol, minute, price, volume in cur.fetchall():
                    ticks[symbol][int(minute)] = TickMinute(price, volume)
            backfilled: dict[str, set[int]] = {s: set() for s in symbols}
            if _exists(cur, BARS_TABLE):
                cur.execute(sql.SQL("SELECT symbol, floor(extract(epoch FROM bucket) / 60)::bigint FROM {} "
                                    "WHERE \"interval\" = '1min' AND symbol = ANY(%s) AND bucket >= to_timestamp(%s) "
                                    "AND bucket < to_timestamp(%s)").format(sql.Identifier(BARS_TABLE)),
                            (list(symbols), lo, hi))
                for symbol, minute in cur.fetchall():
                    backfilled[symbol].add(int(minute))
            gaps: dict[str, list[tuple[float, float]]] = {s: [] for s in shards}
            if _exists(cur, GAPS_TABLE):
                cur.execute(sql.SQL("SELECT shard, extract(epoch FROM gap_from)::float8, "
                                    "extract(epoch FROM gap_to)::float8 FROM {} WHERE shard = ANY(%s) "
                                    "AND gap_to > to_timestamp(%s) AND gap_from < to_timestamp(%s) "
                                    "ORDER BY gap_from").format(sql.Identifier(GAPS_TABLE)), (list(shards), lo, hi))
                for shard, gap_from, gap_to in cur.fetchall():
                    gaps[shard].append((gap_from, gap_to))
    except psycopg2.Error as exc:
        raise map_error(exc, conn.dsn, action="cannot read the audit's facts", conn=conn) from None
    finally:
        if not conn.closed:
            conn.rollback()
    return DbFacts(ticks, {s: frozenset(m) for s, m in backfilled.items()}, first_tick,
                   {s: tuple(g) for s, g in gaps.items()}, from_candles, len(want_s))
