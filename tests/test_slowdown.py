"""Silent slowdown (SLOW): each symbol's recent tick rate against its own normal, judged per report.

Pure: an injected clock drives ``FreshnessTracker`` through simulated hours; the reporting path
(``status --symbols``, ``/metrics``, ``/healthz``) is fed hand-made records.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from shardctl.report import MARKET_ALWAYS, MARKET_CLOSED, Market, ShardState, ShardStatus, SymbolFreshness, WorkerReport
from shardctl.supervisor.cli import format_symbols
from shardctl.supervisor.http.metrics import MetricsServer, render, slow_notes
from shardctl.worker.freshness import FreshnessTracker

T0 = 1_700_000_000.0
REPORT = 3.0  # seconds between freshness snapshots, as the worker sends them


def drive(tracker: FreshnessTracker, rates: dict[str, float], start: float, seconds: float,
          market: Market = MARKET_ALWAYS) -> list[tuple[float, dict[str, SymbolFreshness]]]:
    """Tick each symbol at its rate (ticks/s, evenly) and snapshot every REPORT seconds; the snapshots."""
    out = []
    credit = dict.fromkeys(rates, 0.0)
    t = start
    while t < start + seconds:
        for _ in range(int(REPORT * 10)):
            t += 0.1
            for symbol, rate in rates.items():
                credit[symbol] += rate * 0.1
                while credit[symbol] >= 1:
                    credit[symbol] -= 1
                    tracker.observe(symbol, t, t)
        out.append((t, {r.symbol: r for r in tracker.snapshot(t, lambda _s: market)}))
    return out


def test_a_symbol_slowed_to_2_5_percent_is_slow_within_a_bounded_delay_and_others_are_not() -> None:
    tracker = FreshnessTracker(["FAST", "STEADY"], stale_after=120.0, now=T0, slow_below=0.1, slow_window=600.0)
    warm = drive(tracker, {"FAST": 10.0, "STEADY": 10.0}, T0, 900)
    assert not any(r.slow for _, snap in warm for r in snap.values())
    assert warm[-1][1]["FAST"].normal_rate == pytest.approx(600.0, rel=0.02)
    slowed_at = warm[-1][0]
    after = drive(tracker, {"FAST": 0.25, "STEADY": 10.0}, slowed_at, 600)
    flagged = [t for t, snap in after if snap["FAST"].slow]
    assert flagged, "never flagged"
    delay = flagged[0] - slowed_at
    # The recent rate's time constant is slow_window / 10 = 60 s: 2.5 % crosses 10 % of a normal rate that
    # itself sags while it is not yet slow after about three of them (a report more at most).
    assert 150 <= delay <= 3 * 60 + REPORT, delay
    assert all(snap["FAST"].slow for t, snap in after if t >= flagged[0])  # stays slow: its normal does not follow
    assert not any(snap["STEADY"].slow or snap["STEADY"].stale for _, snap in after)
    assert not any(snap["FAST"].stale for _, snap in after)  # it still ticks: slow, not stale
    # Back to its rate: no longer slow within a few reports.
    back = drive(tracker, {"FAST": 10.0, "STEADY": 10.0}, after[-1][0], 300)
    assert not back[-1][1]["FAST"].slow


def test_closed_markets_thin_symbols_and_silent_ones_are_never_slow() -> None:
    tracker = FreshnessTracker(["S"], stale_after=120.0, now=T0, slow_below=0.5, slow_window=600.0)
    warm = drive(tracker, {"S": 5.0}, T0, 600)
    closed = drive(tracker, {"S": 0.0}, warm[-1][0], 600, market=MARKET_CLOSED)
    assert not any(snap["S"].slow or snap["S"].stale for _, snap in closed)
    # A silent symbol is STALE, not SLOW (two states, two thresholds).
    silent = drive(tracker, {"S": 0.0}, closed[-1][0], 600)
    assert silent[-1][1]["S"].stale and not any(snap["S"].slow and snap["S"].stale for _, snap in silent)
    thin = FreshnessTracker(["T"], stale_after=1e9, now=T0, slow_below=0.5, slow_window=600.0)
    snaps = drive(thin, {"T": 0.2}, T0, 600) + drive(thin, {"T": 0.0}, T0 + 600, 600)
    assert not any(snap["T"].slow for _, snap in snaps)  # 0.2/s promises 12 ticks per minute: under 20, not judged
    off = FreshnessTracker(["S"], stale_after=1e9, now=T0, slow_below=0.0, slow_window=600.0)
    snaps = drive(off, {"S": 10.0}, T0, 600) + drive(off, {"S": 0.1}, T0 + 600, 600)
    assert not any(snap["S"].slow for _, snap in snaps)


SLOW = SymbolFreshness("ETH/USD", T0 - 5, 0.4, 0.9, MARKET_ALWAYS, False, 1.5, 600.0, True)
FINE = SymbolFreshness("BTC/USD", T0 - 1, 0.4, 0.9, MARKET_ALWAYS, False, 590.0, 600.0, False)


def statuses() -> list[ShardStatus]:
    return [ShardStatus(name="crypto", state=ShardState.RUNNING, wanted=True, symbols=2,
                        worker=WorkerReport(freshness=(FINE, SLOW), stale_after=120.0))]


def test_slow_in_status_symbols_metrics_and_healthz() -> None:
    lines = format_symbols(statuses(), now=T0).splitlines()
    assert lines[0] == "crypto: 2 symbol(s), 0 stale (stale_after 2m00s), 1 slow"
    assert lines[2].split() == ["ETH/USD", "5.0s", "0.4s", "0.9s", "1.5", "600", "24/7", "SLOW"]
    assert lines[3].split() == ["BTC/USD", "1.0s", "0.4s", "0.9s", "590", "600", "24/7"]
    text = render(statuses).decode()
    assert 'shardctl_slow_symbols{shard="crypto"} 1.0' in text
    assert 'shardctl_symbol_ticks_per_minute{shard="crypto",symbol="ETH/USD",window="recent"} 1.5' in text
    assert slow_notes(statuses()) == ["slow: crypto: ETH/USD (1.5/min, normal 600/min)"]


@pytest.mark.parametrize("fail_on_slow, code", [(False, 200), (True, 503)])
def test_healthz_fails_on_slow_only_when_configured(fail_on_slow: bool, code: int) -> None:
    async def scenario() -> tuple[int, str]:
        server = MetricsServer("127.0.0.1", 0, statuses, fail_on_slow=lambda: fail_on_slow)
        await server.start()
        try:
            return await asyncio.to_thread(get, server.port)
        finally:
            await server.close()

    status, body = asyncio.run(scenario())
    assert status == code
    note = "slow: crypto: ETH/USD (1.5/min, normal 600/min)"
    assert body.splitlines() == (["ok", note] if code == 200 else [note])


def get(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
