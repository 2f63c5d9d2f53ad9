"""Creates and maintains shardctl's tables, for TimescaleDB or plain PostgreSQL.

``apply_schema`` is idempotent: it runs the statements in ``sql/`` (the package ``shardctl.sql``)
(every one is ``IF NOT EXISTS`` or guarded) under a session advisory lock, so
the supervisor, workers and ``shardctl db init`` may all call it, and records
the flavour and ``SCHEMA_VERSION`` in ``shardctl_schema``. The flavour
recorded the first time wins on later runs (a table cannot change kind).
Running it on a database of an older version is the migration: it adds what
is missing and keeps every row (version 1 → 2 adds the 1-minute and 1-hour
candles, a bucket index on each candle table and ``shardctl_candle_state``).
``upsert_assets`` records symbol names from the stream.

TimescaleDB flavour: the tutorial's hypertable, asset table and candle
continuous aggregates with refresh policies (``one_day_candle`` verbatim from
``reference/seed-schema.md``; the finer ones the same query with their own
bucket width and window, see ``shardctl.db.candlespec.CANDLE_POLICIES``), plus nullable ``bid``/
``ask``, an index and ``symbol NOT NULL`` (as on PostgreSQL). ``[tables] realtime_candles`` sets
``timescaledb.materialized_only`` on every candle view; ``[timescaledb]`` settings, when given,
become the policies in force (``shardctl.db.policies``).

PostgreSQL flavour: ticks range-partitioned by UTC day with a DEFAULT
partition (so no tick is ever rejected), daily partitions created ahead by
``ensure_partitions`` and on demand by ``ensure_partition`` (the writer calls
it for every new day it sees), and each candle as a table that
``shardctl.db.candles.refresh_all_candles`` keeps fresh incrementally (its
progress in ``shardctl_candle_state``); both flavours answer the seed query with
the columns ``bucket | symbol | open | high | low | close | day_volume``.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime, timedelta, timezone
from importlib import resources
from typing import Any, Mapping

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from shardctl.config.model import TablesConfig, TimescaleConfig
from shardctl.db import policies
from shardctl.db.candlespec import CANDLE_TABLE_FIELD, CandleSpec, candle_specs
from shardctl.db.connection import map_error, transaction
from shardctl.errors import DatabaseError

SCHEMA_VERSION = 2
TIMESCALEDB = "timescaledb"
POSTGRESQL = "postgresql"
_LOCK_KEY = 0x5AD0C71  # pg_advisory_lock key for schema changes
_DAY = timedelta(days=1)
_STATEMENT_END = re.compile(r";\s*(?:\n|$)")


def _identifier(name: str) -> str:
    """``name`` if it fits PostgreSQL's 63-byte limit, else a shortened unique form (no silent truncation)."""
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.md5(name.encode()).hexdigest()[:8]
    return f"{name[:40]}_{digest}{name[-12:]}"


def partition_name(tables: TablesConfig, day: date) -> str:
    """The name of the ticks partition holding ``day`` (UTC): ``<ticks>_pYYYYMMDD``."""
    return _identifier(f"{tables.ticks}_p{day:%Y%m%d}")


def default_partition_name(tables: TablesConfig) -> str:
    """The DEFAULT partition, which catches ticks of days without their own partition."""
    return _identifier(f"{tables.ticks}_default")


def _names(conn: Connection, tables: TablesConfig) -> dict[str, sql.Composable]:
    return {
        "ticks": sql.Identifier(tables.ticks),
        "assets": sql.Identifier(tables.assets),
        "day_candle": sql.Identifier(tables.day_candle),
        "ledger": sql.Identifier(tables.ledger),
        "ticks_default": sql.Identifier(default_partition_name(tables)),
        "ticks_symbol_time": sql.Identifier(_identifier(f"{tables.ticks}_symbol_time_idx")),
        "ticks_regclass": _regclass(conn, tables.ticks),
        "day_candle_regclass": _regclass(conn, tables.day_candle),
    }


def _regclass(conn: Connection, name: str) -> sql.Composable:
    return sql.Literal(sql.Identifier(name).as_string(conn))


def interval_text(delta: timedelta) -> str:
    """PostgreSQL interval text in the largest whole unit: '1 day', '3 hours', '10 minutes', '30 seconds'."""
    return policies.interval_text(delta.total_seconds())


def candle_names(conn: Connection, spec: CandleSpec) -> dict[str, sql.Composable]:
    """The placeholders of the candle SQL files for ``spec`` (identifiers and interval literals)."""
    return {
        "candle": sql.Identifier(spec.table),
        "candle_regclass": sql.Literal(sql.Identifier(spec.table).as_string(conn)),
        "candle_bucket_idx": sql.Identifier(_identifier(f"{spec.table}_bucket_idx")),
        "width": sql.Literal(interval_text(spec.width)),
        "start": sql.Literal(interval_text(spec.start_offset)),
        "end": sql.Literal(interval_text(spec.end_offset)),
        "schedule": sql.Literal(interval_text(spec.schedule)),
    }


def statements(conn: Connection, path: str, tables: TablesConfig,
               extra: Mapping[str, sql.Composable] | None = None) -> list[sql.Composed]:
    """The statements of ``sql/<path>`` with table names quoted as identifiers (``extra`` adds names)."""
    text = resources.files("shardctl.sql").joinpath(*path.split("/")).read_text(encoding="utf-8")
    names = {**_names(conn, tables), **(extra or {})}
    result = []
    for chunk in _STATEMENT_END.split(text):
        body = "\n".join(ln for ln in chunk.splitlines() if not ln.lstrip().startswith("--")).strip()
        if body:
            result.append(sql.SQL(body).format(**names))
    return result


def _fail(conn: Connection, exc: Exception, action: str) -> DatabaseError:
    return map_error(exc, conn.dsn, action=action, conn=conn)


def detect_flavour(conn: Connection) -> str:
    """"timescaledb" if the extension is installed, or available, preloaded and creatable by us; else "postgresql"."""
    with transaction(conn) as cur:
        cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
        if cur.fetchone():
            return TIMESCALEDB
        cur.execute("""
            SELECT bool_or(v.trusted), current_setting('shared_preload_libraries') ~ 'timescaledb',
                   (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                   has_database_privilege(current_database(), 'CREATE')
            FROM pg_available_extension_versions v WHERE v.name = 'timescaledb'""")
        trusted, preloaded, superuser, can_create = cur.fetchone()
    if trusted is None or not preloaded:
        return POSTGRESQL
    return TIMESCALEDB if superuser or (trusted and can_create) else POSTGRESQL


def recorded_schema(conn: Connection, tables: TablesConfig) -> tuple[str, int] | None:
    """(flavour, version) recorded by ``apply_schema`` for these tables, or None if never applied."""
    with transaction(conn) as cur:
        cur.execute("SELECT to_regclass('shardctl_schema') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT flavour, version FROM shardctl_schema WHERE ticks_table = %s", (tables.ticks,))
        row = cur.fetchone()
    return (row[0], row[1]) if row else None


def _relkind(cur: Any, name: str) -> str | None:
    cur.execute("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)",
                (sql.Identifier(name).as_string(cur),))
    row = cur.fetchone()
    return row[0] if row else None


def _apply_timescaledb(conn: Connection, tables: TablesConfig, settings: TimescaleConfig | None) -> None:
    """Autocommit, statement by statement: a continuous aggregate WITH DATA cannot run in a transaction.

    ``settings`` None keeps the policies as they are (the tutorial's on a new database).
    """
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        kind = _relkind(cur, tables.ticks)
        if kind is None:
            variant = "tables.sql" if policies.timescaledb_version(cur) >= (2, 23) else "tables_legacy.sql"
            for stmt in statements(conn, f"timescaledb/{variant}", tables):
                cur.execute(stmt)
        else:
            cur.execute("SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s",
                        (tables.ticks,))
            if not cur.fetchone():
                raise DatabaseError(f"table {tables.ticks} exists but is not a hypertable; convert it with "
                                    f"create_hypertable or set [tables] ticks to another name")
        for stmt in statements(conn, "timescaledb/extras.sql", tables):
            try:
                cur.execute(stmt)
            except psycopg2.errors.NotNullViolation:
                raise DatabaseError(f"{tables.ticks} holds rows without a symbol; shardctl keeps symbol NOT NULL "
                                    f"on both flavours: delete them (DELETE FROM {tables.ticks} WHERE symbol IS "
                                    f"NULL) and run `shardctl db init` again") from None
        for spec in candle_specs(tables):
            names = candle_names(conn, spec)
            if _relkind(cur, spec.table) is None:
                for stmt in statements(conn, "timescaledb/candles.sql", tables, names):
                    cur.execute(stmt)
            cur.execute("SELECT materialized_only FROM timescaledb_information.continuous_aggregates "
                        "WHERE view_name = %s", (spec.table,))
            row = cur.fetchone()
            if row is None:
                raise DatabaseError(f"{spec.table} exists but is not a continuous aggregate; drop it or set "
                                    f"[tables] {CANDLE_TABLE_FIELD[spec.interval]} to another name")
            if row[0] != (not tables.realtime_candles):
                cur.execute(sql.SQL("ALTER MATERIALIZED VIEW {} SET (timescaledb.materialized_only = {})")
                            .format(names["candle"], sql.SQL("false" if tables.realtime_candles else "true")))
        if settings is not None:
            policies.apply_settings(cur, tables, settings)


def _apply_postgresql(conn: Connection, tables: TablesConfig) -> None:
    with transaction(conn) as cur:
        kind = _relkind(cur, tables.ticks)
        if kind not in (None, "p"):
            raise DatabaseError(f"table {tables.ticks} exists but is not partitioned by time; shardctl needs "
                                f"its own table: set [tables] ticks to another name")
        for stmt in statements(conn, "postgresql/tables.sql", tables):
            cur.execute(stmt)
        for spec in candle_specs(tables):
            if _relkind(cur, spec.table) not in (None, "r"):
                raise DatabaseError(f"{spec.table} exists but is not a table; drop it or set [tables] "
                                    f"{CANDLE_TABLE_FIELD[spec.interval]} to another name")
            for stmt in statements(conn, "postgresql/candle_table.sql", tables, candle_names(conn, spec)):
                cur.execute(stmt)


def apply_schema(conn: Connection, tables: TablesConfig, settings: TimescaleConfig | None = None) -> str:
    """Create every missing table, view, policy and partition; return the flavour. Safe to call repeatedly.

    TimescaleDB: ``settings`` (``[timescaledb]``) are made the policies in
    force (see ``shardctl.db.policies``); None leaves them as they are.

    Leaves ``conn`` with its autocommit setting and no open transaction.
    Raises DatabaseError (one line) if the database refuses a statement.
    """
    was_autocommit = conn.autocommit
    if not was_autocommit:
        conn.rollback()
    conn.autocommit = True
    locked = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            locked = True
        recorded = recorded_schema(conn, tables)
        flavour = recorded[0] if recorded else detect_flavour(conn)
        if flavour == TIMESCALEDB:
            _apply_timescaledb(conn, tables, settings)
        else:
            _apply_postgresql(conn, tables)
        with transaction(conn) as cur:
            for stmt in statements(conn, "common/ledger.sql", tables):
                cur.execute(stmt)
            for stmt in statements(conn, "common/gaps.sql", tables):
                cur.execute(stmt)
            for stmt in statements(conn, "common/leases.sql", tables):
                cur.execute(stmt)
            for stmt in statements(conn, "common/collection.sql", tables):
                cur.execute(stmt)
            cur.execute("""
                INSERT INTO shardctl_schema (ticks_table, flavour, version) VALUES (%s, %s, %s)
                ON CONFLICT (ticks_table) DO UPDATE SET version = EXCLUDED.version, applied_at = now()
                WHERE shardctl_schema.version < EXCLUDED.version""", (tables.ticks, flavour, SCHEMA_VERSION))
        if flavour == POSTGRESQL:
            ensure_partitions(conn, tables)
        return flavour
    except psycopg2.Error as exc:
        raise _fail(conn, exc, "cannot apply the schema") from None
    finally:
        if locked and not conn.closed:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        if not conn.closed:
            conn.autocommit = was_autocommit


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start, start + _DAY


def _has_partition(cur: Any, tables: TablesConfig, name: str) -> bool:
    cur.execute("""SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = to_regclass(%s) AND c.relname = %s""",
                (sql.Identifier(tables.ticks).as_string(cur), name))
    return cur.fetchone() is not None


def ensure_partition(conn: Connection, tables: TablesConfig, day: date) -> bool:
    """Make sure ``day`` (UTC) has its own ticks partition; return True if this call created it. Commits.

    If the DEFAULT partition already holds ticks of that day, they are moved
    into the new partition in the same transaction (create a plain table, move
    the rows, ATTACH), so nothing is lost or duplicated. Takes a brief ACCESS
    EXCLUSIVE lock on the ticks table (parent first, the order every reader and
    writer uses, so it cannot deadlock with them). Call it outside a batch
    transaction. A day already covered by a partition named otherwise is left alone.
    """
    name = partition_name(tables, day)
    lo, hi = _day_bounds(day)
    ticks, part = sql.Identifier(tables.ticks), sql.Identifier(name)
    default = sql.Identifier(default_partition_name(tables))
    try:
        with transaction(conn) as cur:
            if _has_partition(cur, tables, name):
                return False
            cur.execute(sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(ticks))
            if _has_partition(cur, tables, name):
                return False
            cur.execute(sql.SQL('SELECT EXISTS (SELECT 1 FROM {} WHERE "time" >= %s AND "time" < %s)')
                        .format(default), (lo, hi))
            if not cur.fetchone()[0]:
                cur.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (%s) TO (%s)")
                            .format(part, ticks), (lo, hi))
                return True
            cur.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
                        .format(part, ticks))
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in ("time", "symbol", "price", "day_volume",
                                                                    "bid", "ask"))
            cur.execute(sql.SQL('WITH moved AS (DELETE FROM {d} WHERE "time" >= %s AND "time" < %s RETURNING {c}) '
                                'INSERT INTO {p} ({c}) SELECT {c} FROM moved')
                        .format(d=default, p=part, c=cols), (lo, hi))
            cur.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM (%s) TO (%s)")
                        .format(ticks, part), (lo, hi))
            return True
    except psycopg2.errors.InvalidObjectDefinition as exc:
        if "overlap" in str(exc):  # another partition already covers (part of) this day
            return False
        raise _fail(conn, exc, f"cannot create partition {name}") from None
    except psycopg2.Error as exc:
        raise _fail(conn, exc, f"cannot create partition {name}") from None


def ensure_partitions(conn: Connection, tables: TablesConfig, days_ahead: int = 7, days_back: int = 1,
                      *, today: date | None = None) -> list[str]:
    """Create the daily partitions from ``today - days_back`` to ``today + days_ahead`` (UTC); return new names."""
    today = today or datetime.now(timezone.utc).date()
    created = []
    for offset in range(-days_back, days_ahead + 1):
        day = today + timedelta(days=offset)
        if ensure_partition(conn, tables, day):
            created.append(partition_name(tables, day))
    return created


def upsert_assets(conn: Connection, tables: TablesConfig, names: Mapping[str, str | None], *,
                  replace: bool = True) -> int:
    """Record ``{symbol: name}`` in the assets table in one committed transaction; return rows added or changed.

    Every symbol gets a row. A name replaces the stored one only when it is
    non-empty (after stripping) and different, so an event without
    ``currency_base`` never blanks a name learnt earlier; with ``replace``
    False it only fills a missing name (the stream's ``currency_base`` never
    overwrites an instrument name from Twelve Data's reference lists). Empty
    or None names are stored as NULL for a new symbol. Raises DatabaseError (one line).
    """
    clean = {s.strip(): (n.strip() if isinstance(n, str) and n.strip() else None)
             for s, n in names.items() if isinstance(s, str) and s.strip()}
    if not clean:
        return 0
    assets = sql.Identifier(tables.assets)
    try:
        with transaction(conn) as cur:
            cur.execute(sql.SQL(
                'INSERT INTO {a} AS a (symbol, "name") SELECT * FROM unnest(%s::text[], %s::text[]) '
                'ON CONFLICT (symbol) DO UPDATE SET "name" = EXCLUDED."name" '
                'WHERE EXCLUDED."name" IS NOT NULL AND a."name" IS DISTINCT FROM EXCLUDED."name"'
                + ('' if replace else ' AND a."name" IS NULL')
            ).format(a=assets), (list(clean), list(clean.values())))
            return cur.rowcount
    except psycopg2.Error as exc:
        raise _fail(conn, exc, f"cannot update {tables.assets}") from None
