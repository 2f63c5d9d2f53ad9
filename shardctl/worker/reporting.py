"""A worker's ``WorkerReport``, put together from the parts that know each figure."""

from __future__ import annotations

import time
from dataclasses import dataclass

from shardctl.journal.deadletters import DeadLetters
from shardctl.journal.journal import Journal
from shardctl.journal.space import free_bytes
from shardctl.logs import mask_secrets
from shardctl.report import Counters, SymbolFreshness, WorkerReport
from shardctl.twelvedata.stream import StreamClient
from shardctl.worker.backfill import Backfiller
from shardctl.worker.committer import Committer
from shardctl.worker.readgate import ReadGate


@dataclass(frozen=True, slots=True)
class ReportParts:
    """What only the worker's loop knows. ``last_tick_at`` is monotonic."""

    ticks_received: int
    other_events: int
    last_tick_at: float | None
    last_event_ts: int | None
    live: bool
    batched_rows: int
    rollbacks: int = 0
    last_rollback: str | None = None


def worker_report(parts: ReportParts, committer: Committer, journal: Journal, stream: StreamClient,
                  dead: DeadLetters, gate: ReadGate, backfill: Backfiller | None,
                  freshness: tuple[SymbolFreshness, ...] | None, stale_after: float) -> WorkerReport:
    """The report now: cumulative counters, gauges, and the one error that matters most, masked.

    The error is, in order: a full disk, a fence (another host holds the lease), the database's
    last error, the stream's while it is disconnected, a failed backfill thread.
    """
    commit = committer.stats
    oldest = journal.oldest_uncommitted_received_at
    backfill_failure = None if backfill is None or backfill.failure is None \
        else f"backfill stopped: {backfill.failure}"
    disk_error = gate.disk_error
    last_error = (str(disk_error) if disk_error is not None else committer.fenced or commit.last_error
                  or (None if stream.connected else stream.last_error) or backfill_failure)
    now, mono = time.time(), time.monotonic()
    return WorkerReport(
        counters=Counters(
            ticks_received=parts.ticks_received,
            rows_written=commit.rows_written,
            batches=commit.batches,
            batch_seconds_sum=round(commit.batch_seconds_sum, 6),
            reconnects=stream.reconnects,
            dead_letters=dead.count,
            dead_letters_dropped=dead.dropped,
            journal_dropped=journal.dropped_records,
            other_events=parts.other_events,
            database_rollbacks=parts.rollbacks,
        ),
        batch_seconds_max=round(commit.batch_seconds_max, 6),
        pending_rows=parts.batched_rows + committer.pending_rows,
        connected=stream.connected,
        subscribed=stream.subscribed,
        catching_up=not parts.live,
        failed_symbols=tuple(sorted(stream.failed_symbols)),
        journal_bytes=journal.size_bytes,
        journal_backlog=journal.backlog_records,
        journal_full=journal.full,
        disk_full=disk_error is not None,
        disk_free_bytes=free_bytes(journal.directory),
        seconds_behind=0.0 if oldest is None else round(max(0.0, now - oldest), 3),
        last_tick_at=None if parts.last_tick_at is None else now - (mono - parts.last_tick_at),
        last_event_ts=parts.last_event_ts,
        last_error=mask_secrets(last_error) if last_error else None,
        last_rollback=parts.last_rollback,
        freshness=freshness,
        stale_after=stale_after,
    )
