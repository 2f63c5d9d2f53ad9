"""Schema on a real server: idempotent, seed-compatible, partitions by day, candles that match the seed query."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg2
import pytest
from support import chunk_placement, query, wait_until

from shardctl.config.model import TablesConfig
from shardctl.db.candles import refresh_range
from shardctl.db.connection import connect
from shardctl.db.schema import (
    SCHEMA_VERSION,
    apply_schema,
    detect_flavour,
    ensure_partition,
    partition_name,
    recorded_schema,
    upsert_assets,
)
from shardctl.db.writer import Writer
from shardctl.errors import DatabaseError
from shardctl.rows import Tick

SEED_QUERY = ("SELECT * FROM one_day_candle WHERE symbol = 'BTC/USD' AND bucket >= NOW() - INTERVAL '14 days' "
              "ORDER BY bucket")
UTC = timezone.utc


def _objects(dsn: str) -> list[tuple]:
    return query(dsn, """SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname = 'public' ORDER BY 1""")


def _columns(dsn: str, table: str) -> list[tuple]:
    return query(dsn, """SELECT column_name, data_type, is_nullable FROM information_schema.columns
                          WHERE table_name = %s ORDER BY ordinal_position""", (table,))


def test_apply_twice_is_a_noop(schema_dsn: str, tables: TablesConfig, flavour: str) -> None:
    before = _objects(schema_dsn), query(schema_dsn, "SELECT * FROM shardctl_schema")
    conn = connect(schema_dsn)
    try:
        assert apply_schema(conn, tables) == flavour
        assert conn.autocommit is False and conn.status == psycopg2.extensions.STATUS_READY
        assert recorded_schema(conn, tables) == (flavour, SCHEMA_VERSION)
    finally:
        conn.close()
    assert (_objects(schema_dsn), query(schema_dsn, "SELECT * FROM shardctl_schema")) == before


def test_flavour_tables(schema_dsn: str, tables: TablesConfig, flavour: str) -> None:
    conn = connect(schema_dsn)
    assert detect_flavour(conn) == flavour  # the embedded server has no TimescaleDB
    conn.close()
    assert _columns(schema_dsn, "crypto_ticks") == [
        ("time", "timestamp with time zone", "NO"), ("symbol", "text", "NO"),
        ("price", "double precision", "YES"), ("day_volume", "numeric", "YES"),
        ("bid", "double precision", "YES"), ("ask", "double precision", "YES")]
    assert _columns(schema_dsn, "crypto_assets") == [("symbol", "text", "YES"), ("name", "text", "YES")]
    assert [c[0] for c in _columns(schema_dsn, "one_day_candle")] == [
        "bucket", "symbol", "open", "high", "low", "close", "day_volume"]
    assert [c[:2] for c in _columns(schema_dsn, "shardctl_ledger")] == [
        ("shard", "text"), ("last_seq", "bigint"), ("journal_offset", "bigint"), ("rows_total", "bigint"),
        ("updated_at", "timestamp with time zone"), ("received_at", "timestamp with time zone")]
    index = query(schema_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = 'crypto_ticks'")
    assert any('(symbol, "time" DESC)' in row[0] for row in index)
    if flavour == "timescaledb":
        # A hypertable with the tutorial's 7-day chunks; a chunk appears for each week a tick falls in.
        assert query(schema_dsn, "SELECT time_interval FROM timescaledb_information.dimensions "
                                  "WHERE hypertable_name = 'crypto_ticks'") == [(timedelta(days=7),)]
        assert query(schema_dsn, "SELECT count(*) FROM timescaledb_information.chunks") == [(0,)]
        moments = [datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=d) for d in (0, 1, 20)]
        with Writer(schema_dsn, tables, "s") as writer:
            assert writer.write(1, [Tick(m, "A", 1.0, None, None, None) for m in moments])
        placed = chunk_placement(schema_dsn)
        assert [inside for _, inside in placed] == [True] * 3 and len({chunk for chunk, _ in placed}) == 2
        return
    assert query(schema_dsn, "SELECT relkind FROM pg_class WHERE relname = 'crypto_ticks'") == [("p",)]
    # Partitions from yesterday to a week ahead, plus the DEFAULT one.
    today = datetime.now(UTC).date()
    names = {r[0] for r in query(schema_dsn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON "
                                             "c.oid = i.inhrelid WHERE i.inhparent = 'crypto_ticks'::regclass")}
    expected = {partition_name(TablesConfig(), today + timedelta(days=d)) for d in range(-1, 8)}
    assert expected | {"crypto_ticks_default"} == names


def test_rows_in_the_default_partition_move_when_their_day_gets_one(schema_dsn: str, tables: TablesConfig,
                                                                    flavour: str) -> None:
    day = date(2001, 2, 3)
    moment = datetime(2001, 2, 3, 12, tzinfo=UTC)
    conn = connect(schema_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO crypto_ticks (time, symbol, price) VALUES (%s, 'A', 1), (%s, 'A', 2), "
                        "(%s, 'B', 3)", (moment, moment, moment + timedelta(days=1)))
        conn.commit()
        if flavour == "timescaledb":
            # No default partition to catch a day without its own: every tick lands in the chunk of its time.
            assert [inside for _, inside in chunk_placement(schema_dsn)] == [True] * 3
            return
        assert ensure_partition(conn, tables, day) is True
        assert ensure_partition(conn, tables, day) is False
    finally:
        conn.close()
    where = query(schema_dsn, "SELECT tableoid::regclass::text, symbol, price FROM crypto_ticks ORDER BY price")
    assert where == [("crypto_ticks_p20010203", "A", 1.0), ("crypto_ticks_p20010203", "A", 2.0),
                     ("crypto_ticks_default", "B", 3.0)]


def refresh_days(conn: object, tables: TablesConfig, lo: datetime, hi: datetime) -> int:
    """Rewrite the daily candles of the days overlapping [lo, hi); the rows written."""
    return refresh_range(conn, replace(tables, candles=("1d",)), lo, hi)["1d"]


@pytest.mark.timescaledb
def test_a_refresh_that_meets_a_concurrent_one_tries_again(schema_dsn: str, tables: TablesConfig,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """TimescaleDB refuses at once a refresh overlapping one in progress (its policy job's): refresh_range
    tries again until the other is done, instead of failing the caller."""
    holder = psycopg2.connect(schema_dsn)
    holder.autocommit = True
    conn = connect(schema_dsn)
    try:
        with holder.cursor() as cur:  # what a refresh in progress registers: a live backend's window
            cur.execute("INSERT INTO _timescaledb_catalog.continuous_aggs_jobs_refresh_ranges "
                        "SELECT mat_hypertable_id, %s, %s, pg_backend_pid(), 0, now() "
                        "FROM _timescaledb_catalog.continuous_agg WHERE user_view_name = %s",
                        (-2**62, 2**62, tables.day_candle))
            assert cur.rowcount == 1

        def finish_the_other_refresh() -> None:
            with holder.cursor() as cur:
                cur.execute("DELETE FROM _timescaledb_catalog.continuous_aggs_jobs_refresh_ranges "
                            "WHERE pid = pg_backend_pid()")

        caplog.set_level(logging.INFO, logger="shardctl.candles")
        day = datetime(2024, 1, 1, tzinfo=UTC)
        finishing = threading.Thread(target=lambda: (wait_until(
            lambda: "another refresh of one_day_candle is in progress" in caplog.text, 20,
            what="the first refusal"), finish_the_other_refresh()))
        finishing.start()
        assert refresh_days(conn, tables, day, day + timedelta(days=1)) == -1
        finishing.join(10)
    finally:
        conn.close()
        holder.close()
    assert caplog.text.count("another refresh of one_day_candle is in progress") >= 1


def test_seed_candle_query_gives_ohlcv(schema_dsn: str, tables: TablesConfig, flavour: str) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    d0, d1, d2 = today - timedelta(days=2), today - timedelta(days=1), today

    def at(day: datetime, hour: int) -> datetime:
        return day + timedelta(hours=hour)

    rows = [  # deliberately not in time order
        Tick(at(d0, 5), "BTC/USD", 105.0, Decimal("10"), None, None),
        Tick(at(d0, 1), "BTC/USD", 100.0, 5, None, None),
        Tick(at(d0, 9), "BTC/USD", 95.0, 20, None, None),
        Tick(at(d0, 3), "ETH/USD", 10.0, 1, None, None),
        Tick(at(d1, 2), "BTC/USD", 110.0, 7, 109.5, 110.5),
        Tick(at(d1, 20), "BTC/USD", 120.0, Decimal("30.5"), None, None),
        Tick(at(d1, 8), "BTC/USD", 130.0, 15, None, None),
        Tick(at(d2, 0), "BTC/USD", 140.0, 1, None, None),
        Tick(at(d2, 0), "BTC/USD", 141.0, 2, None, None),  # same second: the tie rule picks deterministically
        Tick(at(d2, 23), "BTC/USD", 150.0, 3, None, None),
        Tick(at(d2, 23), "BTC/USD", 149.0, 4, None, None),
    ]
    with Writer(schema_dsn, tables, "crypto") as writer:
        assert writer.write(1, rows)
    # Rows written: 3 BTC days + 1 ETH day; TimescaleDB's refresh_continuous_aggregate does not say (-1).
    written = 4 if flavour == "postgresql" else -1
    conn = connect(schema_dsn)
    try:
        assert refresh_days(conn, tables, d0, d2 + timedelta(days=1)) == written
        assert refresh_days(conn, tables, d0, d2 + timedelta(days=1)) == written  # idempotent
    finally:
        conn.close()
    result = query(schema_dsn, SEED_QUERY)
    if flavour == "timescaledb":
        # first()/last() keep whichever tied row the scan meets first: d2's open, close and volume are one
        # of the two ticks of their second; everything else is the same as on PostgreSQL.
        assert result[2][2] in (140.0, 141.0) and result[2][5] in (150.0, 149.0)
        assert result[2][6] in (Decimal("3"), Decimal("4"))
        result[2] = (d2, "BTC/USD", 140.0, 150.0, 140.0, 150.0, Decimal("4"))
    assert result == [
        (d0, "BTC/USD", 100.0, 105.0, 95.0, 95.0, Decimal("20")),
        (d1, "BTC/USD", 110.0, 130.0, 110.0, 120.0, Decimal("30.5")),
        (d2, "BTC/USD", 140.0, 150.0, 140.0, 150.0, Decimal("4")),
    ]


def test_refresh_only_touches_its_window(schema_dsn: str, tables: TablesConfig, flavour: str) -> None:
    now = datetime(2030, 6, 10, 12, tzinfo=UTC)
    old = datetime(2030, 6, 1, 1, tzinfo=UTC)
    with Writer(schema_dsn, tables, "s") as writer:
        writer.write(1, [Tick(old, "X", 1.0, 1, None, None), Tick(now, "X", 2.0, 2, None, None)])
    conn = connect(schema_dsn)
    try:
        written = (2, 1) if flavour == "postgresql" else (-1, -1)  # TimescaleDB does not count (-1)
        assert refresh_days(conn, tables, now - timedelta(days=30), now) == written[0]
        with conn.cursor() as cur:
            cur.execute("DELETE FROM crypto_ticks WHERE time = %s", (old,))
        conn.commit()
        assert refresh_days(conn, tables, now - timedelta(days=3), now) == written[1]  # 2030-06-01 is outside: kept
    finally:
        conn.close()
    assert [r[0] for r in query(schema_dsn, "SELECT bucket FROM one_day_candle ORDER BY bucket")] == [
        datetime(2030, 6, 1, tzinfo=UTC), datetime(2030, 6, 10, tzinfo=UTC)]


def test_custom_table_names_are_quoted(fresh_dsn: str, flavour: str) -> None:
    tables = TablesConfig(ticks="MyTicks", assets="My_Assets", day_candle="DayCandle", ledger="Ledger")
    conn = connect(fresh_dsn)
    try:
        assert apply_schema(conn, tables) == flavour
    finally:
        conn.close()
    with Writer(fresh_dsn, tables, "a") as writer:
        assert writer.write(1, [Tick(datetime(1999, 12, 31, 23, 59, tzinfo=UTC), "Z", 1.0, None, None, None)])
    if flavour == "timescaledb":
        assert query(fresh_dsn, "SELECT hypertable_name FROM timescaledb_information.hypertables") == [("MyTicks",)]
        assert query(fresh_dsn, "SELECT view_name FROM timescaledb_information.continuous_aggregates "
                                 "WHERE view_name = 'DayCandle'") == [("DayCandle",)]
        assert query(fresh_dsn, 'SELECT count(*) FROM "MyTicks"') == [(1,)]
    else:
        assert query(fresh_dsn, 'SELECT tableoid::regclass::text FROM "MyTicks"') == [('"MyTicks_p19991231"',)]
    assert query(fresh_dsn, 'SELECT last_seq FROM "Ledger"') == [(1,)]


def test_existing_unpartitioned_ticks_table_is_refused(fresh_dsn: str, tables: TablesConfig, flavour: str) -> None:
    query(fresh_dsn, "CREATE TABLE crypto_ticks (time timestamptz, symbol text); COMMIT")
    conn = connect(fresh_dsn)
    try:
        with pytest.raises(DatabaseError, match="not a hypertable" if flavour == "timescaledb" else "not partitioned"):
            apply_schema(conn, tables)
    finally:
        conn.close()


def test_candle_tables_and_state(schema_dsn: str, flavour: str) -> None:
    for table in ("one_minute_candle", "one_hour_candle", "one_day_candle"):
        assert [c[0] for c in _columns(schema_dsn, table)] == [
            "bucket", "symbol", "open", "high", "low", "close", "day_volume"]
        if flavour == "timescaledb":  # continuous aggregates (indexed by TimescaleDB) with a refresh policy each
            assert query(schema_dsn, "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name = %s "
                                      "AND proc_name = 'policy_refresh_continuous_aggregate'", (table,)) == [(1,)]
            continue
        index = query(schema_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = %s", (table,))
        assert any(row[0].endswith("USING btree (bucket)") for row in index), table
    if flavour == "postgresql":  # shardctl's refresh progress; TimescaleDB keeps its own watermarks
        assert [c[0] for c in _columns(schema_dsn, "shardctl_candle_state")] == [
            "candle_table", "watermark", "last_run", "rows_last"]


def test_migration_from_version_1_adds_candles_and_keeps_rows(schema_dsn: str, tables: TablesConfig,
                                                              flavour: str) -> None:
    if flavour == "timescaledb":
        # Version 1 on TimescaleDB: only one_day_candle (a continuous aggregate with its policy).
        query(schema_dsn, """DROP MATERIALIZED VIEW one_minute_candle, one_hour_candle;
                              UPDATE shardctl_schema SET version = 1;
                              INSERT INTO crypto_ticks (time, symbol, price) VALUES ('2030-01-01 10:00+00', 'A', 1);
                              COMMIT""")
        conn = connect(schema_dsn)
        try:
            assert recorded_schema(conn, tables) == ("timescaledb", 1)
            assert apply_schema(conn, tables) == "timescaledb"
            assert recorded_schema(conn, tables) == ("timescaledb", SCHEMA_VERSION)
            assert apply_schema(conn, tables) == "timescaledb"  # idempotent
        finally:
            conn.close()
        assert sorted(query(schema_dsn, "SELECT view_name FROM timescaledb_information.continuous_aggregates")) == [
            ("one_day_candle",), ("one_hour_candle",), ("one_minute_candle",)]
        assert query(schema_dsn, "SELECT count(*) FROM timescaledb_information.jobs "
                                  "WHERE proc_name = 'policy_refresh_continuous_aggregate'") == [(3,)]
        # The new aggregates are created WITH DATA: they already hold the old tick's candles.
        assert query(schema_dsn, "SELECT symbol, high FROM one_hour_candle") == [("A", 1.0)]
        assert query(schema_dsn, "SELECT count(*) FROM crypto_ticks") == [(1,)]
        return
    # Make the database look like version 1: no finer candles, no state table, no bucket index.
    query(schema_dsn, """DROP TABLE one_minute_candle, one_hour_candle, shardctl_candle_state;
                          DROP INDEX one_day_candle_bucket_idx;
                          UPDATE shardctl_schema SET version = 1;
                          INSERT INTO one_day_candle VALUES ('2030-01-01', 'A', 1, 2, 0.5, 1.5, 10);
                          INSERT INTO crypto_ticks (time, symbol, price) VALUES ('2030-01-01 10:00+00', 'A', 1);
                          COMMIT""")
    conn = connect(schema_dsn)
    try:
        assert recorded_schema(conn, tables) == ("postgresql", 1)
        assert apply_schema(conn, tables) == "postgresql"
        assert recorded_schema(conn, tables) == ("postgresql", SCHEMA_VERSION) == ("postgresql", 2)
        assert apply_schema(conn, tables) == "postgresql"  # idempotent
    finally:
        conn.close()
    assert query(schema_dsn, "SELECT symbol, high FROM one_day_candle") == [("A", 2.0)]
    assert query(schema_dsn, "SELECT count(*) FROM one_minute_candle") == [(0,)]
    assert query(schema_dsn, "SELECT count(*) FROM crypto_ticks") == [(1,)]
    assert query(schema_dsn, "SELECT count(*) FROM pg_indexes WHERE indexname = 'one_day_candle_bucket_idx'") == [(1,)]


def test_upsert_assets_never_blanks_a_name(schema_dsn: str, tables: TablesConfig) -> None:
    conn = connect(schema_dsn)
    try:
        assert upsert_assets(conn, tables, {"BTC/USD": "Bitcoin", "ETH/USD": "", "AAPL": None}) == 3
        assert upsert_assets(conn, tables, {"BTC/USD": "", "ETH/USD": " Ethereum ", "AAPL": None}) == 1
        assert upsert_assets(conn, tables, {"BTC/USD": "Bitcoin", " ": "x"}) == 0
        assert upsert_assets(conn, tables, {}) == 0
    finally:
        conn.close()
    assert query(schema_dsn, "SELECT symbol, name FROM crypto_assets ORDER BY symbol") == [
        ("AAPL", None), ("BTC/USD", "Bitcoin"), ("ETH/USD", "Ethereum")]


# ------------------------------------------------------------ TimescaleDB (skipped without the extension)

@pytest.mark.timescaledb
def test_timescaledb_hypertable_and_columnstore(schema_dsn: str) -> None:
    assert query(schema_dsn, "SELECT flavour FROM shardctl_schema") == [("timescaledb",)]
    assert query(schema_dsn, "SELECT hypertable_name FROM timescaledb_information.hypertables") == [("crypto_ticks",)]
    settings = query(schema_dsn, "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc "
                               "FROM timescaledb_information.compression_settings "
                               "WHERE hypertable_name = 'crypto_ticks' ORDER BY attname")
    assert ("symbol", 1, None, None) in settings and ("time", None, 1, False) in settings
    assert [c[0] for c in _columns(schema_dsn, "crypto_ticks")] == [
        "time", "symbol", "price", "day_volume", "bid", "ask"]


@pytest.mark.timescaledb
def test_timescaledb_candle_aggregates_and_policies(schema_dsn: str) -> None:
    assert sorted(query(schema_dsn, "SELECT view_name, materialized_only FROM "
                                     "timescaledb_information.continuous_aggregates")) == [
        ("one_day_candle", True), ("one_hour_candle", True), ("one_minute_candle", True)]
    jobs = query(schema_dsn, "SELECT schedule_interval, config->>'start_offset', config->>'end_offset' "
                              "FROM timescaledb_information.jobs "
                              "WHERE proc_name = 'policy_refresh_continuous_aggregate' ORDER BY schedule_interval")
    assert jobs == [(timedelta(minutes=1), "00:10:00", "00:01:00"),
                                     (timedelta(hours=1), "03:00:00", "01:00:00"),
                                     (timedelta(days=1), "3 days", "1 day")]
    for table in ("one_minute_candle", "one_hour_candle", "one_day_candle"):
        assert [c[0] for c in _columns(schema_dsn, table)] == [
            "bucket", "symbol", "open", "high", "low", "close", "day_volume"]
    assert query(schema_dsn, SEED_QUERY) == []


@pytest.mark.timescaledb
def test_timescaledb_realtime_candles_setting(schema_dsn: str) -> None:
    tables = TablesConfig(realtime_candles=True)
    conn = connect(schema_dsn)
    try:
        apply_schema(conn, tables)
    finally:
        conn.close()
    assert {r[0] for r in query(schema_dsn, "SELECT materialized_only FROM "
                                            "timescaledb_information.continuous_aggregates")} == {False}


@pytest.mark.timescaledb
def test_timescaledb_candles_equal_the_postgresql_ones(schema_dsn: str, tables: TablesConfig) -> None:
    from test_candles import EXPECTED, TICKS, insert_ticks

    untied = [t for t in TICKS if t[2] not in (102.0, 101.0)]  # first()/last() ties are scan-order dependent
    insert_ticks(schema_dsn, untied)
    conn = connect(schema_dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in ("one_minute_candle", "one_hour_candle", "one_day_candle"):
                cur.execute("CALL refresh_continuous_aggregate(%s, NULL, NULL)", (table,))
    finally:
        conn.close()
    expected = {k: list(v) for k, v in EXPECTED.items()}
    expected["1m"][0] = (expected["1m"][0][0], "BTC/USD", 100.0, 103.0, 100.0, 103.0, Decimal(2))
    for interval, table in (("1m", "one_minute_candle"), ("1h", "one_hour_candle"), ("1d", "one_day_candle")):
        rows = query(schema_dsn, f"SELECT * FROM {table} ORDER BY symbol, bucket")
        assert rows == sorted(expected[interval], key=lambda r: (r[1], r[0])), interval


@pytest.mark.timescaledb
def test_timescaledb_apply_twice_is_a_noop(schema_dsn: str, tables: TablesConfig) -> None:
    before = _objects(schema_dsn)
    conn = connect(schema_dsn)
    try:
        assert apply_schema(conn, tables) == "timescaledb"
    finally:
        conn.close()
    assert _objects(schema_dsn) == before


def _policies(dsn: str) -> list[tuple]:
    return query(dsn, """SELECT hypertable_name, proc_name, coalesce(config->>'compress_after', config->>'drop_after')
                          FROM timescaledb_information.jobs
                          WHERE proc_name IN ('policy_compression', 'policy_retention') ORDER BY 1, 2""")


@pytest.mark.timescaledb
def test_timescaledb_settings_are_applied_and_changed_idempotently(schema_dsn: str, tables: TablesConfig) -> None:
    from shardctl.config.model import TimescaleConfig

    day = 86400.0
    assert _policies(schema_dsn) == [("crypto_ticks", "policy_compression", "7 days")]  # the tutorial's
    custom = TimescaleConfig(chunk_interval=day, columnstore_after=2 * day, drop_after=90 * day,
                             candle_drop_after={"1m": 7 * day, "1d": 400 * day})
    conn = connect(schema_dsn)
    try:
        for settings in (custom, custom):  # the second run changes nothing
            apply_schema(conn, tables, settings)
            assert _policies(schema_dsn) == [("crypto_ticks", "policy_compression", "2 days"),
                                             ("crypto_ticks", "policy_retention", "90 days"),
                                             ("one_day_candle", "policy_retention", "400 days"),
                                             ("one_minute_candle", "policy_retention", "7 days")]
        jobs = query(schema_dsn, "SELECT job_id FROM timescaledb_information.jobs ORDER BY 1")
        apply_schema(conn, tables, custom)
        assert query(schema_dsn, "SELECT job_id FROM timescaledb_information.jobs ORDER BY 1") == jobs
        assert query(schema_dsn, "SELECT time_interval FROM timescaledb_information.dimensions "
                                  "WHERE hypertable_name = 'crypto_ticks'") == [(timedelta(days=1),)]
        apply_schema(conn, tables, TimescaleConfig())  # back to the defaults: retentions removed
        assert _policies(schema_dsn) == [("crypto_ticks", "policy_compression", "7 days")]
        apply_schema(conn, tables)  # no settings: left as they are
        assert _policies(schema_dsn) == [("crypto_ticks", "policy_compression", "7 days")]
    finally:
        conn.close()


def test_a_tick_without_a_symbol_is_refused_on_both_flavours(schema_dsn: str) -> None:
    conn = connect(schema_dsn)
    try:
        with pytest.raises(psycopg2.errors.NotNullViolation), conn.cursor() as cur:
            cur.execute("INSERT INTO crypto_ticks (time, symbol, price) VALUES (now(), NULL, 1)")
    finally:
        conn.close()
