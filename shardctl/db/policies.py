"""TimescaleDB settings made real, and what each flavour runs on a schedule, in words.

``apply_settings`` makes the hypertable and its jobs match ``[timescaledb]``
(chunk interval, columnstore ``after``, ticks retention, per-candle
retention). It is idempotent: a setting already in force is left alone, a
changed one replaces its policy (remove, then add), an unset retention
removes the retention policy. ``describe`` lists every candle relation and
every policy with its schedule, for ``shardctl db init`` and ``db status``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from shardctl.config.model import TablesConfig, TimescaleConfig
from shardctl.db.candlespec import candle_specs

_RETENTION = "policy_retention"
_COLUMNSTORE = "policy_compression"
_REFRESH = "policy_refresh_continuous_aggregate"


def interval_text(seconds: float) -> str:
    """PostgreSQL interval text in the largest whole unit: '7 days', '3 hours', '10 minutes', '30 seconds'."""
    whole = int(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if whole % size == 0:
            count = whole // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    raise ValueError(f"not a whole number of seconds: {seconds}")  # pragma: no cover


def timescaledb_version(cur: Any) -> tuple[int, ...]:
    """The installed extension's version as a tuple, e.g. (2, 28, 3)."""
    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    return tuple(int(p) for p in re.findall(r"\d+", cur.fetchone()[0])[:3])


def _regclass(cur: Any, name: str) -> str:
    return sql.Identifier(name).as_string(cur)


def _job(cur: Any, relation: str, proc: str, key: str, wanted: float | None) -> tuple[bool, bool]:
    """(a job exists, its ``key`` equals ``wanted`` seconds) for the job ``proc`` on ``relation``."""
    cur.execute("SELECT (config->>%s)::interval = make_interval(secs => %s) FROM timescaledb_information.jobs "
                "WHERE hypertable_name = %s AND proc_name = %s", (key, wanted or 0, relation, proc))
    row = cur.fetchone()
    return row is not None, bool(row and row[0])


def _set_retention(cur: Any, relation: str, drop_after: float | None) -> None:
    exists, same = _job(cur, relation, _RETENTION, "drop_after", drop_after)
    if exists and (drop_after is None or not same):
        cur.execute("SELECT remove_retention_policy(%s::regclass, if_exists => TRUE)", (_regclass(cur, relation),))
    if drop_after is not None and not (exists and same):
        cur.execute("SELECT add_retention_policy(%s::regclass, drop_after => %s::interval)",
                    (_regclass(cur, relation), interval_text(drop_after)))


def _set_columnstore(cur: Any, ticks: str, after: float) -> None:
    exists, same = _job(cur, ticks, _COLUMNSTORE, "compress_after", after)
    if exists and same:
        return
    columnstore = timescaledb_version(cur) >= (2, 18)
    remove = "CALL remove_columnstore_policy(%s::regclass, if_exists => TRUE)" if columnstore else (
        "SELECT remove_compression_policy(%s::regclass, if_exists => TRUE)")
    add = "CALL add_columnstore_policy(%s::regclass, after => %s::interval)" if columnstore else (
        "SELECT add_compression_policy(%s::regclass, compress_after => %s::interval)")
    if exists:
        cur.execute(remove, (_regclass(cur, ticks),))
    cur.execute(add, (_regclass(cur, ticks), interval_text(after)))


def apply_settings(cur: Any, tables: TablesConfig, settings: TimescaleConfig) -> None:
    """Make the ticks hypertable and the candle aggregates follow ``settings``; idempotent. Autocommit cursor.

    A new chunk interval applies to chunks created from now on (TimescaleDB
    never resizes existing chunks).
    """
    ticks = tables.ticks
    cur.execute("SELECT time_interval = make_interval(secs => %s) FROM timescaledb_information.dimensions "
                "WHERE hypertable_name = %s AND dimension_number = 1", (settings.chunk_interval, ticks))
    row = cur.fetchone()
    if row is not None and not row[0]:
        cur.execute("SELECT set_chunk_time_interval(%s::regclass, %s::interval)",
                    (_regclass(cur, ticks), interval_text(settings.chunk_interval)))
    _set_columnstore(cur, ticks, settings.columnstore_after)
    _set_retention(cur, ticks, settings.drop_after)
    for spec in candle_specs(tables):
        _set_retention(cur, spec.table, settings.candle_drop_after.get(spec.interval))


def _every(delta: timedelta) -> str:
    return interval_text(delta.total_seconds())


def describe(conn: Connection, tables: TablesConfig, flavour: str) -> list[str]:
    """One line per candle relation and per policy (what runs, on what schedule), for ``db init``/``db status``."""
    lines: list[str] = []
    specs = candle_specs(tables)
    if flavour != "timescaledb":
        for spec in specs:
            lines.append(f"candle {spec.interval}: table {spec.table}, refreshed by shardctl every "
                         f"{_every(spec.schedule)} over [now - {_every(spec.start_offset)}, "
                         f"now - {_every(spec.end_offset)})")
        lines.append(f"partitions: {tables.ticks} by UTC day, created 7 days ahead by shardctl every minute")
        return lines
    with conn.cursor() as cur:
        cur.execute("SELECT hypertable_name, proc_name, schedule_interval, (config->>'compress_after')::interval, "
                    "(config->>'drop_after')::interval, (config->>'start_offset')::interval, "
                    "(config->>'end_offset')::interval FROM timescaledb_information.jobs "
                    "WHERE hypertable_name = ANY(%s) ORDER BY hypertable_name, proc_name",
                    ([tables.ticks] + [s.table for s in specs],))
        jobs = cur.fetchall()
        cur.execute("SELECT time_interval FROM timescaledb_information.dimensions "
                    "WHERE hypertable_name = %s AND dimension_number = 1", (tables.ticks,))
        row = cur.fetchone()
    conn.rollback()
    for spec in specs:
        lines.append(f"candle {spec.interval}: continuous aggregate {spec.table}")
    if row is not None:
        lines.append(f"hypertable {tables.ticks}: chunk interval {_pg_interval(row[0])}")
    for relation, proc, schedule, after, drop, start, end in jobs:
        p = _pg_interval
        what = {_COLUMNSTORE: f"columnstore after {p(after)}", _RETENTION: f"retention drop_after {p(drop)}",
                _REFRESH: f"refresh [now - {p(start)}, now - {p(end)})"}.get(proc, proc)
        lines.append(f"policy on {relation}: {what}, every {_pg_interval(schedule)}")
    return lines


def _pg_interval(value: Any) -> str:
    return interval_text(value.total_seconds()) if isinstance(value, timedelta) else str(value)
