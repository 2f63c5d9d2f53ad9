"""When shardctl meant to collect each symbol: stretches in ``shardctl_collection`` (``sql/common/collection.sql``).

The supervisor calls ``reconcile_collection`` after each lifecycle point (it
started, an operator started or stopped a shard, a reload, it is stopping):
the open stretches become exactly the symbols of the shards it wants
running. A crash or a kill leaves the stretch open (the gap explains those
minutes). ``collection_stretches`` is the audit's readout.
Each call is one committed transaction; datetimes are aware (UTC).
"""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import resources
from typing import Iterable, Mapping, Sequence

from psycopg2.extensions import connection as Connection

from shardctl.db.connection import transaction

__all__ = ["COLLECTION_TABLE", "reconcile_collection", "collection_stretches", "stored_symbol"]

COLLECTION_TABLE = "shardctl_collection"


def stored_symbol(text: str) -> str:
    """A configured symbol as ticks store it: ``"RY:TSX"`` → ``"RY"``."""
    return text.partition(":")[0].strip()


def reconcile_collection(conn: Connection, wanted: Mapping[str, Iterable[str]], shards: Iterable[str],
                         at: datetime, reason: str) -> tuple[int, int]:
    """Among ``shards``, make the open stretches exactly ``wanted`` (shard -> symbols) as of ``at``.

    Opens a stretch for each wanted (shard, symbol) without one, closes (with ``reason``) every open
    stretch of those shards that is not wanted; returns (opened, closed). Creates the table if missing.
    """
    pairs = sorted({(shard, stored_symbol(s)) for shard, symbols in wanted.items() for s in symbols})
    shard_list, symbol_list = [p[0] for p in pairs], [p[1] for p in pairs]
    with transaction(conn, "cannot record which symbols are collected") as cur:
        cur.execute(resources.files("shardctl.sql").joinpath("common", "collection.sql").read_text(encoding="utf-8"))
        cur.execute("UPDATE shardctl_collection c SET stopped_at = greatest(%s, c.started_at), stop_reason = %s "
                    "WHERE c.stopped_at IS NULL AND c.shard = ANY(%s) AND NOT EXISTS (SELECT 1 FROM "
                    "unnest(%s::text[], %s::text[]) AS w(shard, symbol) WHERE w.shard = c.shard "
                    "AND w.symbol = c.symbol)", (at, reason[:200], sorted(set(shards)), shard_list, symbol_list))
        closed = int(cur.rowcount)
        cur.execute("INSERT INTO shardctl_collection (shard, symbol, started_at) SELECT w.shard, w.symbol, %s "
                    "FROM unnest(%s::text[], %s::text[]) AS w(shard, symbol) ON CONFLICT DO NOTHING",
                    (at, shard_list, symbol_list))
        return int(cur.rowcount), closed


def collection_stretches(conn: Connection, symbols: Sequence[str], lo: datetime,
                         hi: datetime) -> dict[str, list[tuple[float, float | None]]]:
    """Per symbol, its stretches overlapping [lo, hi) as Unix seconds (end None: still open); oldest first.

    Also reports, for each symbol with any stretch at all, the earliest one (even before ``lo``), so a
    reader can tell "never recorded" from "not collected in this window". A missing table reads as none.
    """
    out: dict[str, list[tuple[float, float | None]]] = {s: [] for s in symbols}
    with transaction(conn, "cannot read which symbols were collected") as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (COLLECTION_TABLE,))
        if not cur.fetchone()[0]:
            return out
        cur.execute("SELECT symbol, extract(epoch FROM started_at)::float8, extract(epoch FROM stopped_at)::float8 "
                    "FROM shardctl_collection WHERE symbol = ANY(%s) AND started_at < %s "
                    "AND (stopped_at IS NULL OR stopped_at > %s) "
                    "UNION SELECT * FROM (SELECT DISTINCT ON (symbol) symbol, "
                    "extract(epoch FROM started_at)::float8, extract(epoch FROM stopped_at)::float8 "
                    "FROM shardctl_collection WHERE symbol = ANY(%s) ORDER BY symbol, started_at) AS earliest "
                    "ORDER BY 1, 2", (list(symbols), hi.astimezone(timezone.utc), lo.astimezone(timezone.utc),
                                      list(symbols)))
        for symbol, start, stop in cur.fetchall():
            out[symbol].append((start, stop))
    return out
