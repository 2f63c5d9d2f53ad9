"""Candles at 1 minute, 1 hour and 1 day: the catalogue, the incremental refresh, and ``shardctl candles``.

Every interval has the shape of the tutorial's daily policy (``CANDLE_POLICIES``):

    interval  relation            start_offset  end_offset  schedule
    1m        one_minute_candle   10 minutes    1 minute    1 minute
    1h        one_hour_candle     3 hours       1 hour      1 hour
    1d        one_day_candle      3 days        1 day       1 day   (the seed policy)

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

import argparse
import csv
import difflib
import io
import json
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Sequence

import psycopg2
from psycopg2 import sql

from shardctl import schema
from shardctl.config import Config, TablesConfig, load_config, parse_duration
from shardctl.database import connect, map_error, resolve_target
from shardctl.errors import EXIT_OK, DatabaseError, UsageError

#: Refresh policy per interval: (bucket width, start_offset, end_offset, schedule_interval).
CANDLE_POLICIES: dict[str, tuple[timedelta, timedelta, timedelta, timedelta]] = {
    "1m": (timedelta(minutes=1), timedelta(minutes=10), timedelta(minutes=1), timedelta(minutes=1)),
    "1h": (timedelta(hours=1), timedelta(hours=3), timedelta(hours=1), timedelta(hours=1)),
    "1d": (timedelta(days=1), timedelta(days=3), timedelta(days=1), timedelta(days=1)),
}
#: The TablesConfig field naming each interval's relation.
CANDLE_TABLE_FIELD = {"1m": "minute_candle", "1h": "hour_candle", "1d": "day_candle"}
COLUMNS = ("bucket", "symbol", "open", "high", "low", "close", "day_volume")
UTC = timezone.utc
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # bucket origin (date_bin); any UTC midnight gives the same buckets
_BEGINNING = datetime(1, 1, 1, tzinfo=UTC)  # lower bound of a first, full refresh


@dataclass(frozen=True)
class CandleSpec:
    """One candle interval: its relation and the refresh policy a TimescaleDB job (or shardctl) applies."""

    interval: str
    table: str
    width: timedelta
    start_offset: timedelta
    end_offset: timedelta
    schedule: timedelta


def candle_specs(tables: TablesConfig) -> list[CandleSpec]:
    """The configured candle intervals, finest first."""
    return [CandleSpec(i, getattr(tables, CANDLE_TABLE_FIELD[i]), *CANDLE_POLICIES[i])
            for i in CANDLE_POLICIES if i in tables.candles]


def candle_spec(tables: TablesConfig, interval: str) -> CandleSpec:
    """The spec of ``interval``; UsageError naming the configured intervals if it is not one of them."""
    for spec in candle_specs(tables):
        if spec.interval == interval:
            return spec
    raise UsageError(f"unknown candle interval {interval!r}; configured: {', '.join(tables.candles)}")


# ------------------------------------------------------------------ windows


def floor_bucket(moment: datetime, width: timedelta) -> datetime:
    """Start of the bucket of ``width`` holding ``moment`` (UTC-aligned, like time_bucket/date_bin)."""
    return _ORIGIN + ((moment.astimezone(UTC) - _ORIGIN) // width) * width


def policy_window(spec: CandleSpec, now: datetime) -> tuple[datetime, datetime]:
    """[lo, hi): the buckets lying wholly in [now - start_offset, now - end_offset), as a policy run refreshes."""
    start = now - spec.start_offset
    lo = floor_bucket(start, spec.width)
    return (lo if lo == start else lo + spec.width), floor_bucket(now - spec.end_offset, spec.width)


def candle_window(start_offset: timedelta = timedelta(days=3), end_offset: timedelta | None = None,
                  *, now: datetime | None = None) -> tuple[datetime, datetime]:
    """Day buckets ``refresh_candles`` recomputes: those starting in [floor(now - start), floor(now - end)).

    ``floor`` is the start of the UTC day. With ``end_offset=None`` the window
    runs to the end of today (today's bucket included).
    """
    now = now or datetime.now(UTC)
    day = timedelta(days=1)
    hi = floor_bucket(now - end_offset, day) if end_offset is not None else floor_bucket(now, day) + day
    return floor_bucket(now - start_offset, day), hi


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


def _flavour(conn: Any, tables: TablesConfig) -> str:
    recorded = schema.recorded_schema(conn, tables)  # also ends any open transaction
    if recorded is None:
        raise DatabaseError(f"no shardctl schema for {tables.ticks}; run `shardctl db init CONFIG` first")
    return recorded[0]


def _refresh_timescaledb(conn: Any, spec: CandleSpec, lo: datetime, hi: datetime) -> None:
    was_autocommit = conn.autocommit
    conn.rollback()
    conn.autocommit = True  # refresh_continuous_aggregate cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("CALL refresh_continuous_aggregate(%s::regclass, %s, %s)",
                        (sql.Identifier(spec.table).as_string(conn), lo, hi))
    finally:
        conn.autocommit = was_autocommit


def refresh_range(conn: Any, tables: TablesConfig, lo: datetime, hi: datetime) -> dict[str, int]:
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
            with schema.transaction(conn) as cur:
                result[spec.interval] = refresh_buckets(cur, tables, spec, start, end)
    except psycopg2.Error as exc:
        raise map_error(exc, conn.dsn, action="cannot refresh the candles", conn=conn) from None
    return result


def refresh_candles(conn: Any, tables: TablesConfig, start_offset: timedelta = timedelta(days=3),
                    end_offset: timedelta | None = None, *, now: datetime | None = None) -> int:
    """Version-1 API: ``refresh_range`` of the daily candles over ``candle_window(...)``; return the rows written.

    -1 on TimescaleDB. Does not touch ``shardctl_candle_state``.
    """
    lo, hi = candle_window(start_offset, end_offset, now=now)
    return refresh_range(conn, replace(tables, candles=("1d",)), lo, hi)["1d"]


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


def refresh_all_candles(conn: Any, config_or_tables: Config | TablesConfig, now: datetime | None = None,
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
            with schema.transaction(conn) as cur:
                result[spec.interval] = _refresh_one(cur, tables, spec, finer, now, force)
            finer = spec
    except psycopg2.Error as exc:
        raise map_error(exc, conn.dsn, action="cannot refresh the candles", conn=conn) from None
    return result


# ------------------------------------------------------------------ queries and the command

def fetch_candles(conn: Any, tables: TablesConfig, symbol: str, interval: str = "1d",
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
            cur.execute("SELECT to_regclass(%s)", (sql.Identifier(spec.table).as_string(conn),))
            if cur.fetchone()[0] is None:
                raise DatabaseError(f"no candle table {spec.table}; run `shardctl db init CONFIG` first")
            cur.execute(query, (symbol, since))
            return cur.fetchall()
    except psycopg2.Error as exc:
        raise map_error(exc, conn.dsn, action=f"cannot read {spec.table}", conn=conn) from None
    finally:
        if not conn.closed:
            conn.rollback()


def _known_symbols(conn: Any, tables: TablesConfig) -> list[str]:
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


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def format_candles(rows: Sequence[tuple], fmt: str = "table") -> str:
    """Render rows as an aligned table (numbers right-aligned), CSV with a header, or a JSON list of objects."""
    if fmt == "json":
        return json.dumps([{c: _json_value(v) for c, v in zip(COLUMNS, row)} for row in rows], indent=2)
    cells = [[_text(v) for v in row] for row in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(cells)
        return out.getvalue().rstrip("\n")
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(COLUMNS)]
    left = {0, 1}
    lines = [" | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip(),
             "-+-".join("-" * w for w in widths)]
    for row in cells:
        lines.append(" | ".join(v.ljust(w) if i in left else v.rjust(w)
                                for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)


def cmd_candles(args: argparse.Namespace) -> int:
    """Print the candles of one symbol; an empty result is a message on stderr (exit 0)."""
    config = load_config(args.config)
    spec = candle_spec(config.tables, args.interval)
    try:
        since = timedelta(seconds=parse_duration(args.since))
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    target = resolve_target(config)
    if target.started and target.embedded is not None:
        print(f"embedded PostgreSQL started in {target.embedded.data_dir}; stop it with "
              f"`shardctl db stop {config.path}`", file=sys.stderr)
    conn = connect(target.dsn, application_name="shardctl candles")
    try:
        rows = fetch_candles(conn, config.tables, args.symbol, args.interval, since)
        hint = "" if rows else _hint(conn, config.tables, args.symbol)
    finally:
        conn.close()
    if rows or args.format != "table":
        print(format_candles(rows, args.format))
    if not rows:
        print(f"no {args.interval} candles for {args.symbol!r} in the last {args.since} "
              f"(in {spec.table}){hint}", file=sys.stderr)
    return EXIT_OK


def _hint(conn: Any, tables: TablesConfig, symbol: str) -> str:
    known = _known_symbols(conn, tables)
    if symbol in known:
        return ""
    close = difflib.get_close_matches(symbol, known, n=3, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    return f"; known symbols: {', '.join(known[:10])}" if known else "; no candles yet"


def register(subparsers: Any) -> None:
    """Add ``shardctl candles CONFIG SYMBOL [--interval 1d] [--since 14d] [--format table|csv|json]``."""
    text = "print a symbol's OHLCV candles (the tutorial's one_day_candle query, at any configured interval)"
    parser = subparsers.add_parser("candles", help=text, description=text)
    parser.add_argument("config", help="path of the TOML config")
    parser.add_argument("symbol", help="e.g. BTC/USD")
    parser.add_argument("--interval", default="1d", help="candle interval: 1m, 1h or 1d (default 1d)")
    parser.add_argument("--since", default="14d", help="how far back, e.g. 90m, 12h, 14d (default 14d)")
    parser.add_argument("--format", default="table", choices=["table", "csv", "json"])
    parser.set_defaults(func=cmd_candles)
