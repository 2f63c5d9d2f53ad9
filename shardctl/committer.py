"""The worker's writer thread: batches go to the database in order, each exactly once, through outages.

``submit`` hands a batch over (blocking while ``max_pending_rows`` wait, so
memory stays bounded); the thread numbers each batch when it first takes
it, writes it with ``Writer.write`` and retries the same numbered batch with
capped backoff while the database is away, so an ambiguous commit is never
written twice. ``drain(deadline)`` waits for everything submitted.
"""

from __future__ import annotations

import array
import collections
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, Sequence

from shardctl.backoff import Backoff
from shardctl.errors import DatabaseError, DatabaseUnavailable

log = logging.getLogger("shardctl.committer")


class BatchWriter(Protocol):
    def last_committed(self) -> int: ...
    def write(self, seq: int, rows: Sequence[tuple], *, journal_offset: int | None = None) -> bool: ...
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
    #: monotonic time the last batch committed, and when its oldest row was received
    last_commit_at: float | None = None
    last_commit_oldest_at: float | None = None


@dataclass
class _Batch:
    rows: list[tuple]
    oldest_at: float
    seq: int | None = None
    arrivals: list[float] | None = None


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
    """Owns a Writer and a thread that commits submitted batches in order."""

    def __init__(self, writer: BatchWriter, *, max_pending_rows: int, retry_initial: float = 0.5,
                 retry_max: float = 30.0, latency_log: LatencyLog | None = None) -> None:
        self._writer = writer
        self._latency_log = latency_log
        self._max_pending = max(1, max_pending_rows)
        self._queue: collections.deque[_Batch] = collections.deque()
        self._cond = threading.Condition()
        self._pending_rows = 0
        self._in_flight = 0
        self._closing = False
        self._abandon = threading.Event()
        self._backoff = Backoff(retry_initial, retry_max, reset_after=retry_max)
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self.stats = CommitStats()

    @property
    def pending_rows(self) -> int:
        """Rows submitted but not yet committed."""
        return self._pending_rows

    def start(self) -> None:
        self._thread.start()

    def submit(self, rows: list[tuple], oldest_at: float, *, stop: threading.Event | None = None,
               force: bool = False, arrivals: list[float] | None = None) -> bool:
        """Queue a batch; blocks while the queue is full unless ``force``.

        Returns False (the batch is NOT queued) only if ``stop`` was set while waiting.
        """
        with self._cond:
            while (not force and self._pending_rows >= self._max_pending
                   and not (stop is not None and stop.is_set())):
                self._cond.wait(0.2)
            if not force and self._pending_rows >= self._max_pending:
                return False
            self._queue.append(_Batch(rows, oldest_at, arrivals=arrivals))
            self._pending_rows += len(rows)
            self._cond.notify_all()
        return True

    def drain(self, deadline: float) -> bool:
        """Wait until every submitted batch is committed or ``deadline`` (monotonic) passes; True if all are."""
        with self._cond:
            while self._pending_rows and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            return self._pending_rows == 0

    def close(self) -> None:
        """Stop the thread (abandoning retries in progress) and close the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._abandon.set()
        self._thread.join(timeout=5.0)
        self._writer.close()
        if self._latency_log is not None:
            self._latency_log.close()

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        next_seq: int | None = None
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._queue[0]
            if next_seq is None:
                next_seq = self._retrying(lambda: self._writer.last_committed() + 1)
                if next_seq is None:
                    return
            if batch.seq is None:
                batch.seq = next_seq
            started = time.monotonic()
            written = self._retrying(lambda: self._writer.write(batch.seq, batch.rows))
            if written is None:
                return
            committed_at = time.monotonic()
            elapsed = committed_at - started
            next_seq = batch.seq + 1
            if self._latency_log is not None and batch.arrivals:
                self._latency_log.record(committed_at, batch.arrivals)
            with self._cond:
                self._queue.popleft()
                self._pending_rows -= len(batch.rows)
                stats = self.stats
                if written:
                    stats.rows_written += len(batch.rows)
                    stats.batches += 1
                    stats.batch_seconds_sum += elapsed
                    stats.batch_seconds_max = max(stats.batch_seconds_max, elapsed)
                else:
                    stats.skipped_batches += 1
                    log.warning("batch %d was already committed (ledger); not written again", batch.seq)
                stats.last_commit_at = time.monotonic()
                stats.last_commit_oldest_at = batch.oldest_at
                self._cond.notify_all()

    def _retrying(self, action):  # type: ignore[no-untyped-def]
        """Run ``action`` until it succeeds; None if the committer is closed first."""
        failing_since: float | None = None
        while not self._abandon.is_set():
            try:
                result = action()
            except (DatabaseUnavailable, DatabaseError) as exc:
                now = time.monotonic()
                delay = self._backoff.failed(now)
                self.stats.db_retries += 1
                self.stats.last_error = str(exc)
                if failing_since is None:
                    failing_since = now
                    log.error("database write failed: %s; keeping the batch and retrying", exc)
                else:
                    log.warning("database still failing after %.0fs (%s); next try in %.1fs",
                                now - failing_since, exc, delay)
                self._abandon.wait(delay)
                continue
            if failing_since is not None:
                log.info("database is back after %.1fs; resuming writes", time.monotonic() - failing_since)
                self.stats.last_error = None
            self._backoff.succeeded(time.monotonic())
            return result
        return None
