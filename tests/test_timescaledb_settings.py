"""``[timescaledb]``: validated like every key; ``db init``/``db status`` name every candle relation and policy;
direct compress in the writer. Real server, real ``shardctl`` subprocesses; both flavours."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
from support import query

from shardctl.config import check_config, load_config
from shardctl.db.writer import Writer
from shardctl.errors import DatabaseError
from shardctl.rows import Tick

SHARDS = """
[source]
url = "ws://127.0.0.1:8765/v1/quotes/price"

[shards.crypto]
symbols = ["BTC/USD"]
"""
UTC = timezone.utc


def _db(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SHARDCTL_DSN", "SHARDCTL_TEST_DSN")}
    return subprocess.run([sys.executable, "-m", "shardctl", "db", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("body, key, message", [
    ('chunk_interval = "7 days"', "timescaledb.chunk_interval", 'expected a duration like'),
    ('chunk_interval = "1.5s"', "timescaledb.chunk_interval", "whole number of seconds"),
    ("columnstore_after = 0", "timescaledb.columnstore_after", "at least 1s"),
    ('drop_after = "2d"', "timescaledb.drop_after", "longer than 3d"),
    ('candle_drop_after = { "5m" = "30d" }', "timescaledb.candle_drop_after.5m", "use one of 1m, 1h, 1d"),
    ('candle_drop_after = { "1h" = "2h" }', "timescaledb.candle_drop_after.1h", "longer than 3h"),
    ('candle_drop_after = "30d"', "timescaledb.candle_drop_after", "must be a table"),
    ('direct_compress = "yes"', "timescaledb.direct_compress", "must be true or false"),
    ('chunk_intervall = "1d"', "timescaledb.chunk_intervall", "did you mean 'chunk_interval'"),
])
def test_bad_settings_name_file_key_and_fix(tmp_path: Path, write_config: Callable[..., Path], body: str, key: str,
                                            message: str) -> None:
    path = write_config(tmp_path, SHARDS + f"\n[timescaledb]\n{body}\n")
    _, problems, _ = check_config(path)
    assert [(p.key, str(path) in str(p)) for p in problems] == [(key, True)]
    assert message in problems[0].message and "\n" not in str(problems[0])


def test_defaults_are_the_tutorials(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    settings = load_config(write_config(tmp_path, SHARDS)).timescaledb
    assert (settings.chunk_interval, settings.columnstore_after) == (7 * 86400, 7 * 86400)
    assert settings.drop_after is None and dict(settings.candle_drop_after) == {}
    assert settings.direct_compress is True  # what the figures support (benchmarks/README.md)
    custom = load_config(write_config(tmp_path, SHARDS + '[timescaledb]\nchunk_interval = "1d"\ndrop_after = "90d"\n'
                                      'candle_drop_after = { "1m" = "7d" }\n')).timescaledb
    assert (custom.chunk_interval, custom.drop_after, dict(custom.candle_drop_after)) == (
        86400, 90 * 86400, {"1m": 7 * 86400})


def test_db_init_and_status_name_every_candle_relation_and_policy(
        tmp_path: Path, write_config: Callable[..., Path], fresh_dsn: str, flavour: str) -> None:
    config = write_config(tmp_path, SHARDS + f"[database]\ndsn = {fresh_dsn!r}\n")
    init = _db("init", str(config))
    assert init.returncode == 0, init.stderr
    status = _db("status", str(config))
    assert status.returncode == 0, status.stderr
    if flavour == "postgresql":
        expected = ["candle 1m: table one_minute_candle, refreshed by shardctl every 1 minute over "
                    "[now - 10 minutes, now - 1 minute)",
                    "candle 1h: table one_hour_candle, refreshed by shardctl every 1 hour over "
                    "[now - 3 hours, now - 1 hour)",
                    "candle 1d: table one_day_candle, refreshed by shardctl every 1 day over "
                    "[now - 3 days, now - 1 day)",
                    "partitions: crypto_ticks by UTC day, created 7 days ahead by shardctl every minute"]
    else:
        expected = ["candle 1m: continuous aggregate one_minute_candle",
                    "candle 1h: continuous aggregate one_hour_candle",
                    "candle 1d: continuous aggregate one_day_candle",
                    "hypertable crypto_ticks: chunk interval 7 days",
                    "policy on crypto_ticks: columnstore after 7 days, every 1 day",
                    "policy on one_day_candle: refresh [now - 3 days, now - 1 day), every 1 day",
                    "policy on one_hour_candle: refresh [now - 3 hours, now - 1 hour), every 1 hour",
                    "policy on one_minute_candle: refresh [now - 10 minutes, now - 1 minute), every 1 minute"]
    assert [ln.strip() for ln in init.stdout.splitlines()[2:]] == expected
    assert [ln for ln in status.stdout.splitlines() if ln in expected] == expected
    if flavour == "postgresql":
        return
    # Change the settings; `db init` again changes the policies (and only them), and says so.
    config.write_text(config.read_text() + '[timescaledb]\nchunk_interval = "1d"\ncolumnstore_after = "2d"\n'
                                           'drop_after = "30d"\ncandle_drop_after = { "1h" = "90d" }\n')
    init = _db("init", str(config))
    assert init.returncode == 0, init.stderr
    lines = [ln.strip() for ln in init.stdout.splitlines()]
    assert "hypertable crypto_ticks: chunk interval 1 day" in lines
    assert "policy on crypto_ticks: columnstore after 2 days, every 12 hours" in lines
    assert "policy on crypto_ticks: retention drop_after 30 days, every 1 day" in lines
    assert "policy on one_hour_candle: retention drop_after 90 days, every 1 day" in lines
    assert sum("policy on" in ln for ln in lines) == 6


def test_direct_compress_writes_columnstore_batches(schema_dsn: str, flavour: str, tables) -> None:
    from shardctl.db.writer import DIRECT_COMPRESS_MIN_ROWS

    def batch(start: datetime, n: int) -> list[Tick]:
        return [Tick(start + timedelta(seconds=i // 2), "BTC/USD" if i % 2 else "ETH/USD", 100.0 + i, i, None, None)
                for i in range(n)]

    big, small = datetime(2031, 1, 8, tzinfo=UTC), datetime(2031, 3, 5, tzinfo=UTC)  # chunks 8 weeks apart
    rows = batch(big, 2 * DIRECT_COMPRESS_MIN_ROWS) + batch(small, DIRECT_COMPRESS_MIN_ROWS - 1)
    with Writer(schema_dsn, tables, "dc", direct_compress=True) as writer:
        assert writer.write(1, rows[:DIRECT_COMPRESS_MIN_ROWS]) and writer.write(2, rows[DIRECT_COMPRESS_MIN_ROWS:-999])
        assert writer.write(3, rows[-999:])  # a small batch: rows, even with direct compress
        with pytest.raises(DatabaseError):  # NOT NULL symbol holds with direct compress too
            writer.write(4, [Tick(big, None, 1.0, None, None, None)] * DIRECT_COMPRESS_MIN_ROWS)
    assert query(schema_dsn, "SELECT count(*), sum(price) FROM crypto_ticks") == [(len(rows), sum(r[2] for r in rows))]
    assert query(schema_dsn, "SELECT last_seq, rows_total FROM shardctl_ledger WHERE shard = 'dc'") == [(3, len(rows))]
    if flavour == "timescaledb":  # the big batches went straight into the columnstore; the small one did not
        assert query(schema_dsn, "SELECT range_start <= %s, is_compressed FROM timescaledb_information.chunks "
                                 "WHERE hypertable_name = 'crypto_ticks' ORDER BY range_start", (big,)) == [
            (True, True), (False, False)]


def test_candles_follow_direct_compressed_batches(schema_dsn: str, tables) -> None:
    """Rows COPY'd straight into the columnstore reach the candles, late ones included (in-memory invalidation)."""
    from shardctl.db.candles import refresh_range
    from shardctl.db.connection import connect
    from shardctl.db.writer import DIRECT_COMPRESS_MIN_ROWS

    day = datetime(2031, 2, 3, tzinfo=UTC)
    first = [Tick(day + timedelta(seconds=i), "BTC/USD", 100.0 + i % 50, i, None, None)
             for i in range(DIRECT_COMPRESS_MIN_ROWS)]
    late = [Tick(day + timedelta(hours=5, seconds=i), "BTC/USD", 90.0 if i == 7 else 120.0, i, None, None)
            for i in range(DIRECT_COMPRESS_MIN_ROWS)]
    conn = connect(schema_dsn)
    try:
        with Writer(schema_dsn, tables, "dc", direct_compress=True) as writer:
            assert writer.write(1, first)
            refresh_range(conn, tables, day, day + timedelta(days=1))
            assert query(schema_dsn, "SELECT \"open\", high, low FROM one_day_candle") == [(100.0, 149.0, 100.0)]
            assert writer.write(2, late)
        refresh_range(conn, tables, day, day + timedelta(days=1))
    finally:
        conn.close()
    assert query(schema_dsn, "SELECT \"open\", high, low, \"close\" FROM one_day_candle") == [(100.0, 149.0, 90.0,
                                                                                            120.0)]
    assert query(schema_dsn, "SELECT count(*) FROM one_minute_candle") == [(17 + 17,)]
