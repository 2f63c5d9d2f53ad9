"""Parsing every price shape in the wire reference, plus malformed frames."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from shardctl.journal.journal import Journal
from shardctl.rows import Tick
from shardctl.twelvedata.frames import BINARY_FRAME_MARK
from shardctl.twelvedata.parse import MAX_PRICE_FRAME, FrameParser, Kind, Listing, Parsed, Refusal, StatusEvent


def parse(frame: bytes | str):
    return FrameParser().parse(frame)


def test_crypto_price_has_bid_ask_and_volume() -> None:
    frame = (b'{"event": "price", "symbol": "BTC/USD", "currency_base": "Bitcoin", "currency_quote": "US Dollar",'
             b' "exchange": "Coinbase Pro", "type": "Digital Currency", "timestamp": 1652438893,'
             b' "price": 30361.2, "bid": 30361.1, "ask": 30361.3, "day_volume": 49153}')
    parsed = parse(frame)
    assert parsed.kind is Kind.PRICE
    assert parsed.row == Tick(datetime(2022, 5, 13, 10, 48, 13, tzinfo=timezone.utc), "BTC/USD", 30361.2,
                              49153, 30361.1, 30361.3)


def test_stock_price_without_bid_ask() -> None:
    frame = ('{"event": "price", "symbol": "AAPL", "currency": "USD", "exchange": "NASDAQ", "mic_code": "XNGS",'
             ' "type": "Common Stock", "timestamp": 1592249566, "price": 342.0157, "day_volume": 27631112}')
    row = parse(frame).row
    assert row is not None
    assert (row.symbol, row.price, row.day_volume, row.bid, row.ask) == ("AAPL", 342.0157, 27631112, None, None)
    assert row.time == datetime.fromtimestamp(1592249566, timezone.utc)
    assert row.time.tzinfo is timezone.utc


def test_metal_price_without_volume() -> None:
    frame = ('{"event": "price", "symbol": "XAU/USD", "currency": "USD", "currency_base": "Gold Spot",'
             ' "currency_quote": "US Dollar", "type": "Physical Currency", "timestamp": 1647950462,'
             ' "price": 1925.18, "bid": 1925.05, "ask": 1925.32}')
    row = parse(frame).row
    assert row is not None
    assert (row.day_volume, row.bid, row.ask) == (None, 1925.05, 1925.32)


def test_integer_price_becomes_float() -> None:
    row = parse('{"event":"price","symbol":"X","timestamp":1700000000,"price":5}').row
    assert row is not None and row.price == 5.0 and isinstance(row.price, float)


def test_same_second_ticks_share_the_cached_datetime_correctly() -> None:
    parser = FrameParser()
    a = parser.parse('{"event":"price","symbol":"X","timestamp":1700000000,"price":1}').row
    b = parser.parse('{"event":"price","symbol":"X","timestamp":1700000001,"price":2}').row
    c = parser.parse('{"event":"price","symbol":"X","timestamp":1700000000,"price":3}').row
    assert a and b and c
    assert (b.time - a.time).total_seconds() == 1 and c.time == a.time


@pytest.mark.parametrize("frame", [
    b'{"event": "subscribe-status", "status": "ok", "success": null, "fails": null}',
    b'{"event": "unsubscribe-status", "status": "ok"}',
    b'{"event": "reset-status", "status": "ok"}',
    b'{"event": "subscribe-status", "status": "error", "messages": ["Cant parse message"]}',
])
def test_status_events(frame: bytes) -> None:
    parsed = parse(frame)
    event = orjson.loads(frame)
    assert parsed.kind is Kind.STATUS and parsed.status is not None
    assert (parsed.status.name, parsed.status.status, parsed.status.messages) == (
        event["event"], event["status"], event.get("messages"))


def test_a_subscribe_status_is_decoded_once_into_listings_and_refusals() -> None:
    frame = orjson.dumps({"event": "subscribe-status", "status": "ok", "success": [
        {"symbol": "AAPL", "exchange": "NASDAQ", "mic_code": "XNGS", "type": "Common Stock"},
        {"symbol": "BTC/USD", "exchange": "Coinbase Pro", "type": "Digital Currency"}, 7, {"no": "symbol"}],
        "fails": [{"symbol": "NOPE", "message": "not found"}, "BARE", {"message": "no symbol"}]})
    status = parse(frame).status
    assert status == StatusEvent("subscribe-status", "ok", (
        Listing("AAPL", "NASDAQ", "XNGS", "Common Stock"), Listing("BTC/USD", "Coinbase Pro", "", "Digital Currency")),
        (Refusal("NOPE", "not found"), Refusal("BARE")))


def test_heartbeat_and_unknown_events() -> None:
    assert parse(b'{"event": "heartbeat", "status": "ok"}').kind is Kind.HEARTBEAT
    assert parse(b'{"event": "news", "headline": "x"}').kind is Kind.OTHER


def test_read_hands_a_price_event_back_as_its_tick_and_names_each_new_symbol_once() -> None:
    parser = FrameParser()
    tick = parser.read(b'{"event":"price","symbol":"BTC/USD","currency_base":"Bitcoin","timestamp":1700000000,'
                       b'"price":1}')
    assert isinstance(tick, Tick) and tick.price == 1.0
    parser.read(b'{"event":"price","symbol":"EUR/USD","timestamp":1700000000,"price":1.1}')
    assert parser.take_new_names() == {"BTC/USD": "Bitcoin", "EUR/USD": None}
    parser.read(b'{"event":"price","symbol":"BTC/USD","currency_base":"Bitcoin","timestamp":1700000001,"price":2}')
    assert parser.take_new_names() == {}
    assert parser.read(b'{"event": "heartbeat"}') == Parsed(Kind.HEARTBEAT)


@pytest.mark.parametrize("frame, reason", [
    (b"not json at all", "not JSON"),
    (b"\xff\xfe garbage", "not JSON"),
    (b'{"event": "price", "symbol": "AA\xffPL", "timestamp": 1700000000, "price": 1}', "not valid UTF-8"),
    (b"", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"price"', "not a JSON object"),
    (b'{"status": "ok"}', 'no "event" field'),
    (b'{"event": "price", "timestamp": 1700000000, "price": 1}', "without a symbol"),
    (b'{"event": "price", "symbol": "", "timestamp": 1700000000, "price": 1}', "without a symbol"),
    (b'{"event": "price", "symbol": "A\\u0000B", "timestamp": 1700000000, "price": 1}', "unprintable"),
    (b'{"event": "price", "symbol": "AAPL", "timestamp": 1700000000}', "without a numeric price"),
    (b'{"event": "price", "symbol": "AAPL", "timestamp": 1700000000, "price": "342.1"}', "without a numeric price"),
    (b'{"event": "price", "symbol": "AAPL", "timestamp": 1700000000, "price": true}', "without a numeric price"),
    (b'{"event": "price", "symbol": "AAPL", "timestamp": 1700000000, "price": null}', "without a numeric price"),
    (b'{"event": "price", "symbol": "AAPL", "price": 1.5}', "valid Unix timestamp"),
    (b'{"event": "price", "symbol": "AAPL", "price": 1.5, "timestamp": "1700000000"}', "valid Unix timestamp"),
    (b'{"event": "price", "symbol": "AAPL", "price": 1.5, "timestamp": -5}', "valid Unix timestamp"),
    (b'{"event": "price", "symbol": "AAPL", "price": 1.5, "timestamp": 99999999999999}', "valid Unix timestamp"),
])
def test_malformed_frames_are_bad_with_a_reason(frame: bytes, reason: str) -> None:
    parsed = parse(frame)
    assert parsed.kind is Kind.BAD
    assert parsed.row is None
    assert reason in (parsed.reason or "")


def test_wrongly_typed_optional_fields_become_null() -> None:
    row = parse(b'{"event":"price","symbol":"X","timestamp":1700000000,"price":1.5,'
                b'"bid":"1.4","ask":null,"day_volume":"12"}').row
    assert row is not None and (row.bid, row.ask, row.day_volume) == (None, None, None)


BINARY_REASON = "binary websocket frame (opcode 2), Twelve Data sends text"
VALID_PRICE = b'{"event": "price", "symbol": "AAPL", "timestamp": 1700000000, "price": 342.1}'


def test_a_binary_frame_is_bad_even_when_it_holds_a_valid_price() -> None:
    parsed = parse(BINARY_FRAME_MARK + VALID_PRICE)
    assert parsed.kind is Kind.BAD and parsed.row is None
    assert parsed.reason == BINARY_REASON


def test_a_binary_frame_replayed_from_the_journal_gets_the_same_verdict(tmp_path) -> None:
    with Journal(tmp_path / "journal") as journal:
        journal.append(BINARY_FRAME_MARK + VALID_PRICE, 1700000000.0)
        journal.append(VALID_PRICE, 1700000000.0)
        journal.flush()
        replayed = [parse(record.frame) for record in journal.replay()]
    assert [(p.kind, p.reason) for p in replayed] == [(Kind.BAD, BINARY_REASON), (Kind.PRICE, None)]


def test_a_padded_price_event_is_bad_and_a_large_status_is_not() -> None:
    parser = FrameParser()
    price = {"event": "price", "symbol": "AAPL", "price": 1.5, "timestamp": 1_700_000_000}
    padded = orjson.dumps({**price, "pad": "x" * MAX_PRICE_FRAME})
    parsed = parser.parse(padded)
    assert parsed.kind is Kind.BAD and parsed.reason is not None and "price event of" in parsed.reason
    assert parser.parse(orjson.dumps(price)).kind is Kind.PRICE
    many = [{"symbol": f"S{i}", "exchange": "NASDAQ"} for i in range(5000)]  # a 1,500-symbol shard's answer
    status = orjson.dumps({"event": "subscribe-status", "status": "ok", "success": many, "fails": []})
    assert len(status) > MAX_PRICE_FRAME and parser.parse(status).kind is Kind.STATUS


@pytest.mark.parametrize("name", [[], {}, ["price"], 1, None, True])
def test_an_event_field_that_is_not_a_string_is_bad_never_an_exception(name: object) -> None:
    parsed = FrameParser().parse(orjson.dumps({"event": name, "symbol": "AAPL", "price": 1.0}))
    assert parsed.kind is Kind.BAD and parsed.reason == 'no "event" field'
