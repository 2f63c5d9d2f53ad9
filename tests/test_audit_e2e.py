"""The audit's done-when test: a simulated Friday afternoon of trading, faults injected, every minute judged.

Real parts: the local feed on 127.0.0.1 (recording what it streams, so its REST ``time_series`` agrees
with it), ``shardctl start`` with three worker processes, the test's PostgreSQL/TimescaleDB, the
control socket, and ``shardctl audit --online`` as a subprocess. Time is simulated
(``shardctl.simclock``): every process and the feed read one clock that reads Friday
2026-11-27 16:37 New York LEAD seconds after the test starts (the workers start meanwhile) and runs
SPEED times as fast as the real one, so the test sees the stock market close and the forex weekend
begin at any hour of the real clock, in about 25 s.

Injected, in simulated New York time:

    16:45  the stock session ends (calendar "America/New_York 09:30-16:45"); the feed closes XNGS
    16:48  BTC/USD muted until 16:53 (the feed's REST still has its bars: a silent loss)
    16:50  ETH/USD slowed to 2.5 % of its rate, to the end (a silent slowdown)
    16:52  the fx worker is killed with SIGKILL (the supervisor restarts it)
    16:55  every connection is cut (abort)
    17:00  the forex weekend (calendar "forex"); the feed closes the forex market
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from faultkit import SupervisorRun
from support import query, wait_until, write_config

from shardctl.feed.server import FeedServer
from shardctl.simclock import ENV as SIMCLOCK_ENV
from shardctl.simclock import SimulatedClock

NY = ZoneInfo("America/New_York")
SPEED = 120.0
START = datetime(2026, 11, 27, 16, 37, tzinfo=NY)
#: Real seconds from the test's start until the simulated clock reads START: the workers start meanwhile.
LEAD = 5.0
STOCKS, FX, CRYPTO = ("AAPL", "MSFT"), ("EUR/USD", "GBP/USD"), ("BTC/USD", "ETH/USD", "SOL/USD")


def at(hour: int, minute: int) -> float:
    return datetime(2026, 11, 27, hour, minute, tzinfo=NY).timestamp()


def minute_of(hour: int, minute: int) -> int:
    return int(at(hour, minute) // 60)


@dataclass(frozen=True)
class Seen:
    """One symbol's freshness record as ``status`` showed it, with the simulated time of the poll."""

    sim: float
    real: float
    symbol: str
    market: str
    stale: bool
    slow: bool


class StatusPoller(threading.Thread):
    """Reads every shard's per-symbol freshness through the control socket until stopped."""

    def __init__(self, run: SupervisorRun, clock: SimulatedClock) -> None:
        super().__init__(daemon=True)
        self.run_, self.clock, self.seen, self.halt = run, clock, list[Seen](), threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            try:
                shards = self.run_.status()
            except Exception:  # noqa: BLE001 - a poll during a restart; the next one counts
                continue
            now, real = self.clock(), time.time()
            for shard in shards.values():
                cols = shard.get("freshness") or {}
                for i, symbol in enumerate(cols.get("symbol") or []):
                    self.seen.append(Seen(now, real, symbol, cols["market"][i], bool(cols["stale"][i]),
                                          bool((cols.get("slow") or [False] * (i + 1))[i])))


@pytest.mark.slow
def test_audit_online_classifies_every_injected_minute(tmp_path: Path, schema_dsn: str) -> None:
    clock = SimulatedClock(time.time() + LEAD, START.timestamp(), SPEED)
    feed = FeedServer(rate=150, symbols=STOCKS + FX + CRYPTO, seed=19, clock=clock, record_bars=True,
                      keep_sent=0).start()
    common = {"stale_after": "10m", "slow_below": 0.25, "slow_window": "30m"}
    config = write_config(tmp_path, feed.url, schema_dsn, {
        "stocks": {"symbols": STOCKS, "market_hours": "America/New_York 09:30-16:45", **common},
        "fx": {"symbols": FX, "market_hours": "forex", **common},
        "crypto": {"symbols": CRYPTO, "market_hours": "24/7", **common},
    }, source={"rest_url": feed.rest_url}, supervisor={"restart_initial": "2s", "restart_max": "2s"})
    env = {SIMCLOCK_ENV: clock.env}
    run = SupervisorRun(config, tmp_path / "supervisor.log", env=env)
    poller = StatusPoller(run, clock)

    def until(hour: int, minute: int) -> None:
        """Wait for the simulated clock to read hour:minute New York (the condition is the clock itself)."""
        time.sleep(max(0.0, clock.real_at(at(hour, minute)) - time.time()))

    try:
        run.wait_running(["stocks", "fx", "crypto"], timeout=30, rows=1)
        assert clock() < at(16, 44), "the workers took over 8 real seconds to start: the script below needs them"
        poller.start()
        until(16, 45)
        feed.inject("close_market", exchange="XNGS")
        until(16, 48)
        feed.inject("mute", symbol="BTC/USD")
        until(16, 50)
        feed.inject("slow", symbol="ETH/USD", fraction=0.025)
        slowed_at = time.time()
        until(16, 52)
        fx_pid = run.status()["fx"]["pid"]
        os.kill(fx_pid, signal.SIGKILL)
        until(16, 53)
        feed.clear("mute")
        until(16, 55)
        feed.inject("abort")
        until(17, 0)
        feed.inject("close_market", exchange="PHYSICAL CURRENCY")
        until(17, 6)
        wait_until(lambda: run.status()["fx"]["state"] == "RUNNING" and run.status()["fx"]["pid"] != fx_pid,
                   timeout=20, what="the fx worker restarted")
        poller.halt.set()
        poller.join(5)
        assert run.stop(timeout=60) == 0, run.log()[-3000:]

        window = ("--from", datetime.fromtimestamp(at(16, 20), timezone.utc).isoformat(),
                  "--to", datetime.fromtimestamp(at(17, 6), timezone.utc).isoformat())
        done = subprocess.run([sys.executable, "-m", "shardctl", "audit", str(config), *window, "--online",
                               "--format", "json"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr  # the mute and the slowdown are unexplained
        report = json.loads(done.stdout)
    finally:
        poller.halt.set()
        run.close()
        feed.stop()

    first = minute_of(16, 20)
    classes = {s["symbol"]: s["minutes"] for s in report["symbols"]}
    legend = report["legend"]

    def cls(symbol: str, minute: int) -> str:
        return legend[classes[symbol][minute - first]]

    tape = feed.tape
    assert tape is not None
    minutes = range(first, minute_of(17, 6))
    injected: set[tuple[str, int]] = set()
    # The stock session ended at 16:45 and the forex week at 17:00: closed (a tick in the closing minute counts).
    for symbol in STOCKS:
        for m in range(minute_of(16, 46), minute_of(17, 6)):
            assert cls(symbol, m) == "closed", (symbol, m)
    for symbol in FX:
        for m in range(minute_of(17, 1), minute_of(17, 6)):
            assert cls(symbol, m) == "closed", (symbol, m)
    # BTC/USD was muted from 16:48 to 16:53 and ETH/USD slowed to 2.5 % from 16:50: a minute in which the feed
    # streamed nothing is unexplained (REST has the market's bar; no gap), or inside the cut's gap.
    for symbol, start, end in (("BTC/USD", (16, 48), (16, 54)), ("ETH/USD", (16, 50), (17, 6))):
        for m in range(minute_of(*start), minute_of(*end)):
            if tape.streamed(symbol, m) is None:
                assert cls(symbol, m) in ("unexplained", "gap"), (symbol, m)
                injected.add((symbol, m))
    assert all(cls("BTC/USD", m) != "ticks" for m in range(minute_of(16, 49), minute_of(16, 53)))
    # The killed fx worker stayed down for 2 s (4 simulated minutes): each symbol's minutes in it without a
    # tick of that symbol are its gap.
    down = [(lo, hi) for lo, hi, reason in query(schema_dsn, "SELECT extract(epoch FROM gap_from), extract(epoch "
                                                 "FROM gap_to), reason FROM shardctl_gaps WHERE shard = 'fx'")
            if reason == "worker down"]
    assert len(down) == 1 and down[0][1] - down[0][0] > 120, down
    fx_gap = {s: [m for m in minutes if down[0][0] < (m + 1) * 60 and m * 60 < down[0][1] and cls(s, m) != "ticks"]
              for s in FX}
    assert fx_gap["EUR/USD"] and all(cls(s, m) == "gap" for s in FX for m in fx_gap[s]), \
        {s: classes[s] for s in FX}
    # Every minute the feed streamed a symbol in holds its ticks, unless lost inside a recorded gap.
    for symbol in STOCKS + FX + CRYPTO:
        for m in minutes:
            if tape.streamed(symbol, m) is not None:
                assert cls(symbol, m) in ("ticks", "gap"), (symbol, m, cls(symbol, m))
    # Unexplained minutes that were not injected: under 1 %.
    stray = [(s, m) for s in classes for m in minutes if cls(s, m) == "unexplained" and (s, m) not in injected]
    print(f"unexplained minutes not injected: {len(stray)} of {len(classes) * len(minutes)}: "
          f"{[(s, m - first) for s, m in stray]}")
    assert len(stray) < 0.01 * len(classes) * len(minutes), stray
    assert report["totals"]["off"] > 0 and report["totals"]["closed"] > 0
    # Candles against REST bars: ticks that share a whole-second timestamp make "the last price" a tie, and a
    # tick lost in a gap changes a close: a few discrepancies, counted, never most.
    compared = sum(s["quality"]["compared"] for s in report["symbols"])
    mismatched = sum(s["quality"]["close_mismatches"] for s in report["symbols"])
    print(f"audit: {report['totals']}; {compared} minutes compared with REST, {mismatched} close discrepancies")
    assert compared > 0 and mismatched <= 0.1 * compared

    # SLOW: ETH/USD flagged within a bounded delay; nothing flagged while its market was closed.
    seen = poller.seen
    assert not [s for s in seen if s.market == "closed" and (s.stale or s.slow)]
    assert any(s.market == "closed" and s.symbol in STOCKS for s in seen)
    assert not [s for s in seen if s.symbol == "SOL/USD" and (s.stale or s.slow)]
    eth_slow = [s for s in seen if s.symbol == "ETH/USD" and s.slow and s.real >= slowed_at]
    assert eth_slow, "ETH/USD never SLOW"
    delay = eth_slow[0].real - slowed_at
    print(f"slowdown flagged after {delay:.2f} s real ({delay * SPEED / 60:.1f} simulated minutes)")
    assert delay < 15.0  # about two freshness reports (3 s each) measured; five allowed on a loaded machine
    assert timedelta(seconds=delay * SPEED) < timedelta(minutes=25)
