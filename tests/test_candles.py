"""Candles at 1m/1h/1d: hand-computed OHLCV, incremental refresh, late ticks, `shardctl candles`.

On plain PostgreSQL shardctl refreshes candle tables itself (row counts,
watermarks); on TimescaleDB the same tests assert the continuous aggregates'
equivalent: refreshes over the policy windows (counts -1), ``refresh_range``
as the catch-up, and ``materialized_only`` for real-time candles.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import psycopg2
import psycopg2.extras
import pytest
from support import query as query_any
from support import with_schema

from shardctl.config.model import TablesConfig
from shardctl.db.candles import refresh_all_candles, refresh_range
from shardctl.db.candlespec import candle_specs, policy_window
from shardctl.db.connection import connect
from shardctl.db.readouts import format_candles

UTC = timezone.utc
D = datetime(2030, 3, 10, tzinfo=UTC)

#: Candle buckets read in UTC (the session time zone shapes the datetimes psycopg2 returns).
query = functools.partial(query_any, utc=True)


def at(day: datetime, h: int, m: int = 0, s: int = 0) -> datetime:
    return day + timedelta(hours=h, minutes=m, seconds=s)


#: (time, symbol, price, day_volume), deliberately not in time order, with ties on identical timestamps.
TICKS = [
    (at(D, 9, 0, 40), "BTC/USD", 103.0, 2),
    (at(D, 9, 0, 5), "BTC/USD", 100.0, 1),
    (at(D, 9, 0, 5), "BTC/USD", 102.0, 0),   # tie at the open: the lowest price opens
    (at(D, 9, 0, 40), "BTC/USD", 101.0, 3),  # tie at the close: the highest price closes, highest volume
    (at(D, 9, 1, 10), "BTC/USD", 99.0, 4),
    (at(D, 10, 30), "BTC/USD", 110.0, 5),
    (at(D + timedelta(days=1), 0), "BTC/USD", 120.0, 1),
    (at(D, 9, 0, 30), "ETH/USD", 10.0, 7),
]
N = Decimal
#: Hand-computed candles: (bucket, symbol, open, high, low, close, day_volume).
EXPECTED = {
    "1m": [
        (at(D, 9, 0), "BTC/USD", 100.0, 103.0, 100.0, 103.0, N(3)),
        (at(D, 9, 1), "BTC/USD", 99.0, 99.0, 99.0, 99.0, N(4)),
        (at(D, 10, 30), "BTC/USD", 110.0, 110.0, 110.0, 110.0, N(5)),
        (D + timedelta(days=1), "BTC/USD", 120.0, 120.0, 120.0, 120.0, N(1)),
        (at(D, 9, 0), "ETH/USD", 10.0, 10.0, 10.0, 10.0, N(7)),
    ],
    "1h": [
        (at(D, 9), "BTC/USD", 100.0, 103.0, 99.0, 99.0, N(4)),
        (at(D, 10), "BTC/USD", 110.0, 110.0, 110.0, 110.0, N(5)),
        (D + timedelta(days=1), "BTC/USD", 120.0, 120.0, 120.0, 120.0, N(1)),
        (at(D, 9), "ETH/USD", 10.0, 10.0, 10.0, 10.0, N(7)),
    ],
    "1d": [
        (D, "BTC/USD", 100.0, 110.0, 99.0, 110.0, N(5)),
        (D + timedelta(days=1), "BTC/USD", 120.0, 120.0, 120.0, 120.0, N(1)),
        (D, "ETH/USD", 10.0, 10.0, 10.0, 10.0, N(7)),
    ],
}


#: TimescaleDB's first()/last() keep whichever tied row the scan meets first: its tests use the ticks without ties.
UNTIED = [t for t in TICKS if t[2] not in (102.0, 101.0)]
EXPECTED_UNTIED = {**EXPECTED, "1m": [(at(D, 9, 0), "BTC/USD", 100.0, 103.0, 100.0, 103.0, N(2)), *EXPECTED["1m"][1:]]}
UNKNOWN = {"1m": -1, "1h": -1, "1d": -1}  # what a TimescaleDB refresh returns: no row counts
BEGINNING = datetime(2000, 1, 1, tzinfo=UTC)


def insert_ticks(dsn: str, rows: list[tuple], table: str = "crypto_ticks") -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur, f'INSERT INTO {table} ("time", symbol, price, day_volume) VALUES %s', rows)
        conn.commit()
    finally:
        conn.close()


def candles(dsn: str, table: str) -> list[tuple]:
    return query(dsn, f"SELECT * FROM {table} ORDER BY symbol, bucket")


def refresh(dsn: str, tables: TablesConfig, now: datetime, **kwargs: Any) -> dict[str, int]:
    conn = connect(dsn)
    try:
        return refresh_all_candles(conn, tables, now, **kwargs)
    finally:
        conn.close()


def catch_up(dsn: str, tables: TablesConfig, now: datetime) -> None:
    """TimescaleDB: materialise every bucket before each policy window's end (what shardctl's first refresh
    does on PostgreSQL, and what creating the aggregate WITH DATA does for rows already there)."""
    conn = connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for spec in candle_specs(tables):
                cur.execute("CALL refresh_continuous_aggregate(%s, %s, %s)",
                            (spec.table, BEGINNING, policy_window(spec, now)[1]))
    finally:
        conn.close()


def buckets_in_windows(ticks: list[tuple], tables: TablesConfig, now: datetime) -> dict[str, int]:
    """Per interval, the (bucket, symbol) pairs of ``ticks`` inside the policy window at ``now``."""
    from shardctl.db.candlespec import floor_bucket

    result = {}
    for spec in candle_specs(tables):
        lo, hi = policy_window(spec, now)
        result[spec.interval] = len({(floor_bucket(t[0], spec.width), t[1]) for t in ticks
                                     if lo <= floor_bucket(t[0], spec.width) < hi})
    return result


def counts(dsn: str) -> dict[str, int]:
    return {i: query(dsn, f"SELECT count(*) FROM {t}")[0][0]
            for i, t in (("1m", "one_minute_candle"), ("1h", "one_hour_candle"), ("1d", "one_day_candle"))}


def test_policies_and_windows(tables: TablesConfig) -> None:
    specs = {s.interval: s for s in candle_specs(tables)}
    assert [s.table for s in specs.values()] == ["one_minute_candle", "one_hour_candle", "one_day_candle"]
    now = datetime(2030, 6, 10, 12, 30, 15, tzinfo=UTC)
    # Whole buckets inside [now - start_offset, now - end_offset), as a TimescaleDB policy refreshes them.
    assert policy_window(specs["1m"], now) == (at(datetime(2030, 6, 10, tzinfo=UTC), 12, 21),
                                               at(datetime(2030, 6, 10, tzinfo=UTC), 12, 29))
    assert policy_window(specs["1h"], now) == (at(datetime(2030, 6, 10, tzinfo=UTC), 10),
                                               at(datetime(2030, 6, 10, tzinfo=UTC), 11))
    assert policy_window(specs["1d"], now) == (datetime(2030, 6, 8, tzinfo=UTC), datetime(2030, 6, 9, tzinfo=UTC))


@pytest.mark.parametrize("realtime", [False, True])
def test_ohlcv_at_each_interval_matches_hand_computed(schema_dsn: str, tables: TablesConfig, realtime: bool,
                                                      flavour: str) -> None:
    tables = replace(tables, realtime_candles=realtime)
    if flavour == "timescaledb":
        insert_ticks(schema_dsn, UNTIED)
        with_schema(schema_dsn, tables)  # realtime_candles: materialized_only = false
        if not realtime:  # materialise the ticks' buckets; real time reads them straight from the ticks
            conn = connect(schema_dsn)
            try:
                assert refresh_range(conn, tables, D, D + timedelta(days=2)) == UNKNOWN
            finally:
                conn.close()
        for spec in candle_specs(tables):
            assert candles(schema_dsn, spec.table) == sorted(EXPECTED_UNTIED[spec.interval], key=lambda r: (r[1], r[0]))
        return
    insert_ticks(schema_dsn, TICKS)
    # Real time: just after the last tick, so the newest buckets come from the tail (rolled up for 1h/1d).
    now = at(D + timedelta(days=1), 0, 0, 30) if realtime else D + timedelta(days=5)
    counts = refresh(schema_dsn, tables, now)
    assert counts == {k: len(v) for k, v in EXPECTED.items()}
    for spec in candle_specs(tables):
        assert candles(schema_dsn, spec.table) == sorted(EXPECTED[spec.interval], key=lambda r: (r[1], r[0]))


def test_not_realtime_leaves_the_open_buckets_alone(schema_dsn: str, tables: TablesConfig, flavour: str) -> None:
    insert_ticks(schema_dsn, TICKS)
    now = at(D + timedelta(days=1), 0, 0, 30)
    if flavour == "timescaledb":  # the policies have run over all history up to now
        catch_up(schema_dsn, tables, now)
    else:
        refresh(schema_dsn, tables, now)
    assert query(schema_dsn, "SELECT max(bucket) FROM one_minute_candle") == [(at(D, 10, 30),)]
    assert query(schema_dsn, "SELECT count(*) FROM one_day_candle") == [(0,)]  # bucket D ends < 1 day ago


def _minute_ticks(start: datetime, minutes: int, symbols: tuple[str, ...] = ("A", "B")) -> list[tuple]:
    return [(start + timedelta(minutes=i, seconds=7), s, 100.0 + i % 17, i) for i in range(minutes) for s in symbols]


def test_refresh_rewrites_only_recent_buckets(schema_dsn: str, tables: TablesConfig, flavour: str) -> None:
    now = at(D, 12, 0, 30)
    ticks = _minute_ticks(now - timedelta(days=2), 2 * 24 * 60)
    insert_ticks(schema_dsn, ticks)
    if flavour == "timescaledb":
        # The aggregates were created empty; each refresh materialises exactly its policy window.
        assert refresh(schema_dsn, tables, now) == UNKNOWN
        assert counts(schema_dsn) == buckets_in_windows(ticks, tables, now) == {"1m": 2 * 8, "1h": 2, "1d": 2}
        later = now + timedelta(hours=1)
        assert refresh(schema_dsn, tables, later) == UNKNOWN
        seen = {i: a + b for (i, a), b in zip(buckets_in_windows(ticks, tables, now).items(),
                                               buckets_in_windows(ticks, tables, later).values())}
        assert counts(schema_dsn) == {**seen, "1d": 2}  # 1m: two disjoint windows; 1h: the next hour; 1d: same day
        return
    first = refresh(schema_dsn, tables, now)
    assert first["1m"] == 2 * (2 * 24 * 60 - 1)  # the whole history once (no watermark yet), to now - 1 minute
    old = query(schema_dsn, "SELECT xmin::text FROM one_minute_candle WHERE bucket = %s", (at(D, 11, 0),))
    assert refresh(schema_dsn, tables, now + timedelta(seconds=20)) == {"1m": 0, "1h": 0, "1d": 0}  # not due
    insert_ticks(schema_dsn, _minute_ticks(now - timedelta(seconds=30), 1))
    later = refresh(schema_dsn, tables, now + timedelta(minutes=1))
    # 1m: the 8 whole minutes in [now - 10 min, now - 1 min) of 2 symbols; 1h and 1d are not due yet.
    assert later == {"1m": 2 * 8, "1h": 0, "1d": 0}
    assert query(schema_dsn, "SELECT xmin::text FROM one_minute_candle WHERE bucket = %s", (at(D, 11, 0),)) == old
    # An hour on: 1m catches up from its watermark (only the 12:00 minute has ticks); 1h rewrites 11:00.
    assert refresh(schema_dsn, tables, now + timedelta(hours=1)) == {"1m": 2 * 1, "1h": 2 * 1, "1d": 0}
    assert refresh(schema_dsn, tables, now + timedelta(days=1))["1d"] == 2 * 1
    assert query(schema_dsn, "SELECT count(*) FROM one_minute_candle") == [(2 * (2 * 24 * 60 + 1),)]


def test_late_ticks_inside_the_window_count_outside_do_not(schema_dsn: str, tables: TablesConfig,
                                                          flavour: str) -> None:
    now = at(D, 12, 0, 30)
    insert_ticks(schema_dsn, _minute_ticks(now - timedelta(hours=1), 60, ("A",)))
    if flavour == "timescaledb":
        catch_up(schema_dsn, tables, now)
    refresh(schema_dsn, tables, now)
    inside, outside = at(D, 11, 55, 1), at(D, 11, 30, 1)  # 5 and 30 minutes late at the next refresh
    insert_ticks(schema_dsn, [(inside, "A", 1000.0, 999), (outside, "A", 1000.0, 999)])
    refresh(schema_dsn, tables, now + timedelta(minutes=1))
    highs = dict(query(schema_dsn, "SELECT bucket, high FROM one_minute_candle WHERE bucket IN (%s, %s)",
                       (at(D, 11, 55), at(D, 11, 30))))
    assert highs == {at(D, 11, 55): 1000.0, at(D, 11, 30): 100.0 + 30 % 17}
    if flavour == "timescaledb":  # the manual fix for old buckets: refresh_range over them
        conn = connect(schema_dsn)
        try:
            refresh_range(conn, tables, at(D, 11, 30), at(D, 11, 31))
        finally:
            conn.close()
    else:  # forgetting the watermark rebuilds the whole table at the next refresh (the manual fix)
        query(schema_dsn, "DELETE FROM shardctl_candle_state WHERE candle_table = 'one_minute_candle'; COMMIT")
        refresh(schema_dsn, tables, now + timedelta(minutes=2))
    assert query(schema_dsn, "SELECT high FROM one_minute_candle WHERE bucket = %s", (at(D, 11, 30),)) == [(1000.0,)]


def test_refresh_range_rebuilds_old_buckets_after_a_backfill(schema_dsn: str, tables: TablesConfig,
                                                             flavour: str) -> None:
    now = at(D, 12, 0, 30)
    plain = flavour == "postgresql"
    refresh(schema_dsn, tables, now)
    insert_ticks(schema_dsn, [(at(D, 3, 15, 20), "A", 5.0, 1), (at(D, 3, 40), "A", 6.0, 2)])  # backfilled
    assert refresh(schema_dsn, tables, now + timedelta(minutes=1))["1m"] == (0 if plain else -1)  # outside every window
    assert counts(schema_dsn) == {"1m": 0, "1h": 0, "1d": 0}
    conn = connect(schema_dsn)
    try:
        assert refresh_range(conn, tables, at(D, 3, 15, 20), at(D, 3, 40)) == (
            {"1m": 1, "1h": 1, "1d": 1} if plain else UNKNOWN)
        assert refresh_range(conn, tables, at(D, 3), at(D, 4)) == ({"1m": 2, "1h": 1, "1d": 1} if plain else UNKNOWN)
    finally:
        conn.close()
    assert query(schema_dsn, "SELECT bucket, \"open\", \"close\" FROM one_hour_candle") == [(at(D, 3), 5.0, 6.0)]


def test_catch_up_after_a_pause_skips_no_bucket(schema_dsn: str, tables: TablesConfig, flavour: str) -> None:
    now = at(D, 12, 0, 30)
    refresh(schema_dsn, tables, now)  # nothing yet; sets the watermarks (PostgreSQL)
    insert_ticks(schema_dsn, _minute_ticks(now, 120, ("A",)))
    written = refresh(schema_dsn, tables, now + timedelta(hours=2))  # refreshes stopped for two hours
    if flavour == "timescaledb":
        # A policy refreshes its window only (8 minutes here); refresh_range over the pause is the catch-up.
        assert written == UNKNOWN and counts(schema_dsn)["1m"] == 8
        conn = connect(schema_dsn)
        try:
            refresh_range(conn, tables, now, now + timedelta(hours=2) - timedelta(minutes=1))
        finally:
            conn.close()
        assert counts(schema_dsn)["1m"] == 120 and counts(schema_dsn)["1h"] == 2
        return
    assert written["1m"] == 120 - 1 and written["1h"] == 1
    assert query(schema_dsn, "SELECT count(*) FROM one_minute_candle") == [(119,)]


def test_format_candles_aligns_columns() -> None:
    rows = [(D, "BTC/USD", 100.0, 110.5, 99.0, 110.0, Decimal("5")),
            (D + timedelta(days=1), "BTC/USD", 1200.25, 1200.25, 1200.25, 1200.25, None)]
    text = format_candles(rows).splitlines()
    assert text[0].split(" | ") == ["bucket                ", "symbol ", "open   ", "high   ", "low    ",
                                    "close  ", "day_volume"]
    assert text[2] == "2030-03-10 00:00:00+00 | BTC/USD |   100.0 |   110.5 |    99.0 |   110.0 |          5"
    assert len({len(line) for line in text[:2]}) == 1
    assert format_candles(rows, "csv").splitlines()[1] == "2030-03-10 00:00:00+00,BTC/USD,100.0,110.5,99.0,110.0,5"
    assert json.loads(format_candles(rows, "json"))[0] == {
        "bucket": "2030-03-10T00:00:00+00:00", "symbol": "BTC/USD", "open": 100.0, "high": 110.5, "low": 99.0,
        "close": 110.0, "day_volume": 5}


# ------------------------------------------------------------------ the command


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHARDCTL_DSN"}
    return subprocess.run([sys.executable, "-m", "shardctl", "candles", str(config), *args],
                           capture_output=True, text=True, timeout=60, env=env)


def _config(write_config: Callable[..., Path], directory: Path, dsn: str) -> Path:
    return write_config(directory, f"""
        [source]
        url = "ws://127.0.0.1:8765/v1/quotes/price"
        [database]
        dsn = "{dsn}"
        [shards.crypto]
        symbols = ["BTC/USD"]
        """)


@pytest.mark.slow
def test_candles_command(schema_dsn: str, tables: TablesConfig, tmp_path: Path,
                         write_config: Callable[..., Path]) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    d0, d1 = today - timedelta(days=3), today - timedelta(days=2)
    insert_ticks(schema_dsn, [(at(d0, 1), "BTC/USD", 100.0, 5), (at(d0, 9), "BTC/USD", 95.0, 20),
                              (at(d1, 2), "BTC/USD", 110.0, 7), (at(d1, 8), "BTC/USD", 130.5, 15)])
    conn = connect(schema_dsn)
    try:
        refresh_range(conn, tables, d0, d1 + timedelta(days=1))  # both flavours, whatever the hour
    finally:
        conn.close()
    config = _config(write_config, tmp_path, schema_dsn)

    table = _run(config, "BTC/USD")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        "bucket                 | symbol  | open  | high  | low   | close | day_volume",
        "-----------------------+---------+-------+-------+-------+-------+-----------",
        f"{d0:%Y-%m-%d} 00:00:00+00 | BTC/USD | 100.0 | 100.0 |  95.0 |  95.0 |         20",
        f"{d1:%Y-%m-%d} 00:00:00+00 | BTC/USD | 110.0 | 130.5 | 110.0 | 130.5 |         15",
    ]
    # A window that starts halfway between d0 and d1, whatever the hour: d1's candle only.
    since = datetime.now(UTC) - (d1 - timedelta(hours=12))
    as_json = _run(config, "BTC/USD", "--format", "json", "--since", f"{int(since.total_seconds() // 60)}m")
    assert [r["close"] for r in json.loads(as_json.stdout)] == [130.5]
    as_csv = _run(config, "BTC/USD", "--interval", "1h", "--format", "csv")
    assert as_csv.stdout.splitlines()[1:] == [f"{at(d0, 1):%Y-%m-%d %H}:00:00+00,BTC/USD,100.0,100.0,100.0,100.0,5",
                                              f"{at(d0, 9):%Y-%m-%d %H}:00:00+00,BTC/USD,95.0,95.0,95.0,95.0,20",
                                              f"{at(d1, 2):%Y-%m-%d %H}:00:00+00,BTC/USD,110.0,110.0,110.0,110.0,7",
                                              f"{at(d1, 8):%Y-%m-%d %H}:00:00+00,BTC/USD,130.5,130.5,130.5,130.5,15"]

    missing = _run(config, "BTC/USDT")
    assert missing.returncode == 0 and missing.stdout == ""
    assert missing.stderr.strip() == ("no 1d candles for 'BTC/USDT' in the last 14d (in one_day_candle); "
                                      "did you mean BTC/USD?")
    bad = _run(config, "BTC/USD", "--interval", "5m")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "shardctl: error: unknown candle interval '5m'; configured: 1m, 1h, 1d"


def test_candles_command_database_unreachable(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    config = _config(write_config, tmp_path, "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2")
    result = _run(config, "BTC/USD")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("shardctl: error: cannot reach the database")


SEED_VIEW = """CREATE MATERIALIZED VIEW one_day_candle
WITH (timescaledb.continuous) AS
    SELECT
        time_bucket('1 day', time) AS bucket,
        symbol,
        FIRST(price, time) AS "open",
        MAX(price) AS high,
        MIN(price) AS low,
        LAST(price, time) AS "close",
        LAST(day_volume, time) AS day_volume
    FROM crypto_ticks
    GROUP BY bucket, symbol"""
SEED_POLICY = """SELECT add_continuous_aggregate_policy('one_day_candle',
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 day',"""


def test_timescaledb_statements_are_the_seed_for_the_day(fresh_dsn: str, tables: TablesConfig) -> None:
    from shardctl.db.schema import candle_names, statements

    conn = psycopg2.connect(fresh_dsn)
    try:
        specs = {s.interval: s for s in candle_specs(tables)}
        view, policy = [s.as_string(conn) for s in statements(conn, "timescaledb/candles.sql", tables,
                                                              candle_names(conn, specs["1d"]))]
        # The same text apart from quoted (configurable) names.
        view, policy = (t.replace('"one_day_candle"', "one_day_candle").replace('"crypto_ticks"', "crypto_ticks")
                        for t in (view, policy))
        assert view == SEED_VIEW and policy.startswith(SEED_POLICY)
        view, policy = [s.as_string(conn) for s in statements(conn, "timescaledb/candles.sql", tables,
                                                              candle_names(conn, specs["1m"]))]
        assert "time_bucket('1 minute', time)" in view and "start_offset => INTERVAL '10 minutes'" in policy
    finally:
        conn.close()


@pytest.mark.parametrize("body, key, message", [
    ('candles = ["1m", "5m", "1d"]', "tables.candles", "must be a list of intervals"),
    ('candles = ["1m", "1h"]', "tables.candles", "includes \"1d\""),
    ("realtime_candles = 1", "tables.realtime_candles", "must be true or false"),
    ('hour_candle = "one_day_candle"', "tables.hour_candle", "already the name of another table"),
])
def test_candle_settings_are_checked(tmp_path: Path, write_config: Callable[..., Path], body: str, key: str,
                                     message: str) -> None:
    from shardctl.config import check_config

    path = write_config(tmp_path, f"""
        [source]
        url = "ws://127.0.0.1:8765/v1/quotes/price"
        [tables]
        {body}
        [shards.crypto]
        symbols = ["BTC/USD"]
        """)
    _, problems, _ = check_config(path)
    assert [p.key for p in problems] == [key] and message in problems[0].message


def test_candle_settings_are_read(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    from shardctl.config import load_config

    path = write_config(tmp_path, """
        [source]
        url = "ws://127.0.0.1:8765/v1/quotes/price"
        [tables]
        candles = ["1d", "1h"]
        realtime_candles = true
        [shards.crypto]
        symbols = ["BTC/USD"]
        """)
    tables = load_config(path).tables
    assert tables.candles == ("1h", "1d") and tables.realtime_candles is True
    assert [s.table for s in candle_specs(tables)] == ["one_hour_candle", "one_day_candle"]
