"""The fast COPY encoder against pgcopy's own formatters: the same bytes for every row, the same errors.

No database here (the round trip through a real server is in test_writer.py):
a ``TickCopyManager`` is compiled against fake column attributes, so its
pgcopy formatters and its fast encoder see exactly the table a real
connection would describe.
"""

from __future__ import annotations

import io
import random
import struct
import time
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from pgcopy import CopyManager
from pgcopy.copy import numeric as pgcopy_numeric

from shardctl.db.copyformat import fast_path_types_ok, numeric_field
from shardctl.db.writer import COLUMNS, TickCopyManager

Att = namedtuple("Att", "attname type_category type_name type_mod not_null typelem")
UTC = timezone.utc
NY = ZoneInfo("America/New_York")


class _Conn:
    encoding = "UTF8"


def _atts(*, not_null: tuple[str, ...] = ("time", "symbol"), **types: str) -> dict[str, Att]:
    """Column attributes as pgcopy's inspect.get_types returns them (shardctl's schema by default)."""
    base = {"time": "timestamptz", "symbol": "text", "price": "float8", "day_volume": "numeric",
            "bid": "float8", "ask": "float8", **types}
    return {name: Att(name, "N", kind, -1, name in not_null, 0) for name, kind in base.items()}


def manager(cls: type = TickCopyManager, atts: dict[str, Att] | None = None, encoding: str = "UTF8") -> Any:
    """A CopyManager of class ``cls`` compiled for ``atts`` without a database."""
    mgr = cls.__new__(cls)
    mgr._type_formatters = {**__import__("pgcopy.copy").copy.type_formatters, **cls.type_formatters}
    conn = _Conn()
    conn.encoding = encoding
    mgr.conn, mgr.schema, mgr.table, mgr.cols = conn, "public", "crypto_ticks", COLUMNS
    with mock.patch("pgcopy.inspect.get_types", return_value=atts or _atts()):
        mgr.compile()
    return mgr


def payload(mgr: Any, rows: list[tuple]) -> bytes:
    buf = io.BytesIO()
    mgr.writestream(rows, buf)
    return buf.getvalue()


def pgcopy_payload(mgr: Any, rows: list[tuple]) -> bytes:
    """What pgcopy's own writestream makes of ``rows`` with the same formatters."""
    buf = io.BytesIO()
    CopyManager.writestream(mgr, rows, buf)
    return buf.getvalue()


SYMBOLS = ["AAPL", "BTC/USD", "EUR/USD", "Z", "ÄÖÜ/€", "日経225", "X" * 40, "", "emoji🚀"]
TIMES = [
    datetime(2000, 1, 1, tzinfo=UTC),                      # PostgreSQL epoch: 0
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # just before: negative
    datetime(1970, 1, 1, tzinfo=UTC),                      # Unix epoch
    datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),           # past 32-bit time_t
    datetime(2026, 3, 8, 1, 59, 59, tzinfo=NY),            # DST gap in New York
    datetime(2026, 3, 8, 3, 0, 0, tzinfo=NY),
    datetime(2026, 11, 1, 1, 30, tzinfo=NY),               # ambiguous hour, fold=0 ...
    datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=NY),       # ... and fold=1
    datetime(2026, 11, 21, 6, 50, 3, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 11, 21, 6, 50, 3),                      # naive: pgcopy takes it as UTC
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2100, 12, 31, 22, 0, tzinfo=timezone(timedelta(hours=-2))),
]
VOLUMES: list[Any] = [None, 0, 1, -1, 9999, 10000, 10001, 99999999, 100000000, 1234567890123, 10 ** 30,
                      -10 ** 20, 2 ** 63, 0.0, -0.0, 7.0, 7.5, 0.1, 1e-7, 1.5e22, 123456.789, -3.25,
                      Decimal("123.45"), Decimal("0"), Decimal("0.00"), Decimal("-0.000100"), Decimal("1E+9"),
                      Decimal("1.0000E+5"), Decimal("12345678901234567890.123456789")]
PRICES = [0.0, -0.0, -1.5, 65000.5, 1e-300, 1.7976931348623157e308, 3.141592653589793, 1, -7]


def random_rows(rng: random.Random, n: int) -> list[tuple]:
    rows = []
    moment = rng.choice(TIMES)
    for _ in range(n):
        if rng.random() < 0.2:
            moment = rng.choice(TIMES) if rng.random() < 0.5 or moment.year == 9999 else moment + timedelta(seconds=1)
        volume = rng.choice(VOLUMES) if rng.random() < 0.5 else rng.randrange(-10 ** 12, 10 ** 12)
        if rng.random() < 0.1:
            volume = rng.uniform(-1e9, 1e9)
        price = rng.choice(PRICES) if rng.random() < 0.3 else rng.uniform(-1e6, 1e6)
        bid = None if rng.random() < 0.4 else rng.uniform(0, 1e5)
        ask = None if rng.random() < 0.4 else rng.uniform(0, 1e5)
        rows.append((moment, rng.choice(SYMBOLS), price, volume, bid, ask))
    return rows


# ------------------------------------------------------------------ bytes equal pgcopy's


def test_random_rows_encode_to_pgcopys_bytes() -> None:
    mgr = manager()
    assert mgr.encoder is not None
    for seed in range(20):
        rows = random_rows(random.Random(seed), 500)
        assert payload(mgr, rows) == pgcopy_payload(mgr, rows), seed
    assert mgr.encoder.slow_rows == 0  # all of those are fast-path rows


def test_every_edge_value_alone() -> None:
    mgr = manager()
    rows = [(t, s, p, v, b, a) for t in TIMES for s in SYMBOLS[:3] for p in PRICES[:3]
            for v in VOLUMES for b in (None, 1.5) for a in (None, -2.25)]
    rows += [(TIMES[0], s, 1.0, None, None, None) for s in SYMBOLS]
    assert payload(mgr, rows) == pgcopy_payload(mgr, rows)
    for row in rows[:: 37]:
        assert payload(mgr, [row]) == pgcopy_payload(mgr, [row])


def test_numeric_field_matches_pgcopy() -> None:
    rng = random.Random(7)
    values: list[Any] = list(VOLUMES[1:]) + [rng.randrange(-10 ** k, 10 ** k) for k in range(1, 40) for _ in range(20)]
    values += [rng.uniform(-10 ** k, 10 ** k) for k in range(-10, 25) for _ in range(10)]
    values += [Decimal(rng.randrange(-10 ** 12, 10 ** 12)).scaleb(rng.randrange(-20, 20)) for _ in range(500)]
    values += [10 ** k for k in range(40)] + [10 ** k * 10000 for k in range(12)]
    values += [1_2345_0000, 1_0000_0001, 1_0000_0000, 9999_9999_9999, 1_0000_0000_0000, 5_0000_0000_0000,
               -1_2345_0000, -9999_0000_0000, 1_0001_0000_0000_0001]
    for value in values:
        as_decimal = value if isinstance(value, Decimal) else Decimal(repr(value)) if isinstance(value, float) \
            else Decimal(value)
        fmt, data = pgcopy_numeric(as_decimal)
        assert numeric_field(value) == struct.pack(">" + fmt, *data), value
    assert numeric_field(True) is None and numeric_field("1") is None and numeric_field(Decimal("NaN")) is None


def test_other_connection_encoding() -> None:
    mgr = manager(encoding="LATIN1")
    rows = [(TIMES[0], "ÄÖÜ", 1.0, 5, None, None), (TIMES[0], "AAPL", 2.0, None, 1.0, 2.0)]
    assert payload(mgr, rows) == pgcopy_payload(mgr, rows)
    with pytest.raises(ValueError, match="symbol"):  # pgcopy's own error for a character LATIN1 lacks
        payload(mgr, [(TIMES[0], "€", 1.0, None, None, None)])


# ------------------------------------------------------------------ pgcopy decides the unusual rows


@pytest.mark.parametrize("row", [
    (TIMES[0], "A", None, 5, None, None),                   # NULL price (nullable column)
    (TIMES[0], b"RAW", 1.0, 5, None, None),                 # bytes symbol: pgcopy sends it as is
    (datetime(2026, 1, 1).date(), "A", 1.0, 5, None, None),  # a date: pgcopy takes midnight UTC
    (TIMES[0], "A", 1.0, Decimal("Infinity"), None, None),  # pgcopy's NaN encoding, kept as it was
    (TIMES[0], "A", 1.0, 10 ** 20000, None, None),          # past 4,300 digits: int() of the str refuses
    (TIMES[0], "A", 1.0, None, None),                       # too short: pgcopy writes 5 of 6 fields (!)
    (TIMES[0], "S" * 70000, 1.0, 5, None, None),            # text field past 64 KiB
    (TIMES[0], "A", 1.0, Decimal((0, (1,) * 4400, -10)), None, None),  # coefficient past int()'s 4,300 digits
])
def test_unusual_rows_go_through_pgcopy(row: tuple) -> None:
    mgr = manager()
    rows = [(TIMES[1], "A", 1.0, 1, 2.0, 3.0), row, (TIMES[1], "A", 1.0, 1, 2.0, 3.0)]
    assert payload(mgr, rows) == pgcopy_payload(mgr, rows)
    assert mgr.encoder.slow_rows == 1


def test_numeric_beyond_64_kib_goes_through_pgcopy() -> None:
    import sys

    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # lets int() build the coefficient: the digit cap must still hold
    try:
        mgr = manager()
        rows = [(TIMES[0], "A", 1.0, Decimal((0, (7,) * 33000, -5)), None, None), (TIMES[0], "B", 1.0, 1, None, None)]
        assert payload(mgr, rows) == pgcopy_payload(mgr, rows)
        assert mgr.encoder.slow_rows == 1
    finally:
        sys.set_int_max_str_digits(limit)


@pytest.mark.parametrize("row", [
    (TIMES[0], None, 1.0, None, None, None),      # NULL in a NOT NULL column
    (None, "A", 1.0, None, None, None),
    (TIMES[0], "A", "1.0", None, None, None),     # not a number
    (TIMES[0], "A", 1.0, None, "x", None),
    (TIMES[0], "A", 1.0, True, None, None),       # bool day_volume: writer's own TypeError
    (TIMES[0], "A", 1.0, "12", None, None),
    (TIMES[0], "A", 1.0, 10 ** 200000, None, None),  # NUMERIC weight past int16
])
def test_bad_rows_raise_pgcopys_errors(row: tuple) -> None:
    mgr = manager()
    with pytest.raises(Exception) as ours:
        payload(mgr, [(TIMES[1], "A", 1.0, 1, 2.0, 3.0), row])
    with pytest.raises(Exception) as theirs:
        pgcopy_payload(mgr, [row])
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)


def test_not_null_columns_are_checked_like_pgcopy() -> None:
    mgr = manager(atts=_atts(not_null=("time", "symbol", "day_volume", "bid", "ask")))
    good = [(TIMES[0], "A", 1.0, 5, 1.0, 2.0)]
    assert payload(mgr, good) == pgcopy_payload(mgr, good)
    for row in [(TIMES[0], "A", 1.0, None, 1.0, 2.0), (TIMES[0], "A", 1.0, 5, None, 2.0),
                (TIMES[0], "A", 1.0, 5, 1.0, None), (TIMES[0], "A", 1.0, 5, None, None)]:
        with pytest.raises(ValueError, match="null value in column"):
            payload(mgr, [row])


def test_other_column_types_keep_pgcopys_writestream() -> None:
    for atts in (_atts(day_volume="int8"), _atts(price="float4"),
                 {**_atts(), "symbol": Att("symbol", "S", "varchar", 14, True, 0)}):
        mgr = manager(atts=atts)
        assert mgr.encoder is None
        rows = [(TIMES[0], "A", 1.0, 5, None, None)]
        assert payload(mgr, rows) == pgcopy_payload(mgr, rows)
    assert fast_path_types_ok(list(_atts().values()))
    assert not fast_path_types_ok(list(_atts().values())[:5])


def test_encoder_is_reusable_across_batches_and_caches_stay_bounded() -> None:
    mgr = manager()
    rows = [(TIMES[0] + timedelta(seconds=i // 7), f"S{i}", float(i), i * 3 + 0.5, None, float(i))
            for i in range(20000)]
    for start in range(0, len(rows), 5000):
        batch = rows[start:start + 5000]
        assert payload(mgr, batch) == pgcopy_payload(mgr, batch)
    assert len(mgr.encoder._symbols) <= 4096 and len(mgr.encoder._floats) <= 4096


def test_generators_and_tick_namedtuples_are_accepted() -> None:
    from shardctl.rows import Tick

    mgr = manager()
    ticks = [Tick(TIMES[0], "A", 1.0, 2, None, None), Tick(TIMES[0], "B", 1.5, None, 1.0, 2.0)]
    assert payload(mgr, (t for t in ticks)) == pgcopy_payload(mgr, ticks)


# ------------------------------------------------------------------ micro-benchmark (prints, never asserts)


def test_encode_speed_report(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows/s encoded for a 10,000-row batch of the bench's own rows (feed replay → parser), pgcopy vs fast."""
    from pathlib import Path

    from shardctl.bench.data import BENCH_SYMBOLS, replay_rows, write_replay

    replay = Path(tmp_path) / "replay.jsonl"
    write_replay(replay, 10000, BENCH_SYMBOLS)
    rows = replay_rows(replay)
    mgr = manager()
    assert payload(mgr, rows) == pgcopy_payload(mgr, rows)
    results = {}
    for name, fn in (("pgcopy", pgcopy_payload), ("fast", payload)):
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            fn(mgr, rows)
            best = min(best, time.perf_counter() - started)
        results[name] = len(rows) / best
    with capsys.disabled():
        print(f"\nencode 10,000-row batch: pgcopy {results['pgcopy']:,.0f} rows/s, "
              f"fast {results['fast']:,.0f} rows/s ({results['fast'] / results['pgcopy']:.1f}x)")
