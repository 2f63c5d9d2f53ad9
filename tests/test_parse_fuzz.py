"""Property tests: whatever arrives, the parser answers with exactly one row or one reason, never an exception."""

from __future__ import annotations

import math
from datetime import datetime

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardctl.rows import Tick
from shardctl.twelvedata.parse import FrameParser, Kind

json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) \
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
#: Price-shaped events whose every field may have any JSON type, or be missing.
price_like = st.fixed_dictionaries(
    {"event": st.just("price")},
    optional={"symbol": json_values, "timestamp": json_values, "price": json_values, "bid": json_values,
              "ask": json_values, "day_volume": json_values, "currency_base": json_values},
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(frame: bytes) -> None:
    parser = FrameParser()
    parsed = parser.parse(frame)
    again = parser.parse(frame)  # the symbol is known now: the verdict depends on the frame alone
    assert (again.kind, again.row, again.reason) == (parsed.kind, parsed.row, parsed.reason)
    assert parsed.kind in Kind
    if parsed.kind is Kind.PRICE:
        row = parsed.row
        assert isinstance(row, Tick) and parsed.reason is None
        assert isinstance(row.time, datetime) and row.time.tzinfo is not None
        assert isinstance(row.symbol, str) and row.symbol and row.symbol.isprintable()
        assert isinstance(row.price, float) and math.isfinite(row.price)
        for optional in (row.day_volume, row.bid, row.ask):
            assert optional is None or (type(optional) in (int, float) and math.isfinite(optional))
    elif parsed.kind is Kind.BAD:
        assert parsed.row is None and parsed.reason
    else:
        assert parsed.row is None


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(frame: bytes) -> None:
    check(frame)


@FUZZ
@given(json_values)
def test_arbitrary_json(value: object) -> None:
    check(orjson.dumps(value))


@FUZZ
@given(price_like)
def test_price_events_with_any_field_types(event: dict) -> None:
    check(orjson.dumps(event))


@FUZZ
@given(price_like, st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=3))
def test_corrupted_price_frames(event: dict, at: int, junk: bytes) -> None:
    frame = orjson.dumps(event)
    at = min(at, len(frame))
    check(frame[:at] + junk + frame[at:])


@FUZZ
@given(st.sampled_from(["1e400", "-1e400", "18446744073709551616", "-9223372036854775809", "NaN", "0.0",
                        "1700000000.5", "true", "null", "\"1\"", "[]", "{}"]),
       st.sampled_from(["price", "timestamp", "bid", "ask", "day_volume"]))
def test_hostile_numbers_in_json_text(number: str, field: str) -> None:
    fields = {"price": "1.5", "timestamp": "1700000000", "bid": "null", "ask": "null", "day_volume": "null"}
    fields[field] = number
    body = ", ".join(f'"{name}": {value}' for name, value in fields.items())
    check(('{"event": "price", "symbol": "AAPL", ' + body + "}").encode())
