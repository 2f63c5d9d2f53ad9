"""How long ``shardctl audit`` takes over one day x 100 symbols from a populated ticks table.

    python benchmarks/audit_day.py --dsn postgresql://postgres@127.0.0.1:5432/postgres [--symbols 100]
        [--per-minute 6] [--repeat 3]

Creates a fresh database on the server (dropped at the end), applies shardctl's schema, COPYs
``symbols x 1440 x per-minute`` ticks (one day; every symbol silent one minute in 50, so the audit
has minutes to explain), records a gap, materialises the one-minute candles over the day, then
times ``run_audit`` three ways: with the candles (the normal case), without them (every minute
found by an index probe on (symbol, time)), and with the candles materialised up to noon only (the
afternoon probed). Prints seconds (best of --repeat), minutes read from candles and probed, CPU
seconds and peak memory of this process, and the machine it ran on.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import platform
import resource
import secrets
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
from psycopg2.extensions import make_dsn

from shardctl.audit.classify import MinuteClass
from shardctl.audit.run import AuditReport, run_audit
from shardctl.config.model import (
    BackfillConfig,
    Config,
    DatabaseConfig,
    ShardConfig,
    ShardSettings,
    SourceConfig,
    SupervisorConfig,
    TablesConfig,
)
from shardctl.db.candles import refresh_range
from shardctl.db.gaps import record_gap
from shardctl.db.schema import apply_schema, recorded_schema

DAY = datetime(2026, 12, 1, tzinfo=timezone.utc)  # a Tuesday


def config(dsn: str, symbols: list[str], tables: TablesConfig) -> Config:
    settings = dataclasses.replace(ShardSettings(), market_hours="24/7")
    shards = {f"s{i}": ShardConfig(f"s{i}", tuple(symbols[i::4]), "TWELVEDATA_API_KEY", settings)
              for i in range(4)}
    return Config(Path("bench.toml"), Path("/tmp"), DatabaseConfig(dsn=dsn), SourceConfig(), tables, settings,
                  SupervisorConfig(), shards, backfill=BackfillConfig())


def populate(dsn: str, symbols: list[str], per_minute: int) -> int:
    conn = psycopg2.connect(dsn)
    rows = 0
    with conn, conn.cursor() as cur:
        for n, symbol in enumerate(symbols):
            buf = io.StringIO()
            for minute in range(1440):
                if (minute + n) % 50 == 0:
                    continue
                base = DAY + timedelta(minutes=minute)
                for k in range(per_minute):
                    at = base + timedelta(seconds=k * 60 / per_minute)
                    buf.write(f"{at.isoformat()}\t{symbol}\t{100 + minute / 1440:.4f}\t{minute * per_minute + k}\n")
                    rows += 1
            buf.seek(0)
            cur.copy_expert('COPY crypto_ticks ("time", symbol, price, day_volume) FROM STDIN', buf)
    record_gap(conn, "s0", DAY + timedelta(hours=3), DAY + timedelta(hours=3, minutes=20), "disconnected")
    conn.close()
    return rows


def timed(cfg: Config, dsn: str, repeat: int) -> tuple[float, AuditReport]:
    first = int(DAY.timestamp() // 60)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        report = run_audit(cfg, dsn, first, first + 1439)
        runs.append((time.perf_counter() - t0, report))
    return min(runs, key=lambda run: run[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("SHARDCTL_TEST_DSN"), help="admin DSN (CREATEDB)")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--per-minute", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or $SHARDCTL_TEST_DSN) is required")
    name = f"audit_bench_{secrets.token_hex(4)}"
    admin = psycopg2.connect(args.dsn)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    dsn = make_dsn(args.dsn, dbname=name)
    try:
        tables = TablesConfig()
        conn = psycopg2.connect(dsn)
        apply_schema(conn, tables)
        flavour = (recorded_schema(conn, tables) or ("unknown",))[0]
        conn.close()
        symbols = [f"SYM{i:03d}/USD" for i in range(args.symbols)]
        t0 = time.perf_counter()
        rows = populate(dsn, symbols, args.per_minute)
        load = time.perf_counter() - t0
        conn = psycopg2.connect(dsn)
        t0 = time.perf_counter()
        refresh_range(conn, tables, DAY, DAY + timedelta(hours=12))
        half = time.perf_counter() - t0
        half_s, half_r = timed(config(dsn, symbols, tables), dsn, args.repeat)
        refresh_range(conn, tables, DAY, DAY + timedelta(days=1))
        conn.close()
        full_s, full_r = timed(config(dsn, symbols, tables), dsn, args.repeat)
        no_candles = dataclasses.replace(tables, candles=("1d",))
        none_s, none_r = timed(config(dsn, symbols, no_candles), dsn, args.repeat)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPU(s), {platform.system()} "
              f"{platform.release()}, Python {platform.python_version()}; {flavour}")
        print(f"populated {rows:,} ticks ({args.symbols} symbols x 1440 minutes x {args.per_minute}) in {load:.1f}s "
              f"({rows / load:,.0f} rows/s); half-day candle refresh {half:.1f}s")
        for label, seconds, report in (("candles over the whole day", full_s, full_r),
                                       ("candles up to noon, afternoon probed", half_s, half_r),
                                       ("no minute candles, every minute probed", none_s, none_r)):
            print(f"audit 1 day x {args.symbols} symbols, {label}: {seconds:.2f}s (best of {args.repeat}); "
                  f"{report.from_candles:,} minutes from candles, {report.probes:,} probed; "
                  f"unexplained {report.unexplained:,}, gap {report.totals[MinuteClass.GAP]:,}")
        print(f"this process: {usage.ru_utime + usage.ru_stime:.1f} CPU seconds, "
              f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB")
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
