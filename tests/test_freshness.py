"""Per-symbol freshness without processes: the tracker, market hours, the typed report, config, metrics, CLI.

Every clock is injected; nothing sleeps. The end-to-end test with a real
supervisor, workers, feed and database is ``tests/test_symbol_freshness.py``.
"""

from __future__ import annotations

import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

import pytest

from shardctl.config import check_config
from shardctl.config.model import ShardSettings
from shardctl.errors import ConfigError
from shardctl.feed.server import FeedServer
from shardctl.markethours import parse_market_hours
from shardctl.report import (
    MARKET_ALWAYS,
    MARKET_CLOSED,
    MARKET_OPEN,
    MARKET_UNKNOWN,
    ShardState,
    ShardStatus,
    SymbolFreshness,
    WorkerReport,
    decode_report,
    encode_report,
)
from shardctl.supervisor.cli import format_symbols
from shardctl.supervisor.http.metrics import MetricsServer, render, stale_notes
from shardctl.twelvedata.markets import ExchangeState, MarketStateUnavailable, fetch_market_state
from shardctl.twelvedata.parse import status_event
from shardctl.worker.freshness import RING, FreshnessTracker, percentile
from shardctl.worker.markets import MarketWatch

T0 = 1_700_000_000.0


# ------------------------------------------------------------------ the tracker

def test_percentile_is_nearest_rank() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert percentile(ordered, 0.5) == 50.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_last_tick_and_delay_percentiles_over_the_last_ring() -> None:
    tracker = FreshnessTracker(["BTC/USD", "ETH/USD"], stale_after=60.0, now=T0)
    # 2 * RING ticks: the first RING arrive 10 s late, the last RING between 0 and 1.27 s late.
    for i in range(RING):
        tracker.observe("BTC/USD", T0 + i, T0 + i + 10.0)
    for i in range(RING):
        tracker.observe("BTC/USD", T0 + 1000 + i, T0 + 1000 + i + i / 100)
    (btc, eth) = tracker.snapshot(T0 + 1000 + RING, {})
    assert btc.symbol == "BTC/USD" and btc.last_tick_at == T0 + 1000 + RING - 1 + (RING - 1) / 100
    assert btc.delay_p50 == pytest.approx(0.63) and btc.delay_p99 == pytest.approx(1.26)  # the 10 s ones are gone
    assert (eth.last_tick_at, eth.delay_p50, eth.delay_p99) == (None, None, None)


def test_stale_after_quiet_since_last_tick_or_since_watching() -> None:
    tracker = FreshnessTracker(["BTC/USD", "NEVER"], stale_after=30.0, now=T0)
    tracker.observe("BTC/USD", T0 + 5, T0 + 5)
    stale = {r.symbol: r.stale for r in tracker.snapshot(T0 + 30.0, {})}
    assert stale == {"BTC/USD": False, "NEVER": False}
    stale = {r.symbol: r.stale for r in tracker.snapshot(T0 + 30.5, {})}
    assert stale == {"BTC/USD": False, "NEVER": True}  # never ticked: the clock runs from T0
    stale = {r.symbol: r.stale for r in tracker.snapshot(T0 + 35.5, {})}
    assert stale == {"BTC/USD": True, "NEVER": True}


def test_a_closed_market_is_never_stale() -> None:
    tracker = FreshnessTracker(["AAPL", "BTC/USD", "EUR/USD"], stale_after=30.0, now=T0)
    markets = {"AAPL": MARKET_CLOSED, "BTC/USD": MARKET_ALWAYS}
    records = {r.symbol: r for r in tracker.snapshot(T0 + 3600, markets)}
    assert not records["AAPL"].stale and records["AAPL"].market == MARKET_CLOSED
    assert records["BTC/USD"].stale and records["EUR/USD"].stale  # 24/7 and unknown markets count as open
    assert records["EUR/USD"].market == MARKET_UNKNOWN


def test_set_symbols_keeps_known_ones_and_starts_new_clocks_now() -> None:
    tracker = FreshnessTracker(["A", "B"], stale_after=10.0, now=T0)
    tracker.observe("A", T0, T0 + 1)
    tracker.set_symbols(["A", "C"], now=T0 + 100)
    records = {r.symbol: r for r in tracker.snapshot(T0 + 105, {})}
    assert set(records) == {"A", "C"}
    assert records["A"].last_tick_at == T0 + 1 and records["A"].stale
    assert not records["C"].stale  # watched since T0 + 100


# ------------------------------------------------------------------ market hours

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


SUBSCRIBED_EVENT = {"event": "subscribe-status", "status": "ok", "success": [
    {"symbol": "AAPL", "exchange": "NASDAQ", "mic_code": "XNGS", "type": "Common Stock"},
    {"symbol": "IBM", "exchange": "NYSE", "mic_code": "XNYS", "type": "Common Stock"},
    {"symbol": "BTC/USD", "exchange": "Coinbase Pro", "mic_code": "Coinbase Pro", "type": "Digital Currency"},
    {"symbol": "EUR/USD", "type": "Physical Currency"}]}
SUBSCRIBED = status_event("subscribe-status", SUBSCRIBED_EVENT)


def test_market_watch_follows_market_state_and_keeps_it_on_errors() -> None:
    answers: list[Iterable[ExchangeState] | Exception] = [
        [ExchangeState("NASDAQ", "XNGS", "United States", False), ExchangeState("NYSE", "XNYS", "United States", True)],
        MarketStateUnavailable("cannot reach the API"),
        [ExchangeState("NASDAQ", "XNGS", "United States", True)]]

    def fetch() -> Iterable[ExchangeState]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = FakeClock()
    watch = MarketWatch(parse_market_hours("auto"), fetch, refresh=300.0, clock=clock)
    assert not watch.needs_exchanges() and not watch.refresh_now()  # nothing learnt yet: no credit spent
    assert watch.market("AAPL") == MARKET_UNKNOWN
    watch.learn(SUBSCRIBED)
    assert watch.refresh_now() and watch.fetches == 1
    assert [watch.market(s) for s in ("AAPL", "IBM", "BTC/USD", "EUR/USD")] == \
        [MARKET_CLOSED, MARKET_OPEN, MARKET_ALWAYS, MARKET_UNKNOWN]
    clock.now = 299.0
    assert not watch.refresh_now()  # not due
    clock.now = 300.0
    assert not watch.refresh_now() and watch.market("AAPL") == MARKET_CLOSED  # failed: last states kept
    clock.now = 600.0
    assert watch.refresh_now() and watch.market("AAPL") == MARKET_OPEN
    assert watch.market("IBM") == MARKET_UNKNOWN  # no longer listed


def test_market_watch_crypto_only_spends_no_credit_and_24_7_mode_never_closes() -> None:
    def fetch() -> Iterable[ExchangeState]:
        raise AssertionError("no fetch expected")

    watch = MarketWatch(parse_market_hours("auto"), fetch, refresh=1.0, clock=FakeClock())
    watch.learn(status_event("subscribe-status", {"success": [SUBSCRIBED_EVENT["success"][2]]}))
    assert not watch.refresh_now() and watch.market("BTC/USD") == MARKET_ALWAYS
    always = MarketWatch(parse_market_hours("24/7"), fetch, refresh=1.0, clock=FakeClock())
    always.learn(SUBSCRIBED)
    assert not always.refresh_now() and always.market("AAPL") == MARKET_ALWAYS


def test_local_feed_market_state_through_the_twelvedata_package() -> None:
    with FeedServer(rate=0, symbols=["AAPL", "IBM"], seed=3) as feed:
        feed.set_market("XNGS", open=False)
        states = {s.code: s for s in fetch_market_state(feed.rest_url, "demo")}
        assert not states["XNGS"].is_open and states["XNGS"].name == "NASDAQ"
        assert states["XNYS"].is_open and states["XNYS"].country == "United States"
        feed.set_market("XNGS", open=True)
        assert all(s.is_open for s in fetch_market_state(feed.rest_url, "demo"))
        assert feed.rest.counts()["/market_state"] == 2
        with pytest.raises(MarketStateUnavailable, match="refused /market_state: the API key was refused"):
            fetch_market_state(feed.rest_url, "")


# ------------------------------------------------------------------ the typed report

RECORDS = (SymbolFreshness("BTC/USD", T0, 0.4, 0.9, MARKET_ALWAYS, False),
           SymbolFreshness("ETH/USD", None, None, None, MARKET_ALWAYS, True),
           SymbolFreshness("AAPL", T0 - 50_000, 0.2, 1.0, MARKET_CLOSED, False))


def test_freshness_crosses_the_pipe_and_the_control_socket_columnar() -> None:
    report = WorkerReport(freshness=RECORDS, stale_after=30.0)
    line = encode_report(report)
    assert b'"freshness":{"symbol":["BTC/USD","ETH/USD","AAPL"]' in line  # one list per field, not per symbol
    back = decode_report(line)
    assert isinstance(back, WorkerReport) and back.freshness == RECORDS and back.stale_after == 30.0
    assert back.stale_symbols == ("ETH/USD",)
    assert decode_report(encode_report(WorkerReport())).freshness is None  # "not in this report"
    status = ShardStatus(name="crypto", state=ShardState.RUNNING, symbols=3, worker=report)
    again = ShardStatus.from_json(status.to_json())
    assert again.symbols == 3 and again.worker.freshness == RECORDS


def test_malformed_freshness_is_ignored_not_fatal() -> None:
    line = b'{"type":"stats","freshness":{"symbol":["A",7],"stale":[true]}}'
    report = decode_report(line)
    assert isinstance(report, WorkerReport)
    assert report.freshness == (SymbolFreshness("A"),)  # a column of the wrong length is dropped
    assert decode_report(b'{"type":"stats","freshness":[1,2]}').freshness is None  # type: ignore[union-attr]


# ------------------------------------------------------------------ config

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardctl.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


BASE = '[source]\nurl = "ws://127.0.0.1:8765/v1/quotes/price"\n'


def test_freshness_settings_defaults_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '[defaults]\nstale_after = "45s"\n[supervisor]\nhealthz_fails_on_stale = true\n'
                 '[shards.crypto]\nsymbols = ["BTC/USD"]\nmarket_hours = "24/7"\n'
                 '[shards.stocks]\nsymbols = ["AAPL"]\nstale_after = "10m"\nmarket_state_refresh = "15m"\n')
    config, problems, _ = check_config(path)
    assert not problems and config is not None
    assert config.supervisor.healthz_fails_on_stale
    crypto, stocks = config.shards["crypto"].settings, config.shards["stocks"].settings
    assert (crypto.stale_after, crypto.market_hours.name) == (45.0, "24/7")
    assert (stocks.stale_after, stocks.market_hours.name, stocks.market_state_refresh) == (600.0, "auto", 900.0)
    default = ShardSettings()
    assert (default.stale_after, default.market_hours.name, default.market_state_refresh) == (120.0, "auto", 300.0)


@pytest.mark.parametrize("line, key, fragment", [
    ('stale_after = "soon"', "shards.s.stale_after", 'expected a duration like "500ms"'),
    ("stale_after = 0", "shards.s.stale_after", "must be longer than zero"),
    ('market_hours = "weekdays"', "shards.s.market_hours", "unknown market hours 'weekdays'; expected one of"),
    ('market_state_refresh = "-1m"', "shards.s.market_state_refresh", "expected a duration"),
    ('stale_aftr = "1m"', "shards.s.stale_aftr", "did you mean 'stale_after'?"),
])
def test_bad_freshness_settings_name_file_key_and_fix(tmp_path: Path, line: str, key: str, fragment: str) -> None:
    path = write(tmp_path, BASE + f'[shards.s]\nsymbols = ["AAPL"]\n{line}\n')
    _, problems, _ = check_config(path)
    assert len(problems) == 1, [str(p) for p in problems]
    problem: ConfigError = problems[0]
    assert (problem.file, problem.key) == (str(path), key)
    assert str(problem).startswith(f"{path}: {key}: ") and "\n" not in str(problem) and fragment in str(problem)


def test_healthz_fails_on_stale_must_be_a_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '[supervisor]\nhealthz_fails_on_stale = "yes"\n[shards.s]\nsymbols = ["A"]\n')
    _, problems, _ = check_config(path)
    assert [str(p) for p in problems] == [f"{path}: supervisor.healthz_fails_on_stale: must be true or false, "
                                          "got 'yes'"]


# ------------------------------------------------------------------ metrics, healthz, CLI

def statuses() -> list[ShardStatus]:
    return [ShardStatus(name="crypto", state=ShardState.RUNNING, wanted=True, symbols=3,
                        worker=WorkerReport(freshness=RECORDS, stale_after=30.0)),
            ShardStatus(name="stocks", state=ShardState.RUNNING, wanted=True, symbols=1, worker=WorkerReport())]


def test_metrics_three_series_per_symbol_and_a_stale_count_per_shard() -> None:
    text = render(statuses).decode()
    lines = [line for line in text.splitlines() if line.startswith("shardctl_symbol_")]
    assert sum('symbol="BTC/USD"' in line for line in lines) == 3
    assert 'shardctl_symbol_delay_seconds{quantile="0.99",shard="crypto",symbol="BTC/USD"} 0.9' in text
    assert 'shardctl_symbol_last_tick_age_seconds{shard="crypto",symbol="ETH/USD"}' not in text  # never ticked
    assert 'shardctl_stale_symbols{shard="crypto"} 1.0' in text
    assert 'shardctl_stale_symbols{shard="stocks"} 0.0' in text


def test_stale_notes_name_the_symbols() -> None:
    assert stale_notes(statuses(), T0) == ["stale: crypto: ETH/USD (no tick yet) (stale_after 30s)"]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("fail_on_stale, code", [(False, 200), (True, 503)])
def test_healthz_names_stale_symbols_and_fails_only_when_configured(fail_on_stale: bool, code: int) -> None:
    import asyncio

    async def scenario() -> tuple[int, str]:
        server = MetricsServer("127.0.0.1", 0, statuses, fail_on_stale=lambda: fail_on_stale)
        await server.start()
        try:
            return await asyncio.to_thread(_get, server.port, "/healthz")
        finally:
            await server.close()

    status, body = asyncio.run(scenario())
    assert status == code
    expected = ["stale: crypto: ETH/USD (no tick yet) (stale_after 30s)"]
    assert body.splitlines() == (["ok"] + expected if code == 200 else expected)


def test_status_symbols_table_per_shard_stale_first() -> None:
    text = format_symbols(statuses(), now=T0 + 2)
    crypto, stocks = text.split("\n\n")
    lines = crypto.splitlines()
    assert lines[0] == "crypto: 3 symbol(s), 1 stale (stale_after 30s)"
    assert lines[1].split() == ["SYMBOL", "LAST", "TICK", "DELAY", "P50", "DELAY", "P99", "RATE/MIN", "NORMAL/MIN",
                                "MARKET"]
    assert lines[2].split() == ["ETH/USD", "-", "-", "-", "-", "-", "24/7", "STALE"]
    assert lines[3].split() == ["BTC/USD", "2.0s", "0.4s", "0.9s", "-", "-", "24/7"]
    assert lines[4].split()[0] == "AAPL" and lines[4].split()[-1] == "closed"
    assert stocks == "stocks: no freshness report yet (RUNNING)"
