"""The pgcopy writer on a real server: rows land, the ledger makes batches idempotent, outages are retryable."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Context, Decimal

import psycopg2
import pytest
from support import chunk_placement, execute, query

from shardctl.config.model import TablesConfig
from shardctl.db.writer import Writer
from shardctl.errors import DatabaseError, DatabaseUnavailable
from shardctl.rows import Tick

UTC = timezone.utc
NOW = datetime.now(UTC).replace(microsecond=0)


def _ledger(dsn: str, shard: str) -> tuple:
    return query(dsn, "SELECT last_seq, rows_total, journal_offset FROM shardctl_ledger WHERE shard = %s",
                  (shard,))[0]


def test_rows_land_with_the_ledger(schema_dsn: str, tables: TablesConfig) -> None:
    rows = [
        Tick(NOW, "BTC/USD", 65000.5, Decimal("123.45"), 64999.0, 65001.0),
        Tick(NOW, "BTC/USD", 65001.0, 124, None, None),          # int day_volume
        Tick(NOW + timedelta(seconds=1), "ETH/USD", 3000.25, 7.5, None, None),  # float day_volume
        Tick(NOW + timedelta(seconds=2), "ETH/USD", 3001.0, None, None, None),
    ]
    with Writer(schema_dsn, tables, "crypto") as writer:
        assert writer.ledger_position().offset == 0
        assert writer.write(1, rows, journal_offset=4096) is True
        assert writer.ledger_position().offset == 4096  # the journal offset, above the batch number
        assert writer.write(2, rows[:1]) is True
    got = query(schema_dsn, "SELECT time, symbol, price, day_volume, bid, ask FROM crypto_ticks "
                             "ORDER BY time, price")
    assert got == [
        (NOW, "BTC/USD", 65000.5, Decimal("123.45"), 64999.0, 65001.0),
        (NOW, "BTC/USD", 65000.5, Decimal("123.45"), 64999.0, 65001.0),
        (NOW, "BTC/USD", 65001.0, Decimal("124"), None, None),
        (NOW + timedelta(seconds=1), "ETH/USD", 3000.25, Decimal("7.5"), None, None),
        (NOW + timedelta(seconds=2), "ETH/USD", 3001.0, None, None, None),
    ]
    assert _ledger(schema_dsn, "crypto") == (2, 5, None)


def test_a_ledger_behind_what_the_writer_committed_is_refused_as_a_rollback(schema_dsn: str,
                                                                           tables: TablesConfig) -> None:
    """The database went back in time under the writer (here by hand): the next batch writes nothing, and says
    where the ledger is, what was committed, and when the older ledger's last frame was received."""
    from shardctl.errors import LedgerRolledBack

    rows = [Tick(NOW, "AAPL", 200.0, 1, None, None)]
    received = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    with Writer(schema_dsn, tables, "stocks") as writer:
        assert writer.write(5, rows, journal_offset=5, received_at=received) is True
        assert writer.write(10, rows, journal_offset=10) is True
        execute(schema_dsn, "UPDATE shardctl_ledger SET last_seq = 5, journal_offset = 5 WHERE shard = 'stocks'")
        with pytest.raises(LedgerRolledBack) as info:
            writer.write(11, rows, journal_offset=11)
        assert (info.value.ledger_offset, info.value.known_offset) == (5, 10)
        assert info.value.ledger_received_at == received
        writer.known_offset = 5  # the worker re-reads its journal from the older ledger
        assert writer.write(6, rows, journal_offset=6) is True
    assert _ledger(schema_dsn, "stocks")[0] == 6


def test_committed_seq_is_never_written_twice(schema_dsn: str, tables: TablesConfig) -> None:
    rows = [Tick(NOW, "AAPL", 200.0, 1, None, None)] * 3
    with Writer(schema_dsn, tables, "stocks") as writer, Writer(schema_dsn, tables, "other") as other:
        assert writer.write(5, rows) is True
        assert writer.write(5, rows) is False
        assert writer.write(4, rows) is False
        assert other.write(1, rows) is True  # ledgers are per shard
    with Writer(schema_dsn, tables, "stocks") as again:  # a restarted worker
        assert again.ledger_position().offset == 5
        assert again.write(5, rows) is False
        assert again.write(6, []) is True  # an empty batch still advances the ledger
    assert query(schema_dsn, "SELECT count(*) FROM crypto_ticks") == [(6,)]
    assert _ledger(schema_dsn, "stocks") == (6, 3, None)


def test_days_without_a_partition_get_one(schema_dsn: str, tables: TablesConfig, flavour: str) -> None:
    past = datetime(1990, 5, 17, 8, 30, tzinfo=UTC)
    future = datetime(2101, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=2)))  # 2100-12-31 22:00 UTC
    with Writer(schema_dsn, tables, "x") as writer:
        assert writer.write(1, [Tick(past, "A", 1.0, None, None, None), Tick(future, "A", 2.0, None, None, None)])
        assert writer.write(2, [Tick(past + timedelta(hours=1), "A", 3.0, None, None, None)])
    if flavour == "timescaledb":  # chunks instead: each tick in the chunk of its time, 1990 and 2100 apart
        placed = chunk_placement(schema_dsn)
        assert [inside for _, inside in placed] == [True] * 3 and placed[0][0] == placed[1][0] != placed[2][0]
        return
    got = query(schema_dsn, "SELECT tableoid::regclass::text, price FROM crypto_ticks ORDER BY price")
    assert got == [("crypto_ticks_p19900517", 1.0), ("crypto_ticks_p21001231", 2.0),
                   ("crypto_ticks_p19900517", 3.0)]
    assert query(schema_dsn, "SELECT count(*) FROM crypto_ticks_default") == [(0,)]


def test_bad_row_is_a_database_error_and_the_writer_recovers(schema_dsn: str, tables: TablesConfig) -> None:
    with Writer(schema_dsn, tables, "x") as writer:
        with pytest.raises(DatabaseError) as err:
            writer.write(1, [Tick(NOW, None, 1.0, None, None, None)])
        assert not isinstance(err.value, DatabaseUnavailable)
        assert "\n" not in str(err.value) and "batch 1" in str(err.value)
        assert writer.write(1, [Tick(NOW, "OK", 1.0, None, None, None)]) is True
    assert query(schema_dsn, "SELECT symbol FROM crypto_ticks") == [("OK",)]
    assert _ledger(schema_dsn, "x") == (1, 1, None)


def test_lost_connection_is_retryable(schema_dsn: str, tables: TablesConfig) -> None:
    rows = [Tick(NOW, "A", 1.0, None, None, None)]
    with Writer(schema_dsn, tables, "killed") as writer:
        assert writer.write(1, rows)
        query(schema_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
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
    rows = [Tick(NOW, "A", 1.0, None, None, None)]
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
        Writer(fresh_dsn, tables, "x").ledger_position()


def test_concurrent_shards_creating_the_same_days(schema_dsn: str, tables: TablesConfig, flavour: str) -> None:
    """Several writers that all meet new days at once: no deadlock, no lost or duplicated row."""
    import threading

    days = [datetime(2050, 1, d, 12, tzinfo=UTC) for d in range(1, 6)]
    errors: list[BaseException] = []

    def run(shard: str) -> None:
        try:
            with Writer(schema_dsn, tables, shard) as writer:
                for seq, day in enumerate(days, start=1):
                    rows = [Tick(day + timedelta(seconds=i), shard, float(i), i, None, None) for i in range(50)]
                    assert writer.write(seq, rows)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"s{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    if flavour == "timescaledb":  # the writers created the chunks between them: one copy of each row, placed right
        assert query(schema_dsn, "SELECT count(*) FROM crypto_ticks") == [(4 * 5 * 50,)]
        assert {inside for _, inside in chunk_placement(schema_dsn)} == {True}
        return
    assert query(schema_dsn, "SELECT count(*), count(DISTINCT tableoid) FROM crypto_ticks") == [(4 * 5 * 50, 5)]
    assert query(schema_dsn, "SELECT count(*) FROM crypto_ticks_default") == [(0,)]


# ------------------------------------------------------------------ the fast COPY encoder, through the server

def _expected_volume(value: object) -> Decimal | None:
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(repr(value)) if isinstance(value, float) \
        else Decimal(value)  # type: ignore[arg-type]


def _roundtrip_rows() -> list[tuple]:
    import random
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")
    times = [datetime(2000, 1, 1, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
             datetime(1970, 1, 1, tzinfo=UTC), datetime(2038, 1, 19, 3, 14, 8, 1, tzinfo=UTC),
             datetime(2026, 3, 8, 1, 59, 59, tzinfo=ny), datetime(2026, 3, 8, 3, 0, 0, tzinfo=ny),
             datetime(2026, 11, 1, 1, 30, tzinfo=ny), datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=ny),
             datetime(2026, 11, 21, 6, 50, 3, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
             datetime(2026, 11, 21, 6, 50, 3)]  # naive: UTC
    volumes = [None, 0, 1, -1, 9999, 10000, 10 ** 8, 1234567890123, 10 ** 30, -(10 ** 20), 0.0, -0.0, 7.0, 7.5,
               1e-7, 1.5e22, 123456.789, Decimal("123.45"), Decimal("0.00"), Decimal("-0.000100"),
               Decimal("1.0000E+5"), Decimal("12345678901234567890.123456789")]
    symbols = ["AAPL", "BTC/USD", "ÄÖÜ/€", "日経225", "emoji🚀", "X" * 40]
    rng = random.Random(11)
    rows = []
    for i in range(600):
        rows.append(Tick(times[i % len(times)], symbols[i % len(symbols)],
                     [0.0, -1.5, 65000.5, 1e-300, -7e300][i % 5] if i % 3 == 0 else rng.uniform(-1e6, 1e6),
                     volumes[i % len(volumes)] if i % 2 else rng.randrange(-10 ** 15, 10 ** 15),
                     None if i % 4 == 0 else rng.uniform(0, 1e5), None if i % 5 == 0 else -rng.uniform(0, 1e5)))
    rows.append(Tick(NOW, "P", None, None, None, None))  # NULL price: pgcopy's formatter path
    return rows


def test_fast_encoder_round_trip(schema_dsn: str, tables: TablesConfig) -> None:
    """Rows encoded by the fast path come back from the server exactly: instants, text, floats, NUMERIC scale."""
    rows = _roundtrip_rows()
    with Writer(schema_dsn, tables, "rt") as writer:
        assert writer.write(1, rows)
        assert writer._copy is not None and writer._copy.encoder is not None
        assert writer._copy.encoder.slow_rows == 1
    got = query(schema_dsn, "SELECT time, symbol, price, day_volume, scale(day_volume), bid, ask FROM crypto_ticks")
    want = []
    for r in rows:
        volume = _expected_volume(r[3])
        scale = None if volume is None else max(0, -volume.as_tuple().exponent)  # 7.0 keeps scale 1
        if volume is not None:  # what psycopg2 reads back: no exponent notation, no negative zero
            volume = volume.copy_abs() if volume.is_zero() else volume
            volume = volume.quantize(Decimal(1).scaleb(-scale), context=Context(prec=200))  # type: ignore[operator]
        time = r[0].astimezone(UTC) if r[0].tzinfo else r[0].replace(tzinfo=UTC)
        want.append((time, r[1], r[2], volume, scale, r[4], r[5]))
    assert sorted(got, key=repr) == sorted(want, key=repr)


def test_table_column_order_is_respected(schema_dsn: str, tables: TablesConfig) -> None:
    """A table whose columns are in another physical order (and has more): COPY names ours, values land right."""
    odd = TablesConfig(ticks="odd_ticks")
    conn = psycopg2.connect(schema_dsn)
    with conn.cursor() as cur:
        cur.execute('CREATE TABLE odd_ticks (ask float8, note text DEFAULT \'n\', day_volume numeric, '
                    'symbol text NOT NULL, id serial, price float8, bid float8, "time" timestamptz NOT NULL)')
    conn.commit()
    conn.close()
    rows = [Tick(NOW, "A", 1.5, 42, 1.25, 1.75), Tick(NOW, "B", -2.0, None, None, 3.5),
            Tick(NOW, "C", 3.0, 7.5, 0.5, None)]
    with Writer(schema_dsn, odd, "odd") as writer:
        assert writer.write(1, rows)
        assert writer._copy is not None and writer._copy.encoder is not None
    assert query(schema_dsn, 'SELECT "time", symbol, price, day_volume, bid, ask, note FROM odd_ticks '
                              "ORDER BY id") == [
        (NOW, "A", 1.5, Decimal(42), 1.25, 1.75, "n"),
        (NOW, "B", -2.0, None, None, 3.5, "n"),
        (NOW, "C", 3.0, Decimal("7.5"), 0.5, None, "n"),
    ]
