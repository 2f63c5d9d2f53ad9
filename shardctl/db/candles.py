"""Candles at 1 minute, 1 hour and 1 day: the incremental refresh and the seed query.

Every interval has the shape of the tutorial's daily policy
(``candlespec.CANDLE_POLICIES``).

TimescaleDB runs those policies itself. On plain PostgreSQL the supervisor
calls ``refresh_all_candles`` (every minute is enough), which does what the
policy would, incrementally:

* An interval is refreshed at most once per schedule period (UTC-aligned:
  the first call in a new minute / hour / day), over the *policy window*: the
  buckets lying wholly in [now - start_offset, now - end_offset). Its cost is
  the ticks of a few buckets, never the whole table.
* ``shardctl_candle_state`` keeps a watermark per candle table (the end of
  the last policy window). If refreshes stopped for a while, the next one
  starts at the watermark instead, so no bucket is skipped; with no
  watermark yet (new table, or a database migrated from version 1) the first
  refresh materialises the whole history once, like ``WITH DATA``.
* Late ticks: a tick updates its candle iff its bucket is still inside the
  policy window at the next refresh (for 1d: the bucket lies wholly within
  the last 3 days); older buckets are left as they are, in both flavours,
  until ``refresh_range`` over them (call it after a gap backfill).
* ``[tables] realtime_candles = true`` (TimescaleDB: ``materialized_only =
  false``) also rewrites, on every call, the buckets from the watermark to the
  current one; a coarse interval's tail is rolled up from the next finer
  configured interval (cheap), the finest from the ticks.

Open is the first price by time and close the last. PostgreSQL breaks ties
on identical timestamps by price (lowest opens, highest closes; day_volume
the highest of the last); TimescaleDB's ``first()``/``last()`` keep whichever
tied row the scan meets first, which is not deterministic, so the flavours
agree whenever a bucket's first and last timestamps are unique per symbol.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from shardctl.config.model import Config, TablesConfig
from shardctl.db import schema
from shardctl.db.candlespec import (
    UTC,
    CandleSpec,
    candle_spec,
    candle_specs,
    floor_bucket,
    policy_window,
)
from shardctl.db.connection import map_error, scalar, transaction
from shardctl.errors import DatabaseError

log = logging.getLogger("shardctl.candles")
_BEGINNING = datetime(1, 1, 1, tzinfo=UTC)  # lower bound of a first, full refresh

# ------------------------------------------------------------------ refresh


def refresh_buckets(cur: Any, tables: TablesConfig, spec: CandleSpec, lo: datetime, hi: datetime,
                    source: CandleSpec | None = None) -> int:
    """PostgreSQL flavour: rewrite ``spec``'s candles whose bucket starts in [lo, hi); return the rows written.

    Runs in the caller's transaction (``cur``): DELETE then INSERT of the
    buckets aggregated from the ticks in [lo, hi), or rolled up from the finer
    candles of ``source`` (the same result when ``source`` is fresh there).
    """
    names = schema.candle_names(cur.connection, spec)
    path = "postgresql/refresh_candles.sql"
    if source is not None:
        names["source"] = sql.Identifier(source.table)
        path = "postgresql/rollup_candles.sql"
    written = 0
    for stmt in schema.statements(cur.connection, path, tables, names):
        cur.execute(stmt, {"lo": lo, "hi": hi})
        written = cur.rowcount
    return written


def _flavour(conn: Connection, tables: TablesConfig) -> str:
    recorded = schema.recorded_schema(conn, tables)  # also ends any open transaction
    if recorded is None:
        raise DatabaseError(f"no shardctl schema for {tables.ticks}; run `shardctl db init CONFIG` first")
    return recorded[0]


#: TimescaleDB (2.2x) refuses at once a refresh whose window overlaps one in progress, its own policy
#: job's say, with lock_not_available. Such a refresh is tried again after these waits (about 25 s in all).
CONCURRENT_REFRESH_WAITS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0)
_LOCK_NOT_AVAILABLE = "55P03"


def _refresh_timescaledb(conn: Connection, spec: CandleSpec, lo: datetime, hi: datetime) -> None:
    was_autocommit = conn.autocommit
    conn.rollback()
    conn.autocommit = True  # refresh_continuous_aggregate cannot run inside a transaction
    try:
        for wait in (*CONCURRENT_REFRESH_WAITS, None):
            try:
                with conn.cursor() as cur:
                    cur.execute("CALL refresh_continuous_aggregate(%s::regclass, %s, %s)",
                                (sql.Identifier(spec.table).as_string(conn), lo, hi))
                return
            except psycopg2.Error as exc:
                if exc.pgcode != _LOCK_NOT_AVAILABLE or wait is None:
                    raise
                log.info("another refresh of %s is in progress; trying again in %gs", spec.table, wait)
                time.sleep(wait)
    finally:
        conn.autocommit = was_autocommit


def refresh_range(conn: Connection, tables: TablesConfig, lo: datetime, hi: datetime) -> dict[str, int]:
    """Rewrite every configured interval's buckets overlapping [lo, hi) now; return {interval: rows written}.

    For ticks the policy windows no longer cover: a gap backfill, late data, a
    manual fix. Ignores schedules and watermarks. Plain PostgreSQL: one
    committed transaction per interval. TimescaleDB:
    ``refresh_continuous_aggregate`` (counts are -1: unknown).
    """
    result: dict[str, int] = {}
    try:
        flavour = _flavour(conn, tables)
        for spec in candle_specs(tables):
            start, end = floor_bucket(lo, spec.width), floor_bucket(hi, spec.width)
            end = end if end == hi else end + spec.width
            if flavour == schema.TIMESCALEDB:
                _refresh_timescaledb(conn, spec, start, end)
                result[spec.interval] = -1
                continue
            with transaction(conn) as cur:
                result[spec.interval] = refresh_buckets(cur, tables, spec, start, end)
    except psycopg2.Error as exc:
        raise map_error(exc, conn.dsn, action="cannot refresh the candles", conn=conn) from None
    return result


def _due(last_run: datetime | None, now: datetime, spec: CandleSpec) -> bool:
    """True on the first call in a new schedule period (or if the clock went back)."""
    if last_run is None:
        return True
    return floor_bucket(now, spec.schedule) != floor_bucket(last_run, spec.schedule)


def _refresh_one(cur: Any, tables: TablesConfig, spec: CandleSpec, finer: CandleSpec | None,
                 now: datetime, force: bool) -> int:
    cur.execute("INSERT INTO shardctl_candle_state (candle_table) VALUES (%s) ON CONFLICT DO NOTHING",
                (spec.table,))
    cur.execute("SELECT watermark, last_run FROM shardctl_candle_state WHERE candle_table = %s FOR UPDATE",
                (spec.table,))
    watermark, last_run = cur.fetchone()
    written = 0
    if force or _due(last_run, now, spec):
        lo, hi = policy_window(spec, now)
        lo = _BEGINNING if watermark is None else min(lo, watermark)
        written = refresh_buckets(cur, tables, spec, lo, hi)
        watermark = hi if watermark is None else max(hi, watermark)
        cur.execute("UPDATE shardctl_candle_state SET watermark = %s, last_run = %s, rows_last = %s "
                    "WHERE candle_table = %s", (watermark, now, written, spec.table))
    if tables.realtime_candles:
        tail_end = floor_bucket(now, spec.width) + spec.width
        if watermark < tail_end:
            written += refresh_buckets(cur, tables, spec, watermark, tail_end, finer)
    return written


def refresh_all_candles(conn: Connection, config_or_tables: Config | TablesConfig, now: datetime | None = None,
                        *, force: bool = False) -> dict[str, int]:
    """Refresh every configured interval as its policy would at ``now``; return {interval: rows rewritten}.

    Plain PostgreSQL: see the module docstring (schedule, policy window,
    watermark catch-up, real-time tail); one committed transaction per
    interval, serialised per candle table by a row lock, so concurrent callers
    are safe. An interval not due (and not real-time) rewrites 0 rows;
    ``force`` refreshes the policy window regardless of the schedule.
    TimescaleDB: ``refresh_continuous_aggregate`` over each policy window (its
    own jobs do this anyway); every count is -1 (unknown).
    Raises DatabaseError / DatabaseUnavailable (one line).
    """
    tables = config_or_tables.tables if isinstance(config_or_tables, Config) else config_or_tables
    now = (now or datetime.now(UTC)).astimezone(UTC)
    result: dict[str, int] = {}
    try:
        flavour = _flavour(conn, tables)
        finer: CandleSpec | None = None
        for spec in candle_specs(tables):
            if flavour == schema.TIMESCALEDB:
                _refresh_timescaledb(conn, spec, *policy_window(spec, now))
                result[spec.interval] = -1
                continue
            with transaction(conn) as cur:
                result[spec.interval] = _refresh_one(cur, tables, spec, finer, now, force)
            finer = spec
    except psycopg2.Error as exc:
        raise map_error(exc, conn.dsn, action="cannot refresh the candles", conn=conn) from None
    return result


# ------------------------------------------------------------------ queries

def fetch_candles(conn: Connection, tables: TablesConfig, symbol: str, interval: str = "1d",
                  since: timedelta = timedelta(days=14)) -> list[tuple]:
    """The seed query for ``interval``: rows (bucket UTC, symbol, open, high, low, close, day_volume) by bucket.

    ``SELECT * FROM <candle> WHERE symbol = %s AND bucket >= NOW() - %s ORDER BY bucket``.
    Raises UsageError for an unconfigured interval, DatabaseError if the relation is missing.
    """
    spec = candle_spec(tables, interval)
    query = sql.SQL("SELECT bucket, symbol, \"open\", high, low, \"close\", day_volume FROM {} "
                    "WHERE symbol = %s AND bucket >= NOW() - %s ORDER BY bucket").format(sql.Identifier(spec.table))
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL TimeZone = 'UTC'")
            if scalar(cur, "SELECT to_regclass(%s)", (sql.Identifier(spec.table).as_string(conn),)) is None:
                raise DatabaseError(f"no candle table {spec.table}; run `shardctl db init CONFIG` first")
            cur.execute(query, (symbol, since))
            return cur.fetchall()
    except psycopg2.Error as exc:
        raise map_error(exc, conn.dsn, action=f"cannot read {spec.table}", conn=conn) from None
    finally:
        if not conn.closed:
            conn.rollback()


def known_symbols(conn: Connection, tables: TablesConfig) -> list[str]:
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT symbol FROM {} UNION SELECT DISTINCT symbol FROM {}")
                        .format(sql.Identifier(tables.assets), sql.Identifier(tables.day_candle)))
            return sorted(r[0] for r in cur.fetchall() if r[0])
    except psycopg2.Error:
        return []
    finally:
        if not conn.closed:
            conn.rollback()


