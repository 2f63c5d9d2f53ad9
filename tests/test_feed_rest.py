"""The local feed's REST endpoint (``shardctl.feed.rest``) over real sockets, with requests and twelvedata."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
import requests
import websocket

from shardctl.feed.catalog import Catalog
from shardctl.feed.rest import format_value, synthetic_bar
from shardctl.feed.server import FeedServer

UTC = timezone.utc
START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CATALOG = Catalog()


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    server = FeedServer(rate=5, api_key="s3cret").start()
    yield server
    server.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment for 127.0.0.1
    yield session
    session.close()


def get(http: requests.Session, feed: FeedServer, path: str = "/time_series", **params: Any) -> dict[str, Any]:
    params.setdefault("apikey", "s3cret")
    resp = http.get(feed.rest_url + path, params=params, timeout=5)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    return resp.json()


def window(minutes: int, **extra: Any) -> dict[str, Any]:
    end = START + timedelta(minutes=minutes)
    return {"interval": "1min", "timezone": "UTC", "start_date": START.strftime("%Y-%m-%d %H:%M:%S"),
            "end_date": end.strftime("%Y-%m-%d %H:%M:%S"), **extra}


def expected(symbol: str, minute: datetime, dp: int = 5) -> dict[str, str]:
    inst = CATALOG.lookup(symbol)
    assert inst is not None
    bar = synthetic_bar(inst, int(minute.timestamp() // 60))
    row = {"datetime": minute.strftime("%Y-%m-%d %H:%M:%S"), "open": format_value(bar.open, dp),
           "high": format_value(bar.high, dp), "low": format_value(bar.low, dp), "close": format_value(bar.close, dp)}
    if bar.volume is not None:
        row["volume"] = str(bar.volume)
    return row


def test_time_series_shape_order_and_values(feed: FeedServer, http: requests.Session) -> None:
    body = get(http, feed, symbol="BTC/USD", **window(5))
    assert body["status"] == "ok"
    assert body["meta"] == {"symbol": "BTC/USD", "interval": "1min", "currency_base": "Bitcoin",
                            "currency_quote": "US Dollar", "exchange": "Coinbase Pro", "type": "Digital Currency"}
    minutes = [START + timedelta(minutes=m) for m in range(5)]  # end_date is exclusive
    assert body["values"] == [expected("BTC/USD", m) for m in reversed(minutes)]  # newest first
    for row in body["values"]:
        assert all(isinstance(v, str) for v in row.values())
        assert float(row["low"]) <= min(float(row["open"]), float(row["close"]))
        assert float(row["high"]) >= max(float(row["open"]), float(row["close"]))
    asc = get(http, feed, symbol="BTC/USD", **window(5, order="asc"))
    assert asc["values"] == list(reversed(body["values"]))
    assert get(http, feed, symbol="BTC/USD", **window(5)) == body  # deterministic

    fx = get(http, feed, symbol="EUR/USD", **window(2))
    assert "volume" not in fx["values"][0] and fx["meta"]["type"] == "Physical Currency"
    stock = get(http, feed, symbol="AAPL", interval="1min", start_date="2024-05-01 08:00:00",
                end_date="2024-05-01 08:02:00")  # timezone defaults to Exchange: New York
    assert stock["meta"]["exchange_timezone"] == "America/New_York"
    assert stock["values"][-1] == expected("AAPL", START) | {"datetime": "2024-05-01 08:00:00"}


def test_outputsize_and_dp(feed: FeedServer, http: requests.Session) -> None:
    cut = get(http, feed, symbol="ETH/USD", **window(60, outputsize=3))
    newest = START + timedelta(minutes=59)
    assert [r["datetime"] for r in cut["values"]] == [
        (newest - timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(3)]  # the old end is lost
    assert len(get(http, feed, symbol="ETH/USD", **window(60))["values"]) == 60  # dates: up to 5000
    latest = get(http, feed, symbol="ETH/USD", interval="1min", timezone="UTC")["values"]
    assert len(latest) == 30  # no dates: 30, ending with the current minute
    assert datetime.strptime(latest[0]["datetime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) >= (
        datetime.now(UTC) - timedelta(minutes=2))
    two = get(http, feed, symbol="ETH/USD", **window(1, dp=2))["values"][0]
    assert two == expected("ETH/USD", START, dp=2)
    assert len(two["open"].split(".")[1]) == 2
    eleven = get(http, feed, symbol="ETH/USD", **window(1, dp=11))["values"][0]
    assert len(eleven["close"].split(".")[1]) == 11


@pytest.mark.parametrize("params,code,message", [
    ({"symbol": "BTC/USD", "apikey": "wrong"}, 401, "apikey"),
    ({"symbol": "BTC/USD", "apikey": ""}, 401, "apikey"),
    ({"symbol": "ZZZZ/QQQ"}, 404, "not found"),
    ({"symbol": "BTC/USD", "interval": "5min"}, 400, "interval"),
    ({"symbol": "BTC/USD", "outputsize": "0"}, 400, "outputsize"),
    ({"symbol": "BTC/USD", "dp": "12"}, 400, "dp"),
    ({"symbol": "BTC/USD", "order": "sideways"}, 400, "order"),
    ({"symbol": "BTC/USD", "timezone": "Mars/Olympus"}, 400, "timezone"),
    ({"symbol": "BTC/USD", "start_date": "yesterday"}, 400, "start_date"),
    ({"symbol": "BTC/USD", "start_date": "2099-01-01 00:00:00"}, 400, "No data is available"),
    ({"symbol": "BTC/USD,ETH/USD"}, 400, "batch"),
    ({"symbol": ""}, 400, "symbol"),
])
def test_errors_look_like_twelve_data(feed: FeedServer, http: requests.Session, params: dict[str, Any],
                                      code: int, message: str) -> None:
    query = {"interval": "1min", "apikey": "s3cret", **params}
    body = http.get(feed.rest_url + "/time_series", params=query, timeout=5).json()
    assert body["status"] == "error" and body["code"] == code and message in body["message"]


def test_key_may_come_in_a_header(feed: FeedServer, http: requests.Session) -> None:
    for header in ({"Authorization": "apikey s3cret"}, {"X-TD-APIKEY": "s3cret"}):
        body = http.get(feed.rest_url + "/time_series", params={"symbol": "BTC/USD", "interval": "1min"},
                        headers=header, timeout=5).json()
        assert body["status"] == "ok"
    body = http.get(feed.rest_url + "/time_series", params={"symbol": "BTC/USD", "interval": "1min"},
                    headers={"Authorization": "apikey nope"}, timeout=5).json()
    assert body["code"] == 401


def test_rate_limit_fault_and_request_counts(feed: FeedServer, http: requests.Session) -> None:
    feed.inject("rate_limit", count=2)
    codes = [get(http, feed, symbol="BTC/USD", **window(1)).get("code", 200) for _ in range(3)]
    assert codes == [429, 429, 200]
    body = get(http, feed, "/api_usage")
    assert body["current_usage"] == 3 and body["plan_limit"] == 8
    feed.inject("rate_limit", count=5)
    feed.clear("rate_limit")
    assert get(http, feed, symbol="BTC/USD", **window(1))["status"] == "ok"
    assert feed.rest.counts() == {"/time_series": 4, "/api_usage": 1}
    assert feed.rest.rate_limited == 2
    with pytest.raises(ValueError):
        feed.inject("rate_limit", count=0)
    with pytest.raises(ValueError, match="allowed: count"):
        feed.inject("rate_limit", after=3)


def test_websocket_still_served_on_the_same_port(feed: FeedServer, http: requests.Session) -> None:
    assert get(http, feed, symbol="BTC/USD", **window(1))["status"] == "ok"
    ws = websocket.create_connection(feed.url + "?apikey=s3cret", timeout=5, http_no_proxy=["127.0.0.1"])
    try:
        ws.send(json.dumps({"action": "subscribe", "params": {"symbols": "BTC/USD"}}))
        assert json.loads(ws.recv())["event"] == "subscribe-status"
        assert json.loads(ws.recv())["event"] == "price"
    finally:
        ws.close()
    assert http.get(feed.rest_url + "/v1/other", timeout=5).status_code == 404


def test_tdclient_constructs_offline_and_shows_the_package_defaults(feed: FeedServer) -> None:
    from twelvedata import TDClient
    from twelvedata.utils import patch_endpoints_meta

    if hasattr(patch_endpoints_meta, "patched"):  # once per process: make this test see the request
        delattr(patch_endpoints_meta, "patched")
    started = time.monotonic()
    td = TDClient("s3cret", base_url=feed.rest_url)
    assert time.monotonic() - started < 5
    assert feed.rest.counts() == {"/technical_indicators": 1}
    dates = {"start_date": "2024-05-01 12:00:00", "end_date": "2024-05-01 13:00:00", "timezone": "UTC"}
    naive = td.time_series(symbol="BTC/USD", interval="1min", **dates).as_json()
    assert len(naive) == 30  # the package sends outputsize=30: the window's first half is silently lost
    assert naive[0]["datetime"] == "2024-05-01 12:59:00" and len(naive[0]["open"].split(".")[1]) == 5
    full = td.time_series(symbol="BTC/USD", interval="1min", outputsize=5000, dp=8, order="asc", **dates).as_json()
    assert len(full) == 60 and full[0] == expected("BTC/USD", START, dp=8)
