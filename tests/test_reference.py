"""Twelve Data's reference lists: the local feed's answers, names and unknown symbols, validate --online,
and the asset-name fill into a real database. Real feed on 127.0.0.1, real PostgreSQL, real CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from support import query

from shardctl.config.model import TablesConfig
from shardctl.db.connection import connect
from shardctl.db.schema import upsert_assets
from shardctl.errors import ReferenceUnavailable
from shardctl.feed.server import FeedServer
from shardctl.supervisor.assets import fill_asset_names
from shardctl.twelvedata.reference import check_symbols

SHARDCTL = [sys.executable, "-m", "shardctl"]


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    with FeedServer(rate=1, seed=3) as server:
        yield server


def _get(feed: FeedServer, path: str) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(feed.rest_url + path, timeout=10) as response:
        return json.loads(response.read())


def test_the_feed_answers_each_reference_list_in_twelve_datas_shape(feed: FeedServer) -> None:
    stocks = _get(feed, "/stocks?apikey=k")
    assert stocks["status"] == "ok" and stocks["count"] == len(stocks["data"])
    aapl = next(e for e in stocks["data"] if e["symbol"] == "AAPL")
    assert aapl == {"symbol": "AAPL", "name": "Apple Inc", "currency": "USD", "exchange": "NASDAQ",
                    "mic_code": "XNGS", "country": "United States", "type": "Common Stock"}
    assert not {"SPY", "SPX", "BTC/USD"} & {e["symbol"] for e in stocks["data"]}
    assert [e["name"] for e in _get(feed, "/etfs?apikey=k&symbol=spy")["data"]] == ["SPDR S&P 500 ETF Trust"]
    assert set(_get(feed, "/indices?apikey=k&symbol=SPX")["data"][0]) == {
        "symbol", "name", "country", "currency", "exchange", "mic_code"}
    btc = _get(feed, "/cryptocurrencies?apikey=k&symbol=BTC/USD")["data"]
    assert btc == [{"symbol": "BTC/USD", "available_exchanges": ["Coinbase Pro"], "currency_base": "Bitcoin",
                    "currency_quote": "US Dollar"}]
    pairs = {e["symbol"]: e for e in _get(feed, "/forex_pairs?apikey=k")["data"]}
    assert pairs["EUR/USD"]["currency_group"] == "Major" and "XAU/USD" in pairs and "BTC/USD" not in pairs
    assert _get(feed, "/stocks?apikey=k&exchange=XTSE")["data"][0]["symbol"] == "RY"
    assert _get(feed, "/stocks")["code"] == 401  # a key is required, as on Twelve Data
    assert _get(feed, "/api_usage?apikey=k")["current_usage"] == 7  # one credit per list request


def test_names_unknown_symbols_and_credits(feed: FeedServer) -> None:
    result = check_symbols(["AAPL", "RY:TSX", "SPY", "SPX", "BTC/USD", "EUR/USD", "APPL", "BTC/USDT"],
                           feed.rest_url, "key")
    assert result.names == {"AAPL": "Apple Inc", "RY": "Royal Bank of Canada", "SPY": "SPDR S&P 500 ETF Trust",
                            "SPX": "S&P 500", "BTC/USD": "Bitcoin US Dollar", "EUR/USD": "Euro US Dollar"}
    assert [(u.symbol, u.suggestions[0]) for u in result.unknown] == [("APPL", "AAPL"), ("BTC/USDT", "BTC/USD")]
    assert result.credits == 5 and _get(feed, "/api_usage?apikey=k")["current_usage"] == 5

    # Every symbol found in the first list of its shape: one credit per shape, no more.
    cheap = check_symbols(["AAPL", "MSFT", "BTC/USD"], feed.rest_url, "key")
    assert cheap.credits == 2 and cheap.lists == ("/cryptocurrencies", "/stocks") and not cheap.unknown


def test_no_key_or_no_network_is_one_line(feed: FeedServer) -> None:
    with pytest.raises(ReferenceUnavailable, match="no Twelve Data API key"):
        check_symbols(["AAPL"], feed.rest_url, None)
    port = feed.port
    feed.stop()
    with pytest.raises(ReferenceUnavailable, match=f"cannot reach Twelve Data at http://127.0.0.1:{port}"):
        check_symbols(["AAPL"], f"http://127.0.0.1:{port}", "key")


def _config(tmp_path: Path, url: str, symbols: dict[str, list[str]], dsn: str | None = None, *,
            rest_url: str | None = None) -> Path:
    lines = [f'state_dir = "{tmp_path / "state"}"', "[source]", f'url = "{url}"', 'api_key_env = "TEST_TD_KEY"']
    if rest_url:
        lines.append(f'rest_url = "{rest_url}"')
    if dsn:
        lines += ["[database]", f"dsn = {json.dumps(dsn)}"]
    for name, syms in symbols.items():
        lines += [f"[shards.{name}]", f"symbols = {json.dumps(syms)}"]
    path = tmp_path / "shardctl.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _validate(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "TEST_TD_KEY"}
    return subprocess.run([*SHARDCTL, "validate", "--online", str(path)], check=False, capture_output=True, text=True,
                          timeout=60, env={**clean, **env})


def test_validate_online_names_unknown_symbols_with_a_did_you_mean(tmp_path: Path, feed: FeedServer) -> None:
    path = _config(tmp_path, feed.url, {"stocks": ["AAPL", "APPL"], "crypto": ["BTC/USD", "ETH/USDD"]})
    proc = _validate(path)  # a local feed: its public key is used
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert errors[0] == f"error: {path}: shards.stocks.symbols: Twelve Data does not know 'APPL'; did you mean 'AAPL'?"
    assert errors[1].startswith(f"error: {path}: shards.crypto.symbols: Twelve Data does not know 'ETH/USDD'; "
                                "did you mean 'ETH/USD' or ")  # the closest first, then others of its shape
    assert "2 of 4 symbol(s) known" in proc.stderr and "5 API credit(s)" in proc.stderr

    good = _config(tmp_path, feed.url, {"stocks": ["AAPL", "SPY"], "crypto": ["BTC/USD"]})
    proc = _validate(good)
    assert proc.returncode == 0, proc.stderr
    assert "online: 3 of 3 symbol(s) known" in proc.stdout and ": OK:" in proc.stdout


def test_validate_online_without_key_or_network_says_so_in_one_line(tmp_path: Path, feed: FeedServer) -> None:
    remote = _config(tmp_path, "wss://ws.twelvedata.com/v1/quotes/price", {"main": ["AAPL"]},
                     rest_url=feed.rest_url)
    proc = _validate(remote)  # TEST_TD_KEY unset
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if "--online" in ln]
    assert len(lines) == 1 and "no Twelve Data API key" in lines[0], proc.stderr

    secret = "sk-live-0123456789"
    down = _config(tmp_path, "wss://ws.twelvedata.com/v1/quotes/price", {"main": ["AAPL"]},
                   rest_url="http://127.0.0.1:9")  # nothing listens on the discard port
    proc = _validate(down, TEST_TD_KEY=secret)
    assert proc.returncode == 2 and "cannot reach Twelve Data at http://127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr and secret not in proc.stderr + proc.stdout


def test_fill_names_the_assets_and_the_stream_no_longer_overwrites_them(tmp_path: Path, feed: FeedServer,
                                                                          schema_dsn: str) -> None:
    tables = TablesConfig()
    conn = connect(schema_dsn)
    try:
        # What a worker stores from the stream before the fill: currency_base, or nothing for a stock.
        upsert_assets(conn, tables, {"BTC/USD": "Bitcoin", "AAPL": None}, replace=False)
    finally:
        conn.close()
    path = _config(tmp_path, feed.url, {"stocks": ["AAPL", "RY:TSX", "SPX", "APPL"], "crypto": ["BTC/USD"]},
                   schema_dsn)
    assert fill_asset_names(path) == 0
    names = dict(query(schema_dsn, "SELECT symbol, name FROM crypto_assets"))
    assert names == {"AAPL": "Apple Inc", "RY": "Royal Bank of Canada", "SPX": "S&P 500",
                     "BTC/USD": "Bitcoin US Dollar"}
    # The credits this fill spent: /cryptocurrencies (BTC/USD found), and /stocks, /etfs, /indices (APPL never is).
    assert _get(feed, "/api_usage?apikey=k")["current_usage"] == 4

    conn = connect(schema_dsn)
    try:  # a worker (re)starting later says "Bitcoin" again: the instrument's name stays
        assert upsert_assets(conn, tables, {"BTC/USD": "Bitcoin", "ETH/USD": "Ethereum"}, replace=False) == 1
    finally:
        conn.close()
    assert dict(query(schema_dsn, "SELECT symbol, name FROM crypto_assets"))["BTC/USD"] == "Bitcoin US Dollar"
