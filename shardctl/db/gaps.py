"""Gaps: stretches of time in which a shard may have missed ticks.

A gap is recorded whenever shardctl knows ticks may be missing: the stream was
disconnected, the worker was down, the journal cap dropped frames. Each row
says which shard, from when to when, why, and what the REST backfill
(``shardctl.worker.backfill``) made of it. The tables live in
``sql/common/gaps.sql`` (``shardctl_gaps`` and ``shardctl_bars``)
and are created by ``ensure_gap_tables``.

Every function here takes an open psycopg2 connection, leaves its
autocommit setting as it found it, commits its own work (and any transaction
the caller left open), and turns database failures into ``DatabaseError`` /
``DatabaseUnavailable`` with one masked line. Datetimes must be timezone-aware;
they are stored as TIMESTAMPTZ and returned in UTC.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any, Sequence

from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extras import execute_values

from shardctl.db.connection import transaction

__all__ = ["GAPS_TABLE", "BARS_TABLE", "Gap", "ensure_gap_tables", "record_gap", "list_gaps", "get_gap",
           "set_backfill_status", "bar_row", "upsert_bars", "format_duration"]

log = logging.getLogger("shardctl.gaps")

GAPS_TABLE = "shardctl_gaps"
BARS_TABLE = "shardctl_bars"
STATUS_PENDING = "pending"
STATUS_DONE = "done"
STATUS_SKIPPED = "skipped: shorter than threshold"
#: Transaction-level advisory lock serialising concurrent ``ensure_gap_tables`` calls.
_LOCK_KEY = 0x5AD0C72
_COLUMNS = ("id", "shard", "gap_from", "gap_to", "reason", "recorded_at", "backfill_status", "backfilled_bars")


@dataclass(frozen=True)
class Gap:
    """One recorded gap; datetimes are aware and in UTC."""

    id: int
    shard: str
    gap_from: datetime
    gap_to: datetime
    reason: str
    recorded_at: datetime
    backfill_status: str | None = None
    backfilled_bars: int | None = None

    @property
    def duration(self) -> timedelta:
        return self.gap_to - self.gap_from

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ISO-8601 datetimes, ``duration_seconds``."""
        return {"id": self.id, "shard": self.shard, "gap_from": self.gap_from.isoformat(),
                "gap_to": self.gap_to.isoformat(), "duration_seconds": self.duration.total_seconds(),
                "reason": self.reason, "recorded_at": self.recorded_at.isoformat(),
                "backfill_status": self.backfill_status, "backfilled_bars": self.backfilled_bars}


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(timezone.utc)


def ensure_gap_tables(conn: Connection) -> None:
    """Create ``shardctl_gaps`` and ``shardctl_bars`` if missing (idempotent, safe to run concurrently)."""
    with transaction(conn, "cannot create the gap tables") as cur:
        _create_tables(cur)


def _create_tables(cur: Any) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    cur.execute(resources.files("shardctl.sql").joinpath("common", "gaps.sql").read_text(encoding="utf-8"))


def _gaps_exist(cur: Any) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (GAPS_TABLE,))
    return bool(cur.fetchone()[0])


def record_gap(conn: Connection, shard: str, gap_from: datetime, gap_to: datetime, reason: str, *,
               backfill_status: str | None = None) -> int | None:
    """Record that ``shard`` may have missed ticks in [gap_from, gap_to); return the gap's id.

    Returns None (and records nothing) for a zero or negative length. Recording
    the same (shard, gap_from, gap_to) again returns the first row's id and
    changes nothing, so a retried call cannot duplicate a gap. Creates the
    tables when missing. Raises ValueError for naive datetimes.
    """
    lo, hi = _aware(gap_from, "gap_from"), _aware(gap_to, "gap_to")
    if hi <= lo:
        return None
    with transaction(conn, "cannot record a gap") as cur:
        if not _gaps_exist(cur):
            _create_tables(cur)
        cur.execute(sql.SQL(
            "INSERT INTO {t} (shard, gap_from, gap_to, reason, backfill_status) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (shard, gap_from, gap_to) DO UPDATE SET shard = EXCLUDED.shard RETURNING id"
        ).format(t=sql.Identifier(GAPS_TABLE)), (shard, lo, hi, reason, backfill_status))
        return int(cur.fetchone()[0])


def _gap(row: Sequence[Any]) -> Gap:
    utc = timezone.utc
    return Gap(int(row[0]), row[1], row[2].astimezone(utc), row[3].astimezone(utc), row[4],
               row[5].astimezone(utc), row[6], row[7])


def list_gaps(conn: Connection, shard: str | None = None, since: datetime | timedelta | None = None, *,
              statuses: Sequence[str | None] | None = None) -> list[Gap]:
    """Gaps oldest first; only ``shard``'s if given; only those ending at or after ``since`` if given.

    ``since`` is an aware datetime or a timedelta before now. ``statuses``
    keeps gaps whose backfill_status is one of them (None matches NULL). An
    absent gaps table means no gaps: returns [].
    """
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    if shard is not None:
        clauses.append(sql.SQL("shard = %s"))
        params.append(shard)
    if since is not None:
        cutoff = datetime.now(timezone.utc) - since if isinstance(since, timedelta) else _aware(since, "since")
        clauses.append(sql.SQL("gap_to >= %s"))
        params.append(cutoff)
    if statuses is not None:
        named = [s for s in statuses if s is not None]
        clauses.append(sql.SQL("(backfill_status = ANY(%s) OR (%s AND backfill_status IS NULL))"))
        params += [named, None in statuses]
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
    query = sql.SQL("SELECT {cols} FROM {t}{where} ORDER BY gap_from, id").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), t=sql.Identifier(GAPS_TABLE), where=where)
    with transaction(conn, "cannot list gaps") as cur:
        if not _gaps_exist(cur):
            return []
        cur.execute(query, params)
        return [_gap(row) for row in cur.fetchall()]


def get_gap(conn: Connection, gap_id: int) -> Gap | None:
    """The gap with ``gap_id``, or None."""
    query = sql.SQL("SELECT {cols} FROM {t} WHERE id = %s").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), t=sql.Identifier(GAPS_TABLE))
    with transaction(conn, "cannot read a gap") as cur:
        if not _gaps_exist(cur):
            return None
        cur.execute(query, (gap_id,))
        row = cur.fetchone()
    return _gap(row) if row else None


def set_backfill_status(conn: Connection, gap_id: int, status: str, bars: int | None = None) -> None:
    """Set a gap's ``backfill_status`` (and ``backfilled_bars`` unless None); commits."""
    query = sql.SQL("UPDATE {t} SET backfill_status = %s, backfilled_bars = COALESCE(%s, backfilled_bars) "
                    "WHERE id = %s").format(t=sql.Identifier(GAPS_TABLE))
    with transaction(conn, "cannot update a gap") as cur:
        cur.execute(query, (status, bars, gap_id))


BarRow = tuple[str, datetime, float, float, float, float, Decimal | None]


def bar_row(symbol: str, row: Any) -> BarRow | None:
    """A ``BarRow`` from a Twelve Data ``values`` entry (``timezone=UTC``), or None if malformed (logged)."""
    try:
        bucket = datetime.strptime(row["datetime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        o, h, lo, c = (float(row[k]) for k in ("open", "high", "low", "close"))
        volume = Decimal(row["volume"]) if row.get("volume") not in (None, "") else None
    except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError):
        log.warning("skipped a malformed %s bar: %.200r", symbol, row)
        return None
    return (symbol, bucket, o, h, lo, c, volume)


def upsert_bars(conn: Connection, bars: Sequence[BarRow]) -> int:
    """Insert or replace one-minute REST bars ``(symbol, bucket, open, high, low, close, volume)``; return how many.

    Stored with ``interval='1min'``, ``source='rest'`` and ``fetched_at=now()``, in one transaction.
    """
    if not bars:
        return 0
    cols = ("symbol", "bucket", "interval", "open", "high", "low", "close", "volume", "source", "fetched_at")
    updates = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in cols[3:])
    query = sql.SQL("INSERT INTO {t} ({cols}) VALUES %s ON CONFLICT ({key}) DO UPDATE SET {updates}").format(
        t=sql.Identifier(BARS_TABLE), cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
        key=sql.SQL(", ").join(map(sql.Identifier, ("symbol", "interval", "bucket"))), updates=updates)
    with transaction(conn, "cannot store backfilled bars") as cur:
        execute_values(cur, query.as_string(cur), bars,
                       template="(%s, %s, '1min', %s, %s, %s, %s, %s, 'rest', now())", page_size=1000)
    return len(bars)


def format_duration(delta: timedelta) -> str:
    """``"45s"``, ``"5m30s"``, ``"2h05m"``, ``"3d04h"``: the two largest units, whole seconds."""
    total = round(delta.total_seconds())
    sign, total = ("-", -total) if total < 0 else ("", total)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours:02d}h"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{seconds:02d}s"
    return f"{sign}{seconds}s"
