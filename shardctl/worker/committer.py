"""The worker's writer thread: batches go to the database in order, each exactly once, through outages.

A batch is identified by its journal end offset (``seq``): the Writer commits
the rows together with that offset in the ledger and skips a batch whose
offset is already committed, so a batch retried after an ambiguous failure,
or replayed after a crash, is never written twice. The thread retries the
same batch with capped backoff while the database is away; ``submit`` never
blocks: the worker asks ``has_room`` first and, when there is none, stops
handing over rows and leaves them in the journal (memory stays bounded).
Side tasks (gap records) go through the same thread and the same retries.

A database that went back in time (the Writer raises ``LedgerRolledBack``:
its ledger is below what this writer saw committed) pauses the thread with
``rolled_back`` set; the worker lines its journal up with the older ledger and
calls ``resume_after_rollback``, which drops every queued batch (their rows
are read again from the journal) and goes on.
"""

from __future__ import annotations

import array
import collections
import functools
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Protocol, Sequence

from shardctl.backoff import Backoff
from shardctl.crashpoints import NO_CRASHES, CrashPoints
from shardctl.db.writer import LedgerPosition
from shardctl.errors import DatabaseError, DatabaseUnavailable, LedgerRolledBack, ShardFenced
from shardctl.rows import Tick

log = logging.getLogger("shardctl.committer")


class BatchWriter(Protocol):
    """What the committer needs of the database (``shardctl.db.writer.Writer``)."""

    known_offset: int

    def ledger_position(self) -> LedgerPosition: ...
    def write(self, seq: int, rows: Sequence[Tick], *, journal_offset: int | None = None,
              received_at: datetime | None = None) -> bool: ...
    def record_gap(self, gap_from: datetime, gap_to: datetime, reason: str) -> None: ...
    def upsert_assets(self, names: Mapping[str, str | None]) -> None: ...
    def close(self) -> None: ...


@dataclass
class CommitStats:
    rows_written: int = 0
    batches: int = 0
    batch_seconds_sum: float = 0.0
    batch_seconds_max: float = 0.0
    skipped_batches: int = 0
    db_retries: int = 0
    last_error: str | None = None
    #: end offset of the last committed batch
    committed_offset: int = 0


@dataclass
class _Batch:
    rows: list[Tick]
    seq: int
    arrivals: list[float] | None = None
    #: Wall-clock receive time of the batch's last tick (cluster mode: a successor's gap starts there).
    received_at: datetime | None = None


Task = Callable[["BatchWriter"], object]
#: What ``_retrying`` returns when it gave up because the committer is closing.
_ABANDONED = object()
#: A side task (gap, asset names) failing this often with a non-connection error is dropped, logged.
TASK_ATTEMPTS = 5
#: The longest wait between two tries of a failing write: writes resume at most this long after the
#: database answers again. A connection attempt every 2 s costs a down server nothing worth saving.
RETRY_MAX = 2.0


class LatencyLog:
    """Appends, per committed batch, each row's receive-to-commit latency in seconds (float32, native order).

    For benchmarks only (``SHARDCTL_LATENCY_LOG``): the worker then records a
    monotonic arrival time per tick.
    """

    def __init__(self, path: Path) -> None:
        self._file: BinaryIO = open(path, "ab")

    def record(self, committed_at: float, arrivals: Sequence[float]) -> None:
        array.array("f", (committed_at - a for a in arrivals)).tofile(self._file)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Committer:
    """Owns a Writer and a thread that commits submitted batches (and tasks) in order."""

    def __init__(self, writer: BatchWriter, *, max_pending_rows: int,
                 on_committed: Callable[[int], None] | None = None, retry_initial: float = 0.25,
                 retry_max: float = RETRY_MAX, latency_log: LatencyLog | None = None,
                 crash_points: CrashPoints = NO_CRASHES) -> None:
        self._writer = writer
        self._crash_points = crash_points
        self._on_committed = on_committed
        self._latency_log = latency_log
        self.max_pending_rows = max(1, max_pending_rows)
        self._queue: collections.deque[_Batch | Task] = collections.deque()
        self._cond = threading.Condition()
        self._pending_rows = 0
        self._closing = False
        self._abandon = threading.Event()
        self._backoff = Backoff(retry_initial, retry_max, reset_after=retry_max)
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self.stats = CommitStats()
        #: Set when the thread died of an unexpected error; the worker must then exit (and replay).
        self.failure: str | None = None
        #: Set when the database said the shard's lease is another host's: nothing more is committed.
        self.fenced: str | None = None
        #: Set when the database went back in time; the thread waits for ``resume_after_rollback``.
        self.rolled_back: LedgerRolledBack | None = None
        self._resumed = threading.Event()

    @property
    def pending_rows(self) -> int:
        """Rows submitted but not yet committed."""
        return self._pending_rows

    def has_room(self, rows: int = 0) -> bool:
        """True when ``rows`` more can be queued without passing ``max_pending_rows``."""
        return self._pending_rows + rows <= self.max_pending_rows

    def committed_base(self) -> LedgerPosition:
        """The ledger's committed journal offset and receive time; raises DatabaseUnavailable/DatabaseError.

        Call before ``start`` (it uses the writer from the caller's thread).
        """
        position = self._writer.ledger_position()
        self.stats.committed_offset = position.offset
        return position

    def resume_after_rollback(self, offset: int) -> None:
        """The worker re-reads its journal after ``offset`` (the older ledger's): drop every queued batch, go on."""
        with self._cond:
            self._queue = collections.deque(item for item in self._queue if not isinstance(item, _Batch))
            self._pending_rows = 0
            self._writer.known_offset = offset
            self.stats.committed_offset = offset
            self.rolled_back = None
            self._resumed.set()
            self._cond.notify_all()

    def start(self) -> None:
        self._thread.start()

    def submit(self, rows: list[Tick], seq: int, *, arrivals: list[float] | None = None,
               received_at: datetime | None = None) -> None:
        """Queue a batch whose rows come from journal records up to offset ``seq``; never blocks."""
        with self._cond:
            self._queue.append(_Batch(rows, seq, arrivals, received_at))
            self._pending_rows += len(rows)
            self._cond.notify_all()

    def run_task(self, task: Task) -> None:
        """Queue ``task(writer)`` to run in order with the batches, retried like them."""
        with self._cond:
            self._queue.append(task)
            self._cond.notify_all()

    def drain(self, deadline: float) -> bool:
        """Wait until everything queued is done or ``deadline`` (monotonic) passes; True if all is.

        Returns at once (False) when the thread cannot go on: it failed, it is fenced, or it waits for the
        worker to line its journal up after a rollback.
        """
        with self._cond:
            while (self._queue and self.failure is None and self.fenced is None and self.rolled_back is None
                   and time.monotonic() < deadline):
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            return not self._queue

    def close(self) -> None:
        """Stop the thread (abandoning a retry in progress) and close the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._abandon.set()
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():
            log.error("the writer thread is stuck in a database call; leaving its connection to the OS")
        else:
            self._writer.close()
        if self._latency_log is not None:
            self._latency_log.close()

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        try:
            self._loop()
        except ShardFenced as exc:  # the lease moved on: this thread commits nothing more, ever
            self.fenced = str(exc)
            log.error("%s", exc)
            with self._cond:
                self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported to the worker, which exits and replays
            self.failure = f"{type(exc).__name__}: {exc}"
            log.critical("the writer thread failed: %s", self.failure, exc_info=True)
            with self._cond:
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or self._abandon.is_set():
                    return
                item = self._queue[0]
            if isinstance(item, _Batch):
                if not self._commit(item):
                    return
                if not self._queue or self._queue[0] is not item:
                    continue  # dropped by resume_after_rollback
            elif self._retrying(functools.partial(item, self._writer), self._abandon,
                                give_up_after=TASK_ATTEMPTS) is _ABANDONED:
                return
            with self._cond:
                self._queue.popleft()
                if isinstance(item, _Batch):
                    self._pending_rows -= len(item.rows)
                self._cond.notify_all()

    def _commit(self, batch: _Batch) -> bool:
        started = time.monotonic()
        try:
            written = self._retrying(lambda: self._writer.write(batch.seq, batch.rows, journal_offset=batch.seq,
                                                                received_at=batch.received_at), self._abandon)
        except LedgerRolledBack as exc:
            log.error("%s", exc)
            self._resumed.clear()
            with self._cond:
                self.rolled_back = exc
                self._cond.notify_all()
            while not self._resumed.wait(0.1):
                if self._abandon.is_set():
                    return False
            return True  # the queue was replaced: the batch is gone, and no longer at its head
        if written is _ABANDONED:
            return False
        committed_at = time.monotonic()
        self._crash_points.reach("after_commit")
        stats = self.stats
        if written:
            elapsed = committed_at - started
            stats.rows_written += len(batch.rows)
            stats.batches += 1
            stats.batch_seconds_sum += elapsed
            stats.batch_seconds_max = max(stats.batch_seconds_max, elapsed)
            if self._latency_log is not None and batch.arrivals:
                self._latency_log.record(committed_at, batch.arrivals)
        else:
            stats.skipped_batches += 1
            log.warning("batch ending at journal offset %d was already committed; not written again", batch.seq)
        stats.committed_offset = batch.seq
        if self._on_committed is not None:
            self._on_committed(batch.seq)
        return True

    def _retrying(self, action: Callable[[], object], stop: threading.Event, *,
                  give_up_after: int | None = None) -> object:
        """Run ``action`` until it succeeds and return its result; ``_ABANDONED`` if ``stop`` is set first.

        Batches are retried for as long as it takes (the operator fixes rights or
        space; ``last_error`` shows why). With ``give_up_after``, an action that
        fails that often with an error other than "unavailable" is dropped (None).
        """
        failing_since: float | None = None
        refusals = 0
        while not stop.is_set():
            try:
                result = action()
            except DatabaseError as exc:
                if not isinstance(exc, DatabaseUnavailable):
                    refusals += 1
                    if give_up_after is not None and refusals >= give_up_after:
                        log.error("giving up on a side task after %d refusals: %s", refusals, exc)
                        return None
                now = time.monotonic()
                delay = self._backoff.failed(now)
                self.stats.db_retries += 1
                self.stats.last_error = str(exc)
                if failing_since is None:
                    failing_since = now
                    log.error("database write failed: %s; the journal keeps every tick, retrying", exc)
                else:
                    log.warning("database still failing after %.0fs (%s); next try in %.1fs",
                                now - failing_since, exc, delay)
                stop.wait(delay)
                continue
            if failing_since is not None:
                log.info("database is back after %.1fs; resuming writes", time.monotonic() - failing_since)
                self.stats.last_error = None
            self._backoff.succeeded(time.monotonic())
            return result
        return _ABANDONED
