"""The pgcopy writer on a real server: rows land, the ledger makes batches idempotent, outages are retryable."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg2
import pytest

from shardctl.config import TablesConfig
from shardctl.errors import DatabaseError, DatabaseUnavailable
from shardctl.writer import Writer

UTC = timezone.utc
NOW = datetime.now(UTC).replace(microsecond=0)


def _query(dsn: str, query: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


def _ledger(dsn: str, shard: str) -> tuple:
    return _query(dsn, "SELECT last_seq, rows_total, journal_offset FROM shardctl_ledger WHERE shard = %s",
                  (shard,))[0]


def test_rows_land_with_the_ledger(schema_dsn: str, tables: TablesConfig) -> None:
    rows = [
        (NOW, "BTC/USD", 65000.5, Decimal("123.45"), 64999.0, 65001.0),
        (NOW, "BTC/USD", 65001.0, 124, None, None),          # int day_volume
        (NOW + timedelta(seconds=1), "ETH/USD", 3000.25, 7.5, None, None),  # float day_volume
        (NOW + timedelta(seconds=2), "ETH/USD", 3001.0, None, None, None),
    ]
    with Writer(schema_dsn, tables, "crypto") as writer:
        assert writer.last_committed() == 0
        assert writer.write(1, rows, journal_offset=4096) is True
        assert writer.last_committed() == 1
        assert writer.last_journal_offset() == 4096
        assert writer.write(2, rows[:1]) is True
    got = _query(schema_dsn, "SELECT time, symbol, price, day_volume, bid, ask FROM crypto_ticks "
                             "ORDER BY time, price")
    assert got == [
        (NOW, "BTC/USD", 65000.5, Decimal("123.45"), 64999.0, 65001.0),
        (NOW, "BTC/USD", 65000.5, Decimal("123.45"), 64999.0, 65001.0),
        (NOW, "BTC/USD", 65001.0, Decimal("124"), None, None),
        (NOW + timedelta(seconds=1), "ETH/USD", 3000.25, Decimal("7.5"), None, None),
        (NOW + timedelta(seconds=2), "ETH/USD", 3001.0, None, None, None),
    ]
    assert _ledger(schema_dsn, "crypto") == (2, 5, None)


def test_committed_seq_is_never_written_twice(schema_dsn: str, tables: TablesConfig) -> None:
    rows = [(NOW, "AAPL", 200.0, 1, None, None)] * 3
    with Writer(schema_dsn, tables, "stocks") as writer, Writer(schema_dsn, tables, "other") as other:
        assert writer.write(5, rows) is True
        assert writer.write(5, rows) is False
        assert writer.write(4, rows) is False
        assert other.write(1, rows) is True  # ledgers are per shard
    with Writer(schema_dsn, tables, "stocks") as again:  # a restarted worker
        assert again.last_committed() == 5
        assert again.write(5, rows) is False
        assert again.write(6, []) is True  # an empty batch still advances the ledger
    assert _query(schema_dsn, "SELECT count(*) FROM crypto_ticks") == [(6,)]
    assert _ledger(schema_dsn, "stocks") == (6, 3, None)


def test_days_without_a_partition_get_one(schema_dsn: str, tables: TablesConfig) -> None:
    past = datetime(1990, 5, 17, 8, 30, tzinfo=UTC)
    future = datetime(2101, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=2)))  # 2100-12-31 22:00 UTC
    with Writer(schema_dsn, tables, "x") as writer:
        assert writer.write(1, [(past, "A", 1.0, None, None, None), (future, "A", 2.0, None, None, None)])
        assert writer.write(2, [(past + timedelta(hours=1), "A", 3.0, None, None, None)])
    got = _query(schema_dsn, "SELECT tableoid::regclass::text, price FROM crypto_ticks ORDER BY price")
    assert got == [("crypto_ticks_p19900517", 1.0), ("crypto_ticks_p21001231", 2.0),
                   ("crypto_ticks_p19900517", 3.0)]
    assert _query(schema_dsn, "SELECT count(*) FROM crypto_ticks_default") == [(0,)]


def test_bad_row_is_a_database_error_and_the_writer_recovers(schema_dsn: str, tables: TablesConfig) -> None:
    with Writer(schema_dsn, tables, "x") as writer:
        with pytest.raises(DatabaseError) as err:
            writer.write(1, [(NOW, None, 1.0, None, None, None)])
        assert not isinstance(err.value, DatabaseUnavailable)
        assert "\n" not in str(err.value) and "batch 1" in str(err.value)
        assert writer.write(1, [(NOW, "OK", 1.0, None, None, None)]) is True
    assert _query(schema_dsn, "SELECT symbol FROM crypto_ticks") == [("OK",)]
    assert _ledger(schema_dsn, "x") == (1, 1, None)


def test_lost_connection_is_retryable(schema_dsn: str, tables: TablesConfig) -> None:
    rows = [(NOW, "A", 1.0, None, None, None)]
    with Writer(schema_dsn, tables, "killed") as writer:
        assert writer.write(1, rows)
        _query(schema_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = 'shardctl:killed'")
        with pytest.raises(DatabaseUnavailable) as err:
            writer.write(2, rows)
        assert "\n" not in str(err.value)
        assert writer.write(2, rows) is True  # reconnected
        assert writer.write(2, rows) is False
    assert _ledger(schema_dsn, "killed") == (2, 2, None)


def test_server_outage_then_same_batch_again(pg_server, schema_dsn: str, tables: TablesConfig) -> None:
    if not pg_server.embedded:
        pytest.skip("stops the server: only with the embedded test server")
    rows = [(NOW, "A", 1.0, None, None, None)]
    writer = Writer(schema_dsn, tables, "outage")
    try:
        assert writer.write(1, rows)
        pg_server.stop()
        try:
            with pytest.raises(DatabaseUnavailable):
                writer.write(2, rows)
            with pytest.raises(DatabaseUnavailable):  # still down: reconnecting fails the same way
                writer.write(2, rows)
        finally:
            pg_server.start()
        assert writer.write(2, rows) is True
    finally:
        writer.close()
    assert _ledger(schema_dsn, "outage") == (2, 2, None)


def test_missing_schema_is_a_clear_error(fresh_dsn: str, tables: TablesConfig) -> None:
    with pytest.raises(DatabaseError, match="db init"):
        Writer(fresh_dsn, tables, "x").last_committed()


def test_concurrent_shards_creating_the_same_days(schema_dsn: str, tables: TablesConfig) -> None:
    """Several writers that all meet new days at once: no deadlock, no lost or duplicated row."""
    import threading

    days = [datetime(2050, 1, d, 12, tzinfo=UTC) for d in range(1, 6)]
    errors: list[BaseException] = []

    def run(shard: str) -> None:
        try:
            with Writer(schema_dsn, tables, shard) as writer:
                for seq, day in enumerate(days, start=1):
                    rows = [(day + timedelta(seconds=i), shard, float(i), i, None, None) for i in range(50)]
                    assert writer.write(seq, rows)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"s{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert _query(schema_dsn, "SELECT count(*), count(DISTINCT tableoid) FROM crypto_ticks") == [(4 * 5 * 50, 5)]
    assert _query(schema_dsn, "SELECT count(*) FROM crypto_ticks_default") == [(0,)]
