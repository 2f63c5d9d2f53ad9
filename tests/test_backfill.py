"""Gap backfill from the local feed's REST endpoint into PostgreSQL: real sockets, real database, injected clock."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterator

import pytest
from support import query, wait_until

from shardctl.backoff import Backoff
from shardctl.db.connection import connect
from shardctl.db.gaps import get_gap, list_gaps, record_gap, set_backfill_status
from shardctl.feed.catalog import Catalog
from shardctl.feed.rest import format_value, synthetic_bar
from shardctl.feed.server import FeedServer
from shardctl.worker.backfill import Backfiller, CreditLimiter

UTC = timezone.utc
KEY = "k3y-S3CRET-42"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CATALOG = Catalog()


class FakeClock:
    """A monotonic clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    server = FeedServer(rate=1, api_key=KEY).start()
    yield server
    server.stop()


@pytest.fixture
def conn(fresh_dsn: str) -> Iterator[Any]:
    c = connect(fresh_dsn)
    yield c
    c.close()


def make(dsn: str, feed: FeedServer, symbols: list[str], clock: FakeClock, **kwargs: Any) -> Backfiller:
    kwargs.setdefault("api_key", KEY)
    return Backfiller(dsn, "crypto", symbols, rest_url=feed.rest_url, threshold=120, clock=clock,
                      sleep=clock.sleep, **kwargs)


def expected_rows(symbol: str, first: datetime, minutes: int, dp: int = 10) -> list[tuple[Any, ...]]:
    inst = CATALOG.lookup(symbol)
    assert inst is not None
    rows = []
    for i in range(minutes):
        bucket = first + timedelta(minutes=i)
        bar = synthetic_bar(inst, int(bucket.timestamp() // 60))
        prices = tuple(float(format_value(v, dp)) for v in (bar.open, bar.high, bar.low, bar.close))
        rows.append((symbol, bucket, *prices, None if bar.volume is None else Decimal(bar.volume), "rest"))
    return rows


def stored(dsn: str, symbol: str | None = None) -> list[tuple[Any, ...]]:
    rows = query(dsn, "SELECT symbol, bucket, open, high, low, close, volume, source FROM shardctl_bars "
                      "WHERE interval = '1min' ORDER BY symbol, bucket")
    return [r for r in rows if symbol is None or r[0] == symbol]


def test_gap_over_threshold_is_backfilled_with_the_generators_bars(
        feed: FeedServer, conn: Any, fresh_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 logs every request line at DEBUG: the key must not be in it
    caplog.set_level(logging.DEBUG, logger="urllib3")
    gap_id = record_gap(conn, "crypto", T0 + timedelta(seconds=30), T0 + timedelta(minutes=7, seconds=10),
                        "disconnected: connection reset")
    assert gap_id is not None
    gap = get_gap(conn, gap_id)
    assert gap is not None
    clock = FakeClock()
    filler = make(fresh_dsn, feed, ["BTC/USD", "EUR/USD"], clock)
    filler.submit(gap)
    assert "/time_series" not in feed.rest.counts()  # submit never touches the network
    [result] = filler.run_pending()
    assert (result.gap_id, result.status, result.bars, result.requests) == (gap_id, "done", 16, 2)
    # every minute the gap touches, 12:00 to 12:07, at full precision; forex has no volume
    rows = stored(fresh_dsn)
    assert rows == sorted(expected_rows("BTC/USD", T0, 8) + expected_rows("EUR/USD", T0, 8))
    assert stored(fresh_dsn, "EUR/USD")[0][6] is None
    done = get_gap(conn, gap_id)
    assert done is not None and (done.backfill_status, done.backfilled_bars) == ("done", 16)
    assert feed.rest.counts()["/time_series"] == 2 and clock.sleeps == []

    filler.submit(done)  # again: upserts, no duplicates
    assert filler.run_pending()[0].bars == 16
    assert len(stored(fresh_dsn)) == 16
    filler.stop()
    assert KEY not in caplog.text and "apikey=" not in caplog.text
    assert "GET /time_series?symbol=BTC" in caplog.text  # the request lines were logged, without the key


def test_gap_under_threshold_is_skipped(feed: FeedServer, conn: Any, fresh_dsn: str) -> None:
    gap_id = record_gap(conn, "crypto", T0, T0 + timedelta(seconds=90), "disconnected: blip")
    gap = get_gap(conn, gap_id or 0)
    assert gap is not None
    filler = make(fresh_dsn, feed, ["BTC/USD"], FakeClock())
    filler.submit(gap)
    [result] = filler.run_pending()
    assert (result.status, result.bars, result.requests) == ("skipped: shorter than threshold", 0, 0)
    assert get_gap(conn, gap.id).backfill_status == "skipped: shorter than threshold"  # type: ignore[union-attr]
    assert stored(fresh_dsn) == [] and "/time_series" not in feed.rest.counts()
    filler.stop()


def test_429_backs_off_and_retries_until_the_bars_arrive(feed: FeedServer, conn: Any, fresh_dsn: str) -> None:
    gap = get_gap(conn, record_gap(conn, "crypto", T0, T0 + timedelta(minutes=3), "worker down") or 0)
    assert gap is not None
    feed.inject("rate_limit", count=2)
    clock = FakeClock()
    filler = make(fresh_dsn, feed, ["ETH/USD"], clock, backoff=Backoff(5.0, 40.0, jitter=0.2, rng=lambda: 0.5))
    filler.submit(gap)
    [result] = filler.run_pending()
    assert clock.sleeps == [5.0, 10.0]  # capped exponential backoff (jitter centred by the injected rng)
    assert feed.rest.counts()["/time_series"] == 3 and feed.rest.rate_limited == 2
    assert (result.status, result.bars, result.requests) == ("done", 3, 3)
    assert stored(fresh_dsn) == expected_rows("ETH/USD", T0, 3)
    filler.stop()


def test_gives_up_after_max_attempts_and_says_why(feed: FeedServer, conn: Any, fresh_dsn: str) -> None:
    gap = get_gap(conn, record_gap(conn, "crypto", T0, T0 + timedelta(minutes=3), "worker down") or 0)
    assert gap is not None
    feed.inject("rate_limit", count=3)
    clock = FakeClock()
    filler = make(fresh_dsn, feed, ["ETH/USD", "BTC/USD"], clock, max_attempts=3,
                  backoff=Backoff(1.0, 2.0, jitter=0.0))
    filler.submit(gap)
    [result] = filler.run_pending()
    assert result.status == "failed: ETH/USD: rate limited (429), gave up after 3 attempts"
    assert result.bars == 3 and clock.sleeps == [1.0, 2.0]  # BTC/USD still filled
    assert [r[0] for r in stored(fresh_dsn)] == ["BTC/USD"] * 3
    filler.stop()


def test_refused_key_fails_the_gap_without_leaking_it(feed: FeedServer, conn: Any, fresh_dsn: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    gap = get_gap(conn, record_gap(conn, "crypto", T0, T0 + timedelta(minutes=3), "worker down") or 0)
    assert gap is not None
    wrong = "wr0ng-KEY-777"
    filler = make(fresh_dsn, feed, ["ETH/USD", "BTC/USD"], FakeClock(), api_key=wrong)
    filler.submit(gap)
    [result] = filler.run_pending()
    assert result.status.startswith("failed: API key refused (401)") and result.requests == 1
    assert wrong not in result.status and wrong not in caplog.text
    filler.stop()


def test_credit_limit_is_honoured_without_sleeping(feed: FeedServer, conn: Any, fresh_dsn: str) -> None:
    symbols = ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "ADA/USD", "DOGE/USD", "LTC/USD"]
    gap = get_gap(conn, record_gap(conn, "crypto", T0, T0 + timedelta(minutes=2), "worker down") or 0)
    assert gap is not None
    clock = FakeClock()
    filler = make(fresh_dsn, feed, symbols, clock, rate_limit_per_minute=3)
    filler.submit(gap)
    [result] = filler.run_pending()
    assert clock.sleeps == [60.0, 60.0] and clock.now == 1120.0  # 3 at once, 3 a minute later, then 1
    assert result.status == "done" and result.bars == 14 and feed.rest.counts()["/time_series"] == 7
    filler.stop()


def test_credit_limiter_window() -> None:
    limiter = CreditLimiter(2)
    assert limiter.delay(0.0) == 0.0
    limiter.record(0.0)
    limiter.record(10.0)
    assert limiter.delay(30.0) == 30.0  # the oldest leaves the window at 60
    assert limiter.delay(60.0) == 0.0
    limiter.record(60.0)
    assert limiter.delay(61.0) == 9.0
    with pytest.raises(ValueError):
        CreditLimiter(0)


def test_unsettled_gap_waits_then_runs(feed: FeedServer, conn: Any, fresh_dsn: str) -> None:
    end = T0 + timedelta(minutes=4, seconds=20)
    gap = get_gap(conn, record_gap(conn, "crypto", T0, end, "disconnected: reset") or 0)
    assert gap is not None
    now = [end + timedelta(seconds=10)]  # the 12:04 bar is still forming
    filler = make(fresh_dsn, feed, ["BTC/USD"], FakeClock(), wall=lambda: now[0])
    filler.submit(gap)
    assert filler.run_pending() == [] and filler.queued() == 1 and "/time_series" not in feed.rest.counts()
    now[0] = T0 + timedelta(minutes=5, seconds=6)  # 12:04 ended, plus the 5 s settle
    [result] = filler.run_pending()
    assert result.bars == 5 and filler.queued() == 0
    filler.stop()


@pytest.mark.skipif("FAKETIME" in os.environ, reason="under libfaketime threading.Event.wait(timeout) never times "
                    "out (it fakes CLOCK_MONOTONIC, not sem_clockwait), so the rescan timer never fires; the "
                    "test's data is relative to now and passes at any real hour")
def test_thread_records_reported_gaps_resumes_and_rescans(feed: FeedServer, conn: Any, fresh_dsn: str) -> None:
    base = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
    leftover = record_gap(conn, "crypto", base, base + timedelta(minutes=3), "worker down")  # never backfilled
    record_gap(conn, "other", base, base + timedelta(minutes=3), "worker down")  # another shard's
    filler = Backfiller(fresh_dsn, "crypto", ["SOL/USD"], rest_url=feed.rest_url, api_key=KEY, threshold=120)
    filler.start(rescan=0.2)
    try:
        reported = base + timedelta(hours=1)
        filler.report_gap(reported, reported + timedelta(minutes=2, seconds=30), "disconnected: closed (1006)")
        wait_until(lambda: len(filler.results) == 2, timeout=10, what="resumed and reported gaps backfilled")
        later = base + timedelta(hours=2)  # recorded meanwhile by someone else (the supervisor): a rescan finds it
        record_gap(conn, "crypto", later, later + timedelta(minutes=3), "worker down")
        wait_until(lambda: len(filler.results) == 3, timeout=10, what="rescanned gap backfilled")
    finally:
        assert filler.stop(timeout=5)
    mine = list_gaps(conn, "crypto")
    assert mine[0].id == leftover and [g.reason for g in mine][1] == "disconnected: closed (1006)"
    assert [(g.backfill_status, g.backfilled_bars) for g in mine] == [("done", 3)] * 3
    assert [g.backfill_status for g in list_gaps(conn, "other")] == [None]
    assert len(filler.results) == 3 and feed.rest.counts()["/time_series"] == 3  # each gap fetched once


def test_resume_finds_unfinished_gaps_only(feed: FeedServer, conn: Any, fresh_dsn: str) -> None:
    for i, status in enumerate([None, "pending", "done", "failed: x", "skipped: shorter than threshold"]):
        gap_id = record_gap(conn, "crypto", T0 + timedelta(hours=i), T0 + timedelta(hours=i, minutes=3), "down")
        if status is not None:
            set_backfill_status(conn, gap_id or 0, status)
    filler = make(fresh_dsn, feed, ["BTC/USD"], FakeClock())
    assert filler.resume(since=timedelta(days=100_000)) == 2 and filler.queued() == 2
    assert filler.resume(since=timedelta(days=100_000)) == 2 and filler.queued() == 2  # not queued twice
    assert filler.resume() == 0  # default: only gaps that ended within a day
    filler.stop()


def test_a_thread_failure_is_kept_for_the_worker_to_report(feed: FeedServer, fresh_dsn: str) -> None:
    class Broken(Backfiller):
        def run_pending(self) -> list:
            raise RuntimeError("a bug in backfill")

    filler = Broken(fresh_dsn, "crypto", ["SOL/USD"], rest_url=feed.rest_url, api_key=KEY, threshold=120)
    filler.start(resume=False, rescan=None)
    try:
        wait_until(lambda: filler.failure is not None, timeout=10, what="the failure")
        assert filler.failure == "RuntimeError: a bug in backfill"
        assert filler.stop(timeout=5), "the thread has ended"
    finally:
        filler.stop(timeout=5)
