"""Filling recorded gaps with one-minute bars from Twelve Data's REST ``time_series``.

``Backfiller`` serves one shard and never blocks the live stream: ``submit``/``report_gap`` only
queue (no database, no network); the work runs in its own daemon thread (``start``/``stop``) or
in whichever thread calls ``run_pending`` (tests, or ``asyncio.to_thread(backfiller.run_pending)``).

Per gap: shorter than ``threshold`` s → ``skipped: shorter than threshold``. Otherwise, once its
last minute has ended (plus ``settle`` s: a forming bar is never stored), it is marked ``pending``;
for each symbol the bars of every minute it touches are fetched through the ``twelvedata`` package
(``time_series(symbol, interval="1min", start_date, end_date, timezone="UTC", outputsize=5000,
dp=dp, order="asc")``, windows of 4,999 minutes: the package's outputsize=30 and dp=5 can neither
cut nor round), upserted into ``shardctl_bars`` (``source='rest'``), and the gap set to ``done``
with ``backfilled_bars``, or ``failed: <why>`` (bars already stored are kept and counted).

At most ``rate_limit_per_minute`` requests go in any 60 s (``CreditLimiter``). A 429, 5xx or
network error is retried after a capped, jittered ``Backoff`` delay, at most ``max_attempts``
times per request; "No data is available" (a closed market) is zero bars. The API key never
reaches a URL (it goes in the ``Authorization: apikey`` header), so neither urllib3's debug lines
nor exception texts carry it; error texts are masked anyway. ``TDClient`` (whose construction is
a blocking request) is built on the first request only.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Sequence

import requests
from psycopg2.extensions import connection as Connection

from shardctl.backoff import Backoff
from shardctl.db import gaps
from shardctl.db.connection import connect
from shardctl.errors import DatabaseUnavailable, ShardctlError
from shardctl.logs import mask_secrets
from shardctl.twelvedata.rest import RestCallError, rest_client

__all__ = ["Backfiller", "BackfillResult", "CreditLimiter", "RestCallError", "RestUnavailable", "WINDOW_MINUTES"]

log = logging.getLogger("shardctl.backfill")

MAX_OUTPUTSIZE = 5000
#: Minutes per request: one less than ``outputsize`` so an inclusive ``end_date`` cannot truncate.
WINDOW_MINUTES = MAX_OUTPUTSIZE - 1
_IDLE_WAIT = 60.0
_DB_RETRY = 30.0


class CreditLimiter:
    """At most ``per_minute`` requests in any ``window`` seconds (a sliding log); pure, ``now`` passed in.

    Not a token bucket of ``per_minute`` tokens: that one may spend nearly
    twice its rate inside one minute (a full bucket plus a minute of refill),
    which Twelve Data's per-minute credit count answers with 429.
    """

    def __init__(self, per_minute: int, window: float = 60.0) -> None:
        if per_minute < 1:
            raise ValueError(f"rate_limit_per_minute must be at least 1, got {per_minute}")
        self.per_minute, self.window = int(per_minute), window
        self._sent: collections.deque[float] = collections.deque()

    def delay(self, now: float) -> float:
        """Seconds to wait from ``now`` before the next request may go (0.0: go now)."""
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        if len(self._sent) < self.per_minute:
            return 0.0
        return self._sent[0] + self.window - now

    def record(self, now: float) -> None:
        """Count a request sent at ``now``."""
        self._sent.append(now)


@dataclass(frozen=True)
class BackfillResult:
    """What happened to one gap: its final ``status``, bars stored, HTTP requests made (retries included)."""

    gap_id: int
    status: str
    bars: int
    requests: int


@dataclass
class _Item:
    gap: gaps.Gap | None
    new: tuple[datetime, datetime, str] | None = None
    due: float = 0.0  # wall-clock Unix time before which the gap is not worked on


class RestUnavailable(ShardctlError):
    """``fetch_bars`` could not get a symbol's bars: refused, or failing after every retry (one masked line)."""


class _Stopped(Exception):
    """Raised inside a gap's work when ``stop`` was requested; the gap stays queued/pending."""


class _GaveUp(Exception):
    """A request kept failing (429, 5xx, network) ``max_attempts`` times."""


class Backfiller:
    """Backfills one shard's gaps from REST (see the module docstring for the promises).

    ``rest_url``: ``https://api.twelvedata.com`` or a local feed's ``rest_url``. ``clock``/``sleep``
    drive rate limiting and backoff (inject both: tests never sleep); ``wall`` decides settling.
    """

    def __init__(self, dsn: str, shard: str, symbols: Sequence[str], *, rest_url: str, api_key: str,
                 threshold: float = 120.0, rate_limit_per_minute: int = 8, dp: int = 10, settle: float = 5.0,
                 max_attempts: int = 6, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] | None = None,
                 wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        if not 0 <= dp <= 11:
            raise ValueError(f"dp must be 0-11, got {dp}")
        self.dsn, self.shard, self.symbols = dsn, shard, tuple(symbols)
        self.rest_url, self.threshold, self.dp, self.settle = rest_url.rstrip("/"), threshold, dp, settle
        self.max_attempts = max(1, max_attempts)
        self._api_key = api_key
        self.limiter = CreditLimiter(rate_limit_per_minute)
        self.backoff = backoff or Backoff(10.0, 60.0, jitter=0.2, reset_after=120.0)
        self._clock, self._wall = clock, wall
        self._stop, self._wake = threading.Event(), threading.Event()
        self._sleep = sleep or self._stop.wait
        self._lock, self._run_lock = threading.Lock(), threading.Lock()  # the queue; one run_pending at a time
        self._queue: list[_Item] = []
        self._conn: Connection | None = None
        self._td: Any = None  # the TDClient, built on first use
        self._thread: threading.Thread | None = None
        self.requests = 0  #: HTTP requests made (retries included)
        self.results: list[BackfillResult] = []  #: every finished gap, oldest first
        #: Why the thread ended unexpectedly (a bug): set once, the worker reports it; None while it runs.
        self.failure: str | None = None

    def submit(self, gap: gaps.Gap) -> None:
        """Queue a recorded gap for backfill; returns at once."""
        self._push(_Item(gap))

    def report_gap(self, gap_from: datetime, gap_to: datetime, reason: str) -> None:
        """Queue a gap that is not recorded yet: the backfiller's thread records it, then backfills it."""
        self._push(_Item(None, (gap_from, gap_to, reason)))

    def _push(self, item: _Item) -> None:
        with self._lock:
            if item.gap is not None and any(q.gap is not None and q.gap.id == item.gap.id for q in self._queue):
                return  # already queued (a rescan found it again)
            self._queue.append(item)
        self._wake.set()  # the thread (if any) looks at the queue now

    def queued(self) -> int:
        """How many gaps wait (including those not yet settled)."""
        with self._lock:
            return len(self._queue)

    def resume(self, since: timedelta = timedelta(days=1)) -> int:
        """Queue this shard's gaps ending within ``since`` that were never finished (status NULL or pending).

        Reads the database (blocking): call it before the stream starts, or let ``start()`` do it.
        """
        found = gaps.list_gaps(self._db(), self.shard, since, statuses=[None, gaps.STATUS_PENDING])
        for gap in found:
            self.submit(gap)
        return len(found)

    def start(self, *, resume: bool = True, rescan: float | None = 60.0) -> Backfiller:
        """Run ``run_pending`` in a daemon thread whenever gaps are due.

        With ``resume`` it first calls ``resume()``; then every ``rescan`` seconds (None: never) it
        calls it again, so gaps recorded by others (the supervisor's "worker down") get backfilled.
        """
        if self._thread is not None:
            raise RuntimeError("Backfiller already started")
        self._thread = threading.Thread(target=self._loop, args=(resume, rescan), daemon=True,
                                        name=f"backfill-{self.shard}")
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread and close the connection; True if the thread ended within ``timeout``.

        Waits (rate limit, backoff) end at once; a request in flight may take
        up to its 30 s HTTP timeout, in which case the daemon thread is left
        behind (False). A gap interrupted midway stays ``pending`` and is
        picked up by the next ``resume()``.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        ended = self._thread is None or not self._thread.is_alive()
        if ended:
            self._close_db()
        return ended

    def _loop(self, resume: bool, rescan: float | None) -> None:
        next_scan = time.monotonic() + (0.0 if resume else rescan if rescan is not None else math.inf)
        while not self._stop.is_set():
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + (rescan if rescan is not None else math.inf)
                try:
                    self.resume()
                except ShardctlError as exc:
                    log.warning("backfill: cannot look for unfinished gaps: %s", self._mask(str(exc)))
            try:
                self.run_pending()
            except Exception as exc:  # a bug: reported to the worker, which goes on streaming
                self.failure = self._mask(f"{type(exc).__name__}: {exc}")
                log.critical("the backfill thread failed: %s; gaps stay recorded for the next worker",
                             self.failure, exc_info=True)
                return
            with self._lock:
                dues = [item.due - self._wall().timestamp() for item in self._queue]
            self._wake.wait(max(0.05, min([_IDLE_WAIT, next_scan - time.monotonic(), *dues])))
            self._wake.clear()

    def run_pending(self) -> list[BackfillResult]:
        """Work through every queued gap that is due, in the calling thread; return their results.

        Blocks for rate limits, backoff and HTTP. Gaps not settled yet, or whose
        database work failed because the database is unreachable, stay queued.
        """
        with self._run_lock:
            with self._lock:
                items, self._queue = self._queue, []
            later: list[_Item] = []
            results: list[BackfillResult] = []
            for item in items:
                if self._stop.is_set() or item.due > self._wall().timestamp():
                    later.append(item)
                    continue
                try:
                    result = self._work(item)
                except _Stopped:
                    result = None
                except DatabaseUnavailable as exc:
                    log.warning("backfill: %s; retrying in %.0fs", self._mask(str(exc)), _DB_RETRY)
                    self._close_db()
                    item.due, result = self._wall().timestamp() + _DB_RETRY, None
                except ShardctlError as exc:  # the database refused: the gap stays recorded, not retried
                    log.error("backfill: %s", self._mask(str(exc)))
                    continue
                if result is None:
                    later.append(item)
                else:
                    results.append(result)
            with self._lock:
                self._queue[:0] = later
            self.results.extend(results)
            return results

    def _work(self, item: _Item) -> BackfillResult | None:
        """Backfill one gap; None when it has not settled yet (``item.due`` is then set)."""
        if item.gap is None:
            assert item.new is not None
            gap_id = gaps.record_gap(self._db(), self.shard, *item.new)
            if gap_id is None:
                return BackfillResult(0, "ignored: empty gap", 0, 0)
            item.gap = gaps.get_gap(self._db(), gap_id)
            assert item.gap is not None
        gap = item.gap
        if gap.duration.total_seconds() < self.threshold:
            gaps.set_backfill_status(self._db(), gap.id, gaps.STATUS_SKIPPED)
            log.info("backfill: gap %d (%.0fs) is shorter than %gs: skipped", gap.id,
                     gap.duration.total_seconds(), self.threshold)
            return BackfillResult(gap.id, gaps.STATUS_SKIPPED, 0, 0)
        first = int(gap.gap_from.timestamp() // 60)
        last = -int(-gap.gap_to.timestamp() // 60) - 1  # the last minute starting before gap_to
        settled_at = (last + 1) * 60 + self.settle
        if self._wall().timestamp() < settled_at:
            item.due = settled_at
            return None
        gaps.set_backfill_status(self._db(), gap.id, gaps.STATUS_PENDING)
        before = self.requests
        total, failures = 0, []
        for text in self.symbols:
            try:
                total += self._fill_symbol(text, first, last)
            except RestCallError as exc:
                failures.append(f"{text}: {exc.code} {exc}")
                if exc.code == 401:
                    failures[-1] = f"API key refused (401): {exc}"
                    break
            except _GaveUp as exc:
                failures.append(f"{text}: {exc}")
        status = gaps.STATUS_DONE if not failures else self._mask("failed: " + "; ".join(failures))[:300]
        gaps.set_backfill_status(self._db(), gap.id, status, total)
        log.info("backfill: gap %d (%s, %s): %s, %d bar(s) for %d symbol(s) in %d request(s)", gap.id,
                 gap.reason, gaps.format_duration(gap.duration), status, total, len(self.symbols),
                 self.requests - before)
        return BackfillResult(gap.id, status, total, self.requests - before)

    def _fill_symbol(self, text: str, first: int, last: int) -> int:
        """Fetch and store the bars of minutes ``first..last`` for one symbol; return how many were stored."""
        stored = 0
        for bars in self._bar_windows(text, first, last):
            stored += gaps.upsert_bars(self._db(), bars) if bars else 0
        return stored

    def _bar_windows(self, text: str, first: int, last: int) -> Iterator[list[gaps.BarRow]]:
        """The bars of minutes ``first..last`` of ``SYMBOL[:EXCHANGE]``, one request window at a time."""
        symbol, _, exchange = (part.strip() for part in text.partition(":"))
        for start in range(first, last + 1, WINDOW_MINUTES):
            end = min(start + WINDOW_MINUTES, last + 1)
            bars = []
            for row in self._fetch(symbol, exchange, start, end):
                bar = gaps.bar_row(symbol, row)
                if bar is not None and start * 60 <= bar[1].timestamp() < end * 60:
                    bars.append(bar)
            yield bars

    def fetch_bars(self, text: str, first: int, last: int) -> list[gaps.BarRow]:
        """REST's one-minute bars of minutes ``first..last`` (minute numbers) for ``SYMBOL[:EXCHANGE]``; stores nothing.

        Goes through this backfiller's credit limiter and retries (blocking, in the
        calling thread). Raises ``RestUnavailable`` when REST refuses or keeps failing.
        """
        try:
            return [bar for bars in self._bar_windows(text, first, last) for bar in bars]
        except RestCallError as exc:
            raise RestUnavailable(self._mask(f"{text}: Twelve Data refused time_series: {exc.code} {exc}")[:300]) \
                from None
        except _GaveUp as exc:
            raise RestUnavailable(self._mask(f"{text}: time_series: {exc}")[:300]) from None

    def _fetch(self, symbol: str, exchange: str, start: int, end: int) -> Sequence[dict[str, Any]]:
        """One window's rows, after the credit limiter, retrying 429s and transient failures with backoff."""
        params: dict[str, Any] = {
            "symbol": symbol, "interval": "1min", "timezone": "UTC", "outputsize": MAX_OUTPUTSIZE, "dp": self.dp,
            "order": "asc", "start_date": _stamp(start), "end_date": _stamp(end)}
        if exchange:
            params["exchange"] = exchange
        for attempt in range(1, self.max_attempts + 1):
            self._wait(self.limiter.delay(self._clock()))
            self.limiter.record(self._clock())
            self.requests += 1
            try:
                rows = self._client().time_series(**params).as_json()
                self.backoff.succeeded(self._clock())
                return rows if isinstance(rows, (list, tuple)) else ()
            except RestCallError as exc:
                if exc.code == 400 and "no data is available" in str(exc).lower():
                    return ()
                if exc.code != 429 and exc.code < 500:
                    raise
                why = "rate limited (429)" if exc.code == 429 else f"server error {exc.code}"
            except (requests.RequestException, ValueError) as exc:
                why = f"request failed: {type(exc).__name__}: {self._mask(str(exc))[:200]}"
            if attempt == self.max_attempts:
                raise _GaveUp(f"{why}, gave up after {attempt} attempts")
            delay = self.backoff.failed(self._clock())
            log.warning("backfill: %s %s; retry %d/%d in %.1fs", symbol, why, attempt, self.max_attempts - 1,
                        delay)
            self._wait(delay)
        raise AssertionError("unreachable")

    def _wait(self, seconds: float) -> None:
        if seconds > 0 and not self._stop.is_set():
            self._sleep(seconds)
        if self._stop.is_set():
            raise _Stopped()

    def _client(self) -> Any:
        if self._td is None:  # TDClient() makes a blocking HTTP request: build it only when needed
            self._td = rest_client(self.rest_url, self._api_key)
        return self._td

    def _db(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, application_name=f"shardctl-backfill-{self.shard}")
            gaps.ensure_gap_tables(self._conn)
        return self._conn

    def _close_db(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.close()

    def _mask(self, text: str) -> str:
        text = mask_secrets(text)
        return text.replace(self._api_key, "***") if self._api_key else text


def _stamp(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
