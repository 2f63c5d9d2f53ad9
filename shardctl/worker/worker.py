"""One shard's worker process: stream → journal → parse → batch → commit.

``python -m shardctl.worker --config FILE --shard NAME``

Every frame read from the socket is appended to the shard's journal before
anything else happens to it; each batch commits with the journal offset it
reaches. At start the worker replays the journal from the ledger's offset
before it reads the socket. While the database is away the worker keeps
reading into the journal and holds no more rows in memory than the committer
queue allows; when the database returns it re-reads the backlog from the
journal in order, then goes live again. Disconnections, the stretch the
worker was down and frames dropped at the journal cap are recorded as gaps.

Every burst reaches the OS (``write(2)``) as soon as it is journaled, before
it is parsed (and again, if anything is left, before every read of the
socket), so a killed worker loses nothing it had read but the burst in hand;
the "worker down" gap starts at the last burst the journal holds (at its
receive time, or at its latest event time when the worker had fallen behind
its socket: ``startup.read_until``), so every tick a crash loses lies inside
it. A full disk is a state, not a crash: the worker stops reading the socket,
keeps writing the journal's backlog to the database (which gives the space
back), shows "disk full" in its stats, and resumes reading when its buffered
frames fit on the disk again.

The stop contract: on SIGTERM or SIGINT, or when the parent process goes
away, the worker says goodbye on the websocket (unsubscribe, close frame 1001)
and keeps reading and journaling what the server sent before its answering
close, for at most ``stop_drain``; then it commits what the database will take
within the shard's ``stop_timeout`` and exits 0; what the database could not
take stays in the journal for the next start. The phases, and the modes
while streaming (live, replaying, back-pressured, disk full), are one explicit
state machine (``shardctl.worker.lifecycle``).

The hot path works per burst: one read of the socket brings every frame the
kernel holds; they are masked, journaled, parsed, counted, fed to freshness
and batched together (``_read_socket``, ``_process``).

A database that goes back in time (its ledger behind what this worker, or its
journal's ``committed.mark``, saw committed: a failover to an asynchronous
standby, a restore) is found at start and by the first batch written after it
(``shardctl.worker.rollback``): the stretch is written again from the journal,
which keeps committed records for ``journal_retain``; what it no longer holds
becomes a gap. Logged as an ERROR, counted in ``database_rollbacks``. Exit 1
means the writer thread failed unexpectedly (the supervisor restarts the
worker, which replays its journal); exit 2 means the configuration is unusable.

On SIGHUP the worker re-reads its shard's symbols from the config file and
subscribes and unsubscribes on the open connection: no reconnect, no gap.
Any other change to the shard is refused there (the supervisor restarts it).

When ``SHARDCTL_REPORT_FD`` names an inherited pipe, the worker writes JSON
report lines to it for the supervisor (``shardctl.report``): a ``ReadyReport``
once subscribed, and a ``WorkerReport`` every second (which doubles as its heartbeat).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from typing import Callable

from shardctl.config.model import Config, ShardConfig
from shardctl.db.leases import Fence, LeaseStart
from shardctl.db.writer import LedgerPosition, ShardBusy, Writer
from shardctl.errors import (
    EXIT_FENCED,
    EXIT_OK,
    EXIT_RUNTIME,
    DatabaseError,
    LedgerRolledBack,
    ShardctlError,
    ShardFenced,
)
from shardctl.journal.deadletters import DeadLetters, dead_letter_path
from shardctl.journal.errors import JournalDiskFull
from shardctl.journal.journal import Journal
from shardctl.logs import mask_frames, registered_secrets
from shardctl.report import ReadyReport, WorkerReport
from shardctl.rows import Tick
from shardctl.twelvedata.frames import BINARY_FRAME_MARK
from shardctl.twelvedata.parse import FrameParser, Kind, Parsed, StatusEvent
from shardctl.twelvedata.stream import StreamClient
from shardctl.worker.backfill import Backfiller
from shardctl.worker.batcher import Batcher
from shardctl.worker.bookkeeping import Bookkeeper, OwedGap
from shardctl.worker.committer import Committer, LatencyLog
from shardctl.worker.lifecycle import Lifecycle, Mode, Phase
from shardctl.worker.offsets import JournalCursor
from shardctl.worker.process import Reporter
from shardctl.worker.readgate import ReadGate, ReadState
from shardctl.worker.reporting import ReportParts, worker_report
from shardctl.worker.rollback import ROLLBACK_REASON, Rollback, rewind_journal
from shardctl.worker.startup import Takeover, open_at_ledger, read_until
from shardctl.worker.switches import Switches
from shardctl.worker.symbols import ShardSymbols

log = logging.getLogger("shardctl.worker")

REPORT_INTERVAL = 1.0
#: Per-symbol freshness rides on every FRESHNESS_EVERY-th report (the first one included).
FRESHNESS_EVERY = 3
#: Journal records re-read per step while catching up.
CATCH_UP_CHUNK = 2000
_POLL_SLICE = 0.2
#: After a burst of fewer than SMALL_BURST frames the worker waits COALESCE before it reads again, so a
#: stream of a few thousand ticks a second costs a few hundred reads, not one per tick (its receive times
#: and commits move by at most that much; the socket buffers what comes meanwhile).
SMALL_BURST = 32
COALESCE = 0.002
_BLOCKED_SLICE = 0.01
#: How long a starting worker waits for another session to release the shard's writer lock.
SHARD_BUSY_WAIT = 10.0


class Worker:
    """Runs one shard until asked to stop; ``run`` returns the process exit code."""

    def __init__(self, config: Config, shard: ShardConfig, dsn: str, *, report_fd: int | None = None,
                 switches: Switches | None = None, fence: Fence | None = None,
                 on_stopping: Callable[[], None] | None = None) -> None:
        """``on_stopping``: called once the worker begins to stop (the shard lock tells successors)."""
        self._backfill_rescan = config.backfill.rescan_interval
        self.settings = s = shard.settings
        #: Set by signal handlers and the loop itself; a plain attribute, so a handler never takes a lock.
        self.stopping = False
        self._stop_reason = ""
        self._exit_code = EXIT_OK
        self._reporter = Reporter(report_fd)
        self._parser = FrameParser()
        self._batcher: Batcher[Tick] = Batcher(s.batch_size, s.flush_interval)
        shard_dir = config.shard_dir(shard.name)
        self._journal = Journal(shard_dir / "journal", segment_bytes=s.journal_segment_bytes,
                                max_bytes=s.journal_max_bytes, on_full=s.journal_on_full,
                                fsync=s.journal_fsync, retain=s.journal_retain)
        self._lifecycle = Lifecycle(min(s.stop_drain, s.stop_timeout / 2))
        self._on_stopping = on_stopping
        self.rollbacks = 0
        self._last_rollback: str | None = None
        switches = switches or Switches()
        latency_path = switches.latency_log
        #: Per-tick monotonic arrival times of the rows in the batcher, recorded only for benchmarks.
        self._arrivals: list[float] | None = [] if latency_path else None
        #: Cluster mode: the lease this worker was started under; every batch commits only while it holds.
        self._fence = fence
        self._lease: LeaseStart | None = None
        self._writer = Writer(dsn, config.tables, shard.name, pgcopy_encoder=switches.pgcopy_encoder,
                              crash_points=switches.crash_points, fence=fence,
                              direct_compress=config.timescaledb.direct_compress)
        #: Wall-clock receive time of the last tick parsed.
        self._parsed_received_at: float | None = None
        #: Event time of the last tick the last socket read brought (None: none, or it is not parsed yet).
        self._taken_event_at: datetime | None = None
        self._committer = Committer(
            self._writer,
            max_pending_rows=max(s.max_pending_rows, s.batch_size), on_committed=self._journal.commit,
            latency_log=LatencyLog(latency_path) if latency_path else None, crash_points=switches.crash_points)
        self._dead = DeadLetters(dead_letter_path(config, shard.name), s.dead_letter_log_interval,
                                 max_bytes=s.dead_letter_max_bytes)
        api_key = config.api_key(shard)
        if api_key is None:
            raise ShardctlError(f"no API key: export it in ${shard.api_key_env}")
        self._stream = StreamClient(config.source.url, api_key, shard.symbols, s,
                                    api_key_env=shard.api_key_env, on_subscribed=self._subscribed,
                                    before_recv=self._journal.write_buffered, read_until=self._events_read_until)
        self._cursor = JournalCursor()
        #: The configured secrets (registered by load_config), as they would appear in a frame.
        self._secrets = tuple(secret.encode() for secret in registered_secrets())
        self._ready_sent = False
        self._books = Bookkeeper(OwedGap(self._journal.directory))
        self._backfill = None if not config.backfill.enabled else Backfiller(
            dsn, shard.name, shard.symbols, rest_url=config.source.rest_url, api_key=api_key,
            threshold=config.backfill.min_gap, rate_limit_per_minute=config.backfill.credits_per_minute,
            dp=config.backfill.dp, settle=config.backfill.settle, max_attempts=config.backfill.max_attempts)
        self.ticks_received = 0
        self.other_events = 0
        self._last_tick_at: float | None = None
        self._last_event_ts: int | None = None
        self._gate = ReadGate(self._journal)
        self._symbols = ShardSymbols(shard, config.path, config.source.rest_url, api_key)
        self._reports = 0

    # ------------------------------------------------------------ lifecycle

    def request_symbols_reload(self) -> None:
        """Ask the main loop to re-read the shard's symbols from the config (safe from a signal handler)."""
        self._symbols.request_reload()

    def request_stop(self, reason: str) -> None:
        """Ask the main loop to stop (safe from a signal handler: it only sets attributes)."""
        if not self.stopping:
            self._stop_reason = reason
            self.stopping = True

    def run(self) -> int:
        """Stream until asked to stop; the exit code follows the module's stop contract."""
        parent = os.getppid()
        # The last frame the journal durably holds: whatever came after it was never read.
        self._books.down_since = read_until(self._journal)
        try:
            ledger = self._wait_for_ledger()
        except ShardFenced as exc:
            self._journal.close()
            log.error("%s", exc)
            return EXIT_FENCED
        if ledger is None:
            self._journal.close()
            log.info("stopped (%s) before the database answered", self._stop_reason)
            return EXIT_OK
        if ledger.received_at is not None:  # the journal may hold nothing after a clean stop, or be new
            last = ledger.received_at.timestamp()
            if self._journal.last_received_at is None or last > self._journal.last_received_at:
                self._books.down_since = last
        self._open_journal_at(ledger)
        self._lifecycle.to(Phase.STREAMING)
        self._committer.start()
        if self._backfill is not None:
            self._backfill.start(resume=True, rescan=self._backfill_rescan)
        self._symbols.start()
        log.info("worker started: %d symbol(s), batch_size %d, flush_interval %gs, source %s",
                 len(self._symbols.shard.symbols), self.settings.batch_size, self.settings.flush_interval,
                 self._stream.url)
        next_report = time.monotonic()
        try:
            while not self.stopping:
                busy = self._catch_up() if not self._lifecycle.live else False
                paused = self._gate.state is not ReadState.READING
                if self._gate.may_read():
                    if paused:
                        self._stream.resume_reading()  # the silence was ours, not the server's
                    if 0 < self._read_socket(busy) < SMALL_BURST and not busy:
                        time.sleep(COALESCE)  # let a quiet stream's frames gather: one read, one burst
                else:
                    # Commits give space back: hand over what is on disk and look again soon.
                    self._flush()
                    time.sleep(0.0 if busy else _BLOCKED_SLICE)
                now = time.monotonic()
                if self._batcher.due(now):
                    self._flush()
                if now >= next_report:
                    next_report = now + REPORT_INTERVAL
                    self._housekeeping(now)
                    if os.getppid() != parent or self._reporter.broken:
                        self.request_stop("parent process went away")
        finally:
            code = self._shutdown()
        return code

    def _wait_for_ledger(self) -> LedgerPosition | None:
        """The ledger's committed journal offset, asking every second (and reporting) until the database answers."""
        logged = False
        busy_until = time.monotonic() + SHARD_BUSY_WAIT
        while not self.stopping:
            try:
                base = self._committer.committed_base()
                if self._fence is not None:
                    self._lease = self._writer.lease_start()  # ShardFenced: another host's by now
                return base
            except ShardBusy:
                # A predecessor killed a moment ago may still hold the lock until its session ends.
                if time.monotonic() >= busy_until:
                    raise
                time.sleep(0.2)
            except DatabaseError as exc:
                self._committer.stats.last_error = str(exc)
                if not logged:
                    logged = True
                    log.error("cannot read the ledger (%s); waiting for the database before streaming", exc)
                self._report()
                for _ in range(10):
                    if not self.stopping:
                        time.sleep(0.1)
        return None

    def _open_journal_at(self, ledger: LedgerPosition) -> None:
        journal = self._journal
        base = ledger.offset
        found = open_at_ledger(journal, ledger, self._lease, self._fence.host_id if self._fence else None)
        if isinstance(found, Takeover):
            self._books.down_since, self._books.down_reason = found.down_since, found.reason
        elif isinstance(found, Rollback):
            self._rolled_back(found)
            base = found.resume_offset
        # After a takeover the other host recorded this host's earlier stretch: nothing of it is owed.
        self._books.owe_down_gap(inherit=not isinstance(found, Takeover))
        self._cursor.restart_at(max(base, journal.first_offset))
        if journal.backlog_records:
            self._lifecycle.to_mode(Mode.REPLAYING)
            log.info("replaying %d journal record(s) not yet in the database", journal.backlog_records)

    def _drain(self) -> None:
        """Say goodbye on the websocket; read and journal what the server still sends, until its close."""
        self._lifecycle.to(Phase.DRAINING)
        if not self._stream.say_goodbye():
            return
        frames = self._journal.end_offset
        while self._stream.connected and self._lifecycle.drain_left() > 0 and self._gate.may_read():
            self._read_socket(False)
            if self._batcher.due(time.monotonic()):
                self._flush()
        closed = not self._stream.connected
        self._stream.close()
        self._lifecycle.to(Phase.SHUTTING_DOWN)
        log.info("said goodbye on the websocket: %s in %.3fs, %d byte(s) of frames read after it",
                 "the server closed" if closed else "no close from the server (stop_drain)",
                 self._lifecycle.drain_seconds or 0.0, self._journal.end_offset - frames)

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.stop_timeout
        if self._on_stopping is not None:
            self._on_stopping()
        fenced = self._exit_code == EXIT_FENCED
        if self._lifecycle.phase is Phase.STREAMING and not fenced:
            self._drain()
        if self._lifecycle.phase is not Phase.SHUTTING_DOWN:
            self._lifecycle.to(Phase.SHUTTING_DOWN)
        if not fenced and self._committer.rolled_back is not None:  # line the journal up before the last commits
            self._repair(self._committer.rolled_back)
        if not fenced:  # a fenced worker hands nothing more to the database
            self._flush()
            self._commit_trailing_frames()
            # Gaps noticed since the last second's hand-over:
            self._books.hand_over(self._stream, self._journal, self._gate, self._committer,
                                  self._parser.take_new_names())
        if self._backfill is not None:
            self._backfill.stop(timeout=1.0)
        self._symbols.stop()
        drained = self._committer.drain(deadline - 0.5)
        self._stream.close()
        self._committer.close()
        try:
            self._journal.close()
        except JournalDiskFull as exc:
            log.error("%s: %d byte(s) of frames read since could not be written; they are lost, inside the gap "
                      "the next start records", exc, self._journal.end_offset - self._journal.flushed_offset)
        self._dead.close()
        self._lifecycle.to(Phase.STOPPED)
        self._report(final=True)
        stats = self._committer.stats
        log.info("stopped: %d tick(s) received, %d row(s) written in %d batch(es) (%s)", self.ticks_received,
                 stats.rows_written, stats.batches, self._stop_reason or "error")
        waiting = self._journal.backlog_records
        if waiting and fenced:
            log.warning("%d journal record(s) were not committed before another host took the shard over; they "
                        "are lost, inside the gap its new owner records", waiting)
        elif waiting:
            why = ("the database went back in time during the stop" if self._committer.rolled_back is not None
                   else stats.last_error or ("stop deadline" if not drained else "not handed over"))
            log.warning("%d journal record(s) are not in the database yet (%s); they are written at the next start",
                        waiting, why)
        return self._exit_code

    # ------------------------------------------------------------ the data path

    def _read_socket(self, busy: bool) -> int:
        """Read one burst off the socket into the journal (and, live, into rows); how many frames it had."""
        deadline = self._batcher.deadline()
        now = time.monotonic()
        wait = 0.0 if busy else _POLL_SLICE if deadline is None else min(_POLL_SLICE, max(0.0, deadline - now))
        try:
            frames = self._stream.poll(wait)  # writes the journal out before it reads the socket
        except JournalDiskFull as exc:
            self._enter_disk_full(exc)
            return 0
        if not frames:
            return 0
        frames = mask_frames(frames, self._secrets)  # a server that echoes the key must not put it on the disk
        received = time.time()
        self._taken_event_at = None
        ends = self._journal.append_many(frames, received)
        # In the OS before anything else happens to them: no extra write(2), the one before the next read of
        # the socket then finds nothing left to write.
        try:
            self._journal.write_buffered()
        except JournalDiskFull as exc:
            self._enter_disk_full(exc)
        if self._lifecycle.live:
            self._process(frames, ends, received, time.monotonic(), from_socket=True)
        else:
            self._statuses(frames)
        return len(frames)

    def _statuses(self, frames: list[bytes]) -> None:
        """While catching up, rows come from the journal, but statuses still matter now."""
        for frame in frames:
            if b'"price"' not in frame:
                parsed = self._parser.read(frame)
                if isinstance(parsed, Parsed) and parsed.status is not None:
                    self._on_status(parsed.status)

    def _process(self, frames: list[bytes], ends: list[int], received: float, arrived: float, *,
                 from_socket: bool) -> bool:
        """Turn a burst of journaled frames (received together) into rows; False when it stopped early.

        It stops after a batch the committer had no room for (the rest is
        read again from the journal) or, live, after the disk filled up.
        """
        read = self._parser.read
        ticks: list[Tick] = []
        room = self._batcher.room()
        last_end = 0
        for i, (frame, end) in enumerate(zip(frames, ends)):
            found = read(frame)
            if isinstance(found, Parsed):
                if ticks:
                    self._take(ticks, last_end, received, arrived)
                    ticks = []
                    room = self._batcher.room()
                self._other(found, frame, end, from_socket=from_socket)
                continue
            ticks.append(found)
            last_end = end
            if len(ticks) < room:
                continue
            self._take(ticks, end, received, arrived)
            ticks = []
            self._flush()
            if self._cursor.parsed_to != end or (from_socket and not self._lifecycle.live):
                if from_socket:
                    self._statuses(frames[i + 1:])
                return False
            room = self._batcher.room()
        if ticks:
            self._take(ticks, last_end, received, arrived)
        return True

    def _take(self, ticks: list[Tick], end: int, received: float, arrived: float) -> None:
        """The rows of a burst's frames up to ``end``: to freshness, the counters and the batch."""
        self._cursor.parsed(end)
        self.ticks_received += len(ticks)
        self._last_tick_at = arrived
        self._taken_event_at = ticks[-1].time
        self._parsed_received_at = received
        self._symbols.observe(ticks, received)
        if self._arrivals is not None:
            self._arrivals += [arrived] * len(ticks)
        self._batcher.extend(ticks, time.monotonic())

    def _other(self, parsed: Parsed, frame: bytes, end: int, *, from_socket: bool) -> None:
        new = self._cursor.dealt_with(end)
        kind = parsed.kind
        if kind is Kind.BAD:
            if new:
                # The reason says "binary"; the file shows the payload as it came off the wire.
                self._dead.add(frame.removeprefix(BINARY_FRAME_MARK), parsed.reason or "malformed", time.monotonic())
        elif kind is Kind.STATUS and from_socket:
            assert parsed.status is not None
            self._on_status(parsed.status)
        elif kind is Kind.OTHER:
            self.other_events += 1

    def _flush(self) -> None:
        """Hand the batch to the committer, or, when it has no room, leave its frames to the journal."""
        rows = self._batcher.take()
        arrivals = None
        if self._arrivals is not None:
            arrivals, self._arrivals = self._arrivals, []
        if not rows:
            return
        if not self._committer.has_room(len(rows)):
            if self._lifecycle.to_mode(Mode.BACK_PRESSURED):
                log.warning("the database is behind (%d rows waiting): reading into the journal only; "
                            "the backlog is re-read from it when the database catches up",
                            self._committer.pending_rows)
            self._cursor.rewind()
            return
        try:
            self._journal.flush()
        except JournalDiskFull as exc:
            on_disk = self._cursor.parsed_to <= self._journal.flushed_offset  # a batch re-read from the journal
            self._enter_disk_full(exc)
            if not on_disk:
                return
        self._last_event_ts = int(rows[-1].time.timestamp())
        received = self._parsed_received_at
        self._committer.submit(rows, self._cursor.parsed_to, arrivals=arrivals,
                               received_at=None if received is None else datetime.fromtimestamp(received, timezone.utc))
        self._cursor.submitted()

    def _catch_up(self) -> bool:
        """Turn the next journal records into rows when the committer has room; True if it did work."""
        room = self._committer.max_pending_rows - self._committer.pending_rows - len(self._batcher)
        if room < self.settings.batch_size:
            return False
        try:
            self._journal.flush()
        except JournalDiskFull as exc:
            self._enter_disk_full(exc)
        records = self._journal.read(self._cursor.parsed_to, min(CATCH_UP_CHUNK, room))
        if not records:
            if self._journal.flushed_offset < self._journal.end_offset:
                return False  # the rest is still buffered, waiting for room on the disk
            self._lifecycle.to_mode(Mode.LIVE)
            log.info("caught up with the journal; streaming live")
            return False
        wall, mono = time.time(), time.monotonic()
        records = [r for r in records if r.end_offset > self._cursor.parsed_to]
        start = 0
        while start < len(records):  # the records of one burst share their receive time
            received = records[start].received_at
            stop = start + 1
            while stop < len(records) and records[stop].received_at == received:
                stop += 1
            burst = records[start:stop]
            if not self._process([r.frame for r in burst], [r.end_offset for r in burst], received,
                                 mono - (wall - received), from_socket=False):
                break  # the committer filled up: rewound to submitted_to
            start = stop
        self._taken_event_at = None  # ticks re-read from the journal say nothing of what the socket holds now
        return True

    # ------------------------------------------------------------ bookkeeping

    def _housekeeping(self, now: float) -> None:
        rolled_back = self._committer.rolled_back
        if rolled_back is not None:
            self._repair(rolled_back)
        if self._committer.fenced is not None and self._exit_code != EXIT_FENCED:
            log.error("stopping: another host holds the shard's lease; closing the websocket")
            self._exit_code = EXIT_FENCED
            self.request_stop("fenced")
        if self._committer.failure is not None:
            log.error("stopping: the writer thread failed (%s); the journal is replayed at the next start",
                      self._committer.failure)
            self._exit_code = EXIT_RUNTIME
            self.request_stop("writer thread failed")
        try:
            self._journal.flush()
        except JournalDiskFull as exc:
            self._enter_disk_full(exc)
        self._commit_trailing_frames()
        self._symbols.reload_if_requested(self._stream, self._backfill)
        self._report()
        self._dead.flush_log(now)
        self._books.hand_over(self._stream, self._journal, self._gate, self._committer,
                              self._parser.take_new_names())

    def _repair(self, found: LedgerRolledBack) -> None:
        """The committer met an older ledger: re-read the journal from it (the committer waits until then)."""
        self._batcher.take()
        if self._arrivals is not None:
            self._arrivals.clear()
        rollback = rewind_journal(self._journal, found.ledger_offset, found.known_offset, found.ledger_received_at)
        since = found.ledger_received_at
        self._books.record_again_since(None if since is None else since.timestamp())
        self._cursor.rewind_to(max(rollback.resume_offset, self._journal.first_offset))
        self._lifecycle.to_mode(Mode.REPLAYING)
        self._committer.resume_after_rollback(rollback.ledger_offset)
        self._rolled_back(rollback)

    def _rolled_back(self, rollback: Rollback) -> None:
        self.rollbacks += 1
        self._last_rollback = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}Z: {rollback.describe()}"
        if rollback.lost is not None:
            start, end = rollback.lost
            self._books.extra_gaps.append((start, end, f"{ROLLBACK_REASON}: journal offsets "
                                                       f"{rollback.ledger_offset}..{rollback.resume_offset} lost"))

    def _commit_trailing_frames(self) -> None:
        """Commit the offset of frames that carried no rows (heartbeats, statuses) so the backlog reads 0."""
        cursor = self._cursor
        if (self._lifecycle.live and not len(self._batcher) and cursor.unsubmitted
                and cursor.parsed_to <= self._journal.flushed_offset and not self._committer.pending_rows):
            self._committer.submit([], cursor.parsed_to)
            cursor.submitted()

    def _enter_disk_full(self, exc: JournalDiskFull) -> None:
        """Stop reading the socket; what is batched stays in the journal and is re-read once it is on disk."""
        self._gate.disk_refused(exc)
        self._lifecycle.to_mode(Mode.DISK_FULL)
        if self._cursor.parsed_to > self._journal.flushed_offset:  # batched from frames not on disk: re-read later
            self._batcher.take()
            if self._arrivals is not None:
                self._arrivals.clear()
            self._cursor.rewind()

    def _events_read_until(self) -> float | None:
        """The event time of the last tick of the burst read last (its frames were sent no earlier)."""
        taken = self._taken_event_at
        return None if taken is None else taken.timestamp()

    def _on_status(self, event: StatusEvent) -> None:
        self._symbols.on_status(self._stream, event)

    def _subscribed(self) -> None:
        if not self._ready_sent:
            self._ready_sent = True
            self._reporter.send(ReadyReport())

    def stats(self, *, freshness: bool = False) -> WorkerReport:
        """This process's report (``shardctl.worker.reporting``); with ``freshness``, every symbol's record too."""
        return worker_report(
            ReportParts(ticks_received=self.ticks_received, other_events=self.other_events,
                        last_tick_at=self._last_tick_at, last_event_ts=self._last_event_ts, live=self._lifecycle.live,
                        batched_rows=len(self._batcher), rollbacks=self.rollbacks, last_rollback=self._last_rollback),
            self._committer, self._journal, self._stream, self._dead, self._gate, self._backfill,
            self._symbols.snapshot() if freshness else None, self._symbols.stale_after)

    def _report(self, *, final: bool = False) -> None:
        self._reports += 1
        self._reporter.send(self.stats(freshness=final or self._reports % FRESHNESS_EVERY == 1))
