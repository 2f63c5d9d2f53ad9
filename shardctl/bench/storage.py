"""Storage: how big the ticks table is after the replay's rows, before and after the columnstore policy.

One run in a fresh database: the replay's rows COPY'd in ``batch_size``
transactions exactly as ``copy-limit`` does (with direct compress when the
context asks for it), then the table's size; then every chunk converted to
the columnstore, which is what the columnstore policy does to a chunk once
it is older than ``after`` (TimescaleDB; plain PostgreSQL has no columnstore,
so only the first size is measured there), and the size again.
"""

from __future__ import annotations

import io
from typing import Any

import psycopg2
from psycopg2.extensions import connection as Connection

from shardctl.bench import data as bench_data
from shardctl.bench.runs import BenchContext, prepare_copy, run_database
from shardctl.db.connection import scalar
from shardctl.rows import COLUMNS

_SIZE = {
    "timescaledb": "SELECT hypertable_size('crypto_ticks')",
    "postgresql": """SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits
                     WHERE inhparent = 'crypto_ticks'::regclass""",
}


def _size(conn: Connection, flavour: str) -> int:
    with conn.cursor() as cur:
        size = int(scalar(cur, _SIZE[flavour]) or 0)
    conn.commit()
    return size


def run_storage(ctx: BenchContext, batch_size: int) -> dict[str, Any]:
    """Sizes in bytes of ``crypto_ticks`` after the replay: ``before`` and (TimescaleDB) ``after`` the policy."""
    from shardctl.db.writer import TickCopyManager

    rows = bench_data.replay_rows(ctx.replay)
    name = ctx.next_name(f"storage-b{batch_size}" + ("-dc" if ctx.direct_compress else ""))
    result: dict[str, Any] = {"rows": len(rows), "batch_size": batch_size, "direct_compress": ctx.direct_compress}
    with run_database(ctx, name) as dsn:
        conn = psycopg2.connect(dsn)
        try:
            prepare_copy(conn, ctx, rows)
            manager = TickCopyManager(conn, "crypto_ticks", COLUMNS)
            ctx.progress(f"storage: COPY {len(rows):,} rows in batches of {batch_size:,}")
            for start in range(0, len(rows), batch_size):
                buf = io.BytesIO()
                manager.writestream(rows[start:start + batch_size], buf)
                buf.seek(0)
                manager.copystream(buf)
                conn.commit()
            result["flavour"] = ctx.flavour
            result["before_bytes"] = _size(conn, ctx.flavour)
            if ctx.flavour == "timescaledb":
                ctx.progress("storage: converting every chunk to the columnstore")
                with conn.cursor() as cur:
                    result["chunks"] = scalar(cur, "SELECT count(compress_chunk(c, if_not_compressed => true)) "
                                                   "FROM show_chunks('crypto_ticks') c")
                conn.commit()
                result["after_bytes"] = _size(conn, ctx.flavour)
            with conn.cursor() as cur:
                result["stored"] = scalar(cur, "SELECT count(*) FROM crypto_ticks")
            conn.commit()
        finally:
            conn.close()
    return result


def describe(result: dict[str, Any]) -> str:
    """One line: rows, batch size, direct compress, size before and after the policy (MiB)."""
    mib = 1024 * 1024
    after = f", after the columnstore policy {result['after_bytes'] / mib:.1f} MiB" if "after_bytes" in result else ""
    return (f"{result['stored']:,} of {result['rows']:,} rows, batch {result['batch_size']:,}, direct compress "
            f"{'on' if result['direct_compress'] else 'off'}: {result['before_bytes'] / mib:.1f} MiB{after}")
