"""The local feed's stream faults (slow, close_market) and its tape: REST bars that agree with the stream.

A real FeedServer on 127.0.0.1 with a simulated clock (one minute per real second), a websocket
client, and REST ``time_series`` over plain HTTP.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pytest
import requests
import websocket

from shardctl.feed.faults import parse_fault_spec
from shardctl.feed.server import FeedServer
from shardctl.simclock import SimulatedClock

SYMBOLS = ("BTC/USD", "ETH/USD", "AAPL", "EUR/USD")


def read_events(ws: websocket.WebSocket, until: float) -> list[dict]:
    events = []
    while time.monotonic() < until:
        ws.settimeout(max(0.05, until - time.monotonic()))
        try:
            message = json.loads(ws.recv())
        except websocket.WebSocketTimeoutException:
            break
        if message.get("event") == "price":
            events.append(message)
    return events


def bars(feed: FeedServer, symbol: str, first: int, last: int) -> dict[int, dict]:
    stamp = lambda m: datetime.fromtimestamp(m * 60, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
    answer = requests.get(f"{feed.rest_url}/time_series", params={
        "symbol": symbol, "interval": "1min", "timezone": "UTC", "start_date": stamp(first),
        "end_date": stamp(last + 1), "dp": 10, "apikey": "demo"}, timeout=10).json()
    if answer.get("status") == "error":
        assert "No data" in answer["message"], answer
        return {}
    return {int(datetime.strptime(v["datetime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
            // 60: v for v in answer["values"]}


def test_slow_and_close_market_shape_the_stream_and_rest_agrees_with_it() -> None:
    clock = SimulatedClock(time.time(), 1_795_000_020.0, 60.0)
    feed = FeedServer(rate=400, symbols=SYMBOLS, seed=7, clock=clock, record_bars=True, keep_sent=0,
                      faults=[parse_fault_spec("slow:symbol=ETH/USD,fraction=0.05")]).start()
    try:
        ws = websocket.create_connection(feed.url + "?apikey=demo", timeout=10)
        ws.send(json.dumps({"action": "subscribe", "params": {"symbols": ",".join(SYMBOLS)}}))
        before = read_events(ws, time.monotonic() + 2.0)
        closed_at = clock()
        feed.inject("close_market", exchange="XNGS")
        after = read_events(ws, time.monotonic() + 1.5)
        ws.close()
        per = Counter(e["symbol"] for e in before)
        # ETH/USD gets one slot in 20; its siblings all of theirs.
        assert per["BTC/USD"] > 150 and per["ETH/USD"] == pytest.approx(per["BTC/USD"] * 0.05, abs=3), per
        # AAPL trades on XNGS: after the close (and the events in flight) nothing more.
        late = [e for e in after if e["symbol"] == "AAPL" and e["timestamp"] > closed_at + 1]
        assert not late and any(e["symbol"] == "BTC/USD" for e in after)
        events = before + after
        last = defaultdict(dict)
        for e in events:
            last[e["symbol"]][e["timestamp"] // 60] = e["price"]
        first_m, last_m = min(e["timestamp"] for e in events) // 60, max(e["timestamp"] for e in events) // 60
        for symbol in ("BTC/USD", "ETH/USD", "AAPL", "EUR/USD"):
            rest = bars(feed, symbol, first_m, last_m)
            for minute, price in last[symbol].items():
                if minute == last_m:  # still streaming when the test stopped reading: its close came later
                    continue
                assert float(rest[minute]["close"]) == pytest.approx(price, abs=1e-9), (symbol, minute)
        # After the close, AAPL has no bar (its market was closed); BTC/USD has one every minute.
        closed_minute = int(closed_at // 60) + 1
        later = int(clock() // 60)
        assert all(m not in bars(feed, "AAPL", closed_minute, later) for m in range(closed_minute, later + 1))
        assert set(bars(feed, "BTC/USD", first_m, later)) == set(range(first_m, later + 1))
        # /market_state says so too; clearing reopens.
        states = {s["code"]: s["is_market_open"] for s in requests.get(
            f"{feed.rest_url}/market_state", params={"apikey": "demo"}, timeout=10).json()}
        assert states["XNGS"] is False and states["XNYS"] is True
        feed.clear("close_market")
        states = {s["code"]: s["is_market_open"] for s in requests.get(
            f"{feed.rest_url}/market_state", params={"apikey": "demo"}, timeout=10).json()}
        assert states["XNGS"] is True
    finally:
        feed.stop()


@pytest.mark.parametrize("spec, fragment", [
    ("slow:symbol=ETH/USD", "needs fraction=F between 0 and 1"),
    ("slow:fraction=0.5", "needs symbol=S"),
    ("slow:symbol=X,fraction=1.5", "between 0 and 1"),
    ("close_market", "needs exchange=MIC"),
    ("close_market:exchange=XNGS,after=3", "takes no parameter after"),
])
def test_bad_stream_fault_specs_say_what_to_fix(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_fault_spec(spec)
