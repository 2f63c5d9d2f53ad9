"""Per-symbol freshness with real parts: the local feed on 127.0.0.1 silencing one symbol (the ``mute``
fault) and calling an exchange closed (``/market_state``), a real ``shardctl start`` with its workers,
the embedded PostgreSQL, ``/healthz``, ``/metrics``, ``shardctl status --symbols`` and the status page in
headless Chromium. Conditions are awaited, never slept for; nothing depends on the wall-clock hour.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from support import terminate_all, wait_until
from test_statuspage import APT_BUDGET, Browser, chromium, http  # noqa: F401 (chromium is a fixture)
from test_supervisor import CRYPTO, STOCKS, Supervisor, free_port, run_cli, write_config

from shardctl.feed.server import FeedServer

#: Short enough that a muted symbol turns stale within seconds; long enough that a ticking one never does.
STALE_AFTER = "3s"


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    with FeedServer(rate=40, symbols=STOCKS + CRYPTO, seed=5) as server:
        server.set_market("XNGS", open=False)  # AAPL and MSFT trade on NASDAQ: closed
        server.inject("mute", symbol="ETH/USD")  # crypto trades 24/7: ETH/USD will be stale
        server.inject("mute", symbol="MSFT")  # its market is closed: MSFT is not stale
        yield server


@pytest.fixture
def supervisor(tmp_path: Path, schema_dsn: str, feed: FeedServer) -> Iterator[tuple[Supervisor, int]]:
    port = free_port()
    settings = {"stale_after": STALE_AFTER, "market_state_refresh": "1s"}
    config = write_config(tmp_path, feed.url, schema_dsn, metrics_port=port,
                          shard_settings={"stocks": settings, "crypto": settings})
    sup = Supervisor(config, tmp_path / "supervisor.log")
    try:
        sup.wait_states("RUNNING")
        yield sup, port
    finally:
        terminate_all([sup.proc])
        sup.close()


def healthz(port: int) -> tuple[int, list[str]]:
    code, _, body = http(port, "/healthz")
    return code, body.decode().splitlines()


def symbol_rows(config: Path) -> dict[str, list[str]]:
    """``shardctl status --symbols`` as {symbol: the row's cells}; asserts it exits 0."""
    done = run_cli("status", "-c", str(config), "--symbols")
    assert done.returncode == 0, done.stderr
    rows: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        cells = line.split()
        if cells and cells[0] in STOCKS + CRYPTO:
            rows[cells[0]] = cells
    return rows


def freshness(sup: Supervisor) -> dict[str, dict[str, Any]]:
    """{symbol: its record} from the control socket's status (columnar per shard)."""
    out = {}
    for shard in sup.status().values():
        columns = shard.get("freshness") or {}
        for i, symbol in enumerate(columns.get("symbol", [])):
            out[symbol] = {key: values[i] for key, values in columns.items()}
    return out


@pytest.mark.slow
def test_one_silent_symbol_is_stale_a_closed_market_is_not(supervisor: tuple[Supervisor, int],
                                                           feed: FeedServer) -> None:
    sup, port = supervisor
    # ETH/USD (24/7, silent) turns stale; MSFT (silent too) does not: NASDAQ is closed.
    wait_until(lambda: (f := freshness(sup)) and f["ETH/USD"]["stale"] and f["MSFT"]["market"] == "closed"
               and f["AAPL"]["market"] == "closed" and f, 30, what="ETH/USD stale, NASDAQ known closed")
    code, lines = wait_until(lambda: (h := healthz(port))[1][1:] and h, 10, what="a stale note in /healthz")
    assert code == 200 and lines[0] == "ok"
    assert len(lines) == 2 and re.fullmatch(r"stale: crypto: ETH/USD \(no tick yet\) \(stale_after 3s\)",
                                            lines[1]), lines

    rows = symbol_rows(sup.config_path)
    assert rows["ETH/USD"][1:4] == ["-", "-", "-"] and rows["ETH/USD"][-2:] == ["24/7", "STALE"]
    assert rows["BTC/USD"][-1] == "24/7"
    assert rows["MSFT"][-1] == "closed" and rows["AAPL"][-1] == "closed"
    print("shardctl status --symbols:", *(" ".join(r) for r in rows.values()), sep="\n  ")

    _, _, body = http(port, "/metrics")
    metrics = body.decode()
    assert 'shardctl_stale_symbols{shard="crypto"} 1.0' in metrics
    assert 'shardctl_stale_symbols{shard="stocks"} 0.0' in metrics
    assert re.search(r'shardctl_symbol_last_tick_age_seconds\{shard="crypto",symbol="BTC/USD"\} \d', metrics)
    assert re.search(r'shardctl_symbol_delay_seconds\{quantile="0.99",shard="crypto",symbol="BTC/USD"\} \d',
                     metrics)
    assert 'symbol="ETH/USD"' not in metrics  # no tick: no age, no delay, no rate (the stale count says it)
    assert 'shardctl_slow_symbols{shard="crypto"} 0.0' in metrics
    series = [line for line in metrics.splitlines() if line.startswith("shardctl_symbol_")]
    assert len(series) <= 5 * 4  # age, delay p50/p99, rate recent/normal

    # NASDAQ opens: silent MSFT turns stale at the next /market_state refresh.
    feed.set_market("XNGS", open=True)
    wait_until(lambda: (f := freshness(sup))["MSFT"]["stale"] and f["MSFT"]["market"] == "open", 30,
               what="MSFT stale once NASDAQ is open")
    wait_until(lambda: any(line.startswith("stale: stocks: MSFT") for line in healthz(port)[1]), 10,
               what="/healthz names MSFT")
    # Both speak again: nothing is stale, /healthz says just ok.
    feed.clear("mute")
    wait_until(lambda: not any(r["stale"] for r in freshness(sup).values()), 30, what="no stale symbol")
    assert wait_until(lambda: healthz(port) == (200, ["ok"]), 10, what="/healthz ok")
    fresh = freshness(sup)["ETH/USD"]
    assert fresh["last_tick_at"] is not None and fresh["delay_p99"] is not None


@pytest.mark.slow
@pytest.mark.timeout(APT_BUDGET + 120)  # a first run may install Chromium
def test_status_page_symbol_table_in_headless_chromium(supervisor: tuple[Supervisor, int], chromium: str,  # noqa: F811
                                                        tmp_path: Path) -> None:
    sup, port = supervisor
    wait_until(lambda: (f := freshness(sup)) and f["ETH/USD"]["stale"] and f["MSFT"]["market"] == "closed", 30,
               what="ETH/USD stale, NASDAQ known closed")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    browser = Browser(chromium, profile)
    try:
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        browser.wait("document.querySelectorAll('#symbols tbody tr').length === 4")
        browser.wait("document.querySelector('#symbols tbody tr').dataset.symbol === 'ETH/USD'")
        table = browser.eval("[...document.querySelectorAll('#symbols tbody tr')].map(tr => "
                             "[tr.dataset.symbol, tr.className, tr.querySelector('.col-market').textContent, "
                             "tr.querySelector('.col-stale').textContent])")
        assert table[0] == ["ETH/USD", "stale", "24/7", "STALE"], table
        assert sorted(row[0] for row in table[1:]) == ["AAPL", "BTC/USD", "MSFT"]
        assert all(row[1] == "" and row[3] == "" for row in table[1:]), table
        assert {row[0]: row[2] for row in table}["MSFT"] == "closed"
        assert browser.eval("document.getElementById('symbols-note').textContent") == "4 symbol(s) · 1 stale"
        # The stale row is drawn highlighted (red text on a light red ground).
        colour = browser.eval("getComputedStyle(document.querySelector('#symbols tr.stale td')).color")
        assert colour == "rgb(207, 34, 46)", colour
        assert not browser.errors(), browser.errors()
        shot = tmp_path / "statuspage-symbols.png"
        shot.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
        print(f"status page screenshot (per-symbol table): {shot}")
    finally:
        browser.close()
