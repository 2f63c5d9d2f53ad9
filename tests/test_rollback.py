"""A database that goes back in time, and a stop that drains: the pure parts, with real journal files.

The worker's phases (``shardctl.worker.lifecycle``) with an injected clock; the journal's retention,
``committed.mark`` and ``uncommit``; and what a starting worker does with a ledger behind its journal
(``shardctl.worker.startup``, ``shardctl.worker.rollback``). The whole path, with a real primary and
standby, is in tests/test_failover.py.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import orjson
import pytest
from support import wait_until

from shardctl.db.writer import LedgerPosition
from shardctl.errors import LedgerRolledBack
from shardctl.journal.journal import Journal
from shardctl.journal.mark import MARK_NAME, Mark, decode_mark, encode_mark
from shardctl.rows import Tick
from shardctl.worker.committer import Committer
from shardctl.worker.lifecycle import Lifecycle, Mode, Phase
from shardctl.worker.offsets import JournalCursor
from shardctl.worker.rollback import Rollback
from shardctl.worker.startup import open_at_ledger, read_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_drains_only_after_streaming_and_the_drain_is_timed() -> None:
    clock = Clock()
    life = Lifecycle(2.0, clock=clock)
    assert life.phase is Phase.WAITING_FOR_DATABASE and life.drain_left() == 0.0
    with pytest.raises(ValueError, match="from waiting for the database to draining"):
        life.to(Phase.DRAINING)
    life.to(Phase.STREAMING)
    life.to(Phase.DRAINING)
    clock.now += 0.5
    assert life.drain_left() == pytest.approx(1.5)
    clock.now += 5
    assert life.drain_left() == 0.0
    life.to(Phase.SHUTTING_DOWN)
    assert life.drain_seconds == pytest.approx(5.5)
    life.to(Phase.STOPPED)
    with pytest.raises(ValueError):
        life.to(Phase.STREAMING)


def test_a_worker_stopped_before_streaming_never_drains() -> None:
    life = Lifecycle(2.0, clock=Clock())
    life.to(Phase.SHUTTING_DOWN)
    life.to(Phase.STOPPED)
    assert life.drain_seconds is None


def test_a_worker_s_modes_move_only_along_their_table_and_are_timed() -> None:
    clock = Clock()
    life = Lifecycle(2.0, clock=clock)
    assert life.live and life.mode_since == 100.0
    clock.now = 101.0
    assert life.to_mode(Mode.BACK_PRESSURED) and not life.live and life.mode_since == 101.0
    assert not life.to_mode(Mode.BACK_PRESSURED), "staying put changes nothing"
    clock.now = 102.0
    assert life.to_mode(Mode.DISK_FULL) and life.mode_since == 102.0
    assert not life.to_mode(Mode.BACK_PRESSURED), "a full committer changes nothing while catching up"
    assert life.mode is Mode.DISK_FULL
    assert life.to_mode(Mode.REPLAYING)  # the database went back in time meanwhile
    assert not life.to_mode(Mode.BACK_PRESSURED) and life.mode is Mode.REPLAYING
    clock.now = 103.0
    assert life.to_mode(Mode.LIVE) and life.live and life.mode_since == 103.0


def test_the_mark_reads_back_and_a_torn_one_reads_as_nothing() -> None:
    data = encode_mark(Mark(4096, 1234.5))
    assert decode_mark(data) == Mark(4096, 1234.5)
    assert decode_mark(encode_mark(Mark(7, None))) == Mark(7, None)
    assert decode_mark(data[:-1]) is None
    assert decode_mark(bytes([data[0] ^ 1]) + data[1:]) is None


def frames(j: Journal, count: int, start_at: float) -> list[int]:
    return [j.append(b'{"event":"price","i":%d}' % i + b"#" * 200, start_at + i) for i in range(count)]


def test_after_a_clean_stop_the_last_receive_time_survives_the_reclaim(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=1 << 21, fsync="never")
    ends = frames(j, 5000, 5000.0)  # over a MiB: reclaimed once all is committed
    j.flush()
    j.commit(ends[-1])  # no retention: the records are reclaimed
    j.close()
    again = Journal(tmp_path, segment_bytes=1 << 21, fsync="never")
    assert again.backlog_records == 0 and not list(again.replay(0))
    assert again.last_received_at == 9999.0
    assert again.marked_committed == ends[-1]


def price_frame(symbol: str, ts: int) -> bytes:
    return orjson.dumps({"event": "price", "symbol": symbol, "timestamp": ts, "price": 1.5, "day_volume": 7})


def test_a_worker_behind_its_socket_is_down_from_its_last_burst_s_latest_event(tmp_path: Path) -> None:
    j = Journal(tmp_path, fsync="never")
    j.append_many([price_frame("AAPL", 90)], 95.0)
    j.append_many([price_frame("AAPL", 97), b'{"event":"heartbeat","status":"ok"}', price_frame("MSFT", 98),
                   price_frame("AAPL", 96)], 100.5)  # read at 100.5, sent by 98 at the latest
    j.close()
    assert read_until(Journal(tmp_path, fsync="never")) == 98.0


def test_a_worker_that_kept_up_is_down_from_its_last_receive_time(tmp_path: Path) -> None:
    j = Journal(tmp_path, fsync="never")
    assert read_until(j) is None
    j.append_many([price_frame("AAPL", 120)], 100.5)  # a server clock ahead of ours
    j.append_many([b'{"event":"heartbeat","status":"ok"}'], 101.0)  # no event time in the last burst
    j.close()
    assert read_until(Journal(tmp_path, fsync="never")) == 101.0
    j = Journal(tmp_path / "ahead", fsync="never")
    j.append_many([price_frame("AAPL", 120)], 100.5)
    j.close()
    assert read_until(Journal(tmp_path / "ahead", fsync="never")) == 100.5


def test_a_mark_newer_than_the_journal_s_records_gives_its_receive_time(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=1 << 21, fsync="never")
    j.append_many([price_frame("AAPL", 10)], 50.0)
    j.close()
    (tmp_path / MARK_NAME).write_bytes(encode_mark(Mark(0, 60.0)))  # the records of 60.0 were reclaimed
    again = Journal(tmp_path, segment_bytes=1 << 21, fsync="never")
    assert again.last_burst == [] and read_until(again) == 60.0


def test_the_mark_never_claims_a_receive_time_the_os_has_not_been_handed(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=1 << 21, fsync="never")
    ends = frames(j, 3, 100.0)
    j.flush()
    frames(j, 1, 500.0)  # buffered only: a kill -9 now loses it, so the next "worker down" gap must cover it
    j.commit(ends[-1])
    assert decode_mark((tmp_path / MARK_NAME).read_bytes()) == Mark(ends[-1], 102.0)
    j.close()  # writes the buffered record out, then the mark
    assert decode_mark((tmp_path / MARK_NAME).read_bytes()) == Mark(ends[-1], 500.0)


def test_retained_records_outlive_their_commit_until_the_window_passes(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=2048, fsync="never", retain=3600)
    ends = frames(j, 60, 1000.0)
    j.flush()
    j.commit(ends[-1])
    assert j.first_offset == 0 and j.backlog_records == 0
    assert len(list(j.replay(0))) == 60  # still on disk
    j.retain = 0.001
    time.sleep(0.01)
    ends += frames(j, 1, 2000.0)
    j.flush()
    j.commit(ends[-1])
    assert j.first_offset > ends[10]


def test_retained_bytes_never_block_reading_at_the_cap(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=2048, max_bytes=6144, fsync="never", retain=3600)
    for round_ in range(20):  # ~10 segments' worth, committed as it goes
        ends = frames(j, 10, 1000.0 + 10 * round_)
        j.flush()
        j.commit(ends[-1])
        assert not j.full
    assert j.size_bytes <= 6144


def test_uncommit_gives_back_what_the_journal_holds_and_says_where_it_starts(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=2048, fsync="never", retain=3600)
    ends = frames(j, 40, 1000.0)
    j.flush()
    j.commit(ends[-1])
    assert j.uncommit(ends[19]) == ends[19]
    assert j.backlog_records == 20 and j.oldest_uncommitted_received_at == 1020.0
    assert [r.end_offset for r in j.replay(ends[19])] == ends[20:]
    j.close()
    assert Journal(tmp_path, segment_bytes=2048, fsync="never").marked_committed == ends[19]


def test_uncommit_before_the_first_record_kept_starts_there(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=2048, fsync="never")  # no retention
    ends = frames(j, 40, 1000.0)
    j.flush()
    j.commit(ends[29])
    first = j.first_offset
    assert first > ends[5]
    assert j.uncommit(ends[5]) == first


def reopened(tmp_path: Path, ends: list[int], committed: int, retain: float) -> Journal:
    j = Journal(tmp_path, segment_bytes=2048, fsync="never", retain=retain)
    written = frames(j, 40, 1000.0)
    ends.extend(written)
    j.flush()
    j.commit(written[committed])
    j.close()
    return Journal(tmp_path, segment_bytes=2048, fsync="never", retain=retain)


def test_a_ledger_behind_the_journal_at_start_is_a_rollback_written_again(tmp_path: Path, caplog) -> None:
    ends: list[int] = []
    j = reopened(tmp_path, ends, 39, retain=3600)
    assert j.backlog_records == 0
    behind = datetime.fromtimestamp(1009.0, timezone.utc)
    with caplog.at_level(logging.ERROR, logger="shardctl.worker"):
        found = open_at_ledger(j, LedgerPosition(ends[9], behind), None, None)
    assert isinstance(found, Rollback)
    assert (found.ledger_offset, found.known_offset, found.resume_offset, found.lost) == (ends[9], ends[39],
                                                                                       ends[9], None)
    assert j.backlog_records == 30
    assert f"ledger at journal offset {ends[9]}, behind the committed {ends[39]}" in caplog.text


def test_a_rollback_past_what_the_journal_kept_is_a_gap_from_the_older_ledger(tmp_path: Path) -> None:
    ends: list[int] = []
    j = reopened(tmp_path, ends, 39, retain=0.0)  # nothing retained
    found = open_at_ledger(j, LedgerPosition(ends[9], datetime.fromtimestamp(1009.0, timezone.utc)), None, None)
    assert isinstance(found, Rollback) and found.resume_offset > ends[9]
    assert found.lost is not None and found.lost[0] == 1009.0
    assert "recorded as a gap" in found.describe()


class _RolledBackWriter:
    """A writer whose database went back in time before the first batch (the committer's thread logic only)."""

    known_offset = 0

    def ledger_position(self) -> LedgerPosition:
        return LedgerPosition(0, None)

    def write(self, seq: int, rows: Sequence[Tick], *, journal_offset: int | None = None,
              received_at: datetime | None = None) -> bool:
        raise LedgerRolledBack("s", 0, 4096)

    def record_gap(self, gap_from: datetime, gap_to: datetime, reason: str) -> None: ...
    def upsert_assets(self, names: Mapping[str, str | None]) -> None: ...
    def close(self) -> None: ...


def test_a_stop_waiting_on_the_committer_returns_when_it_finds_the_database_went_back_in_time() -> None:
    committer = Committer(_RolledBackWriter(), max_pending_rows=100)
    committer.start()
    try:
        committer.submit([], 4096)
        # A stop's final drain with an hour's deadline: it must not wait for a commit that waits for the worker.
        drained: list[bool] = []
        stop = threading.Thread(target=lambda: drained.append(committer.drain(time.monotonic() + 3600)), daemon=True)
        stop.start()
        wait_until(lambda: drained, 30, what="the drain to return")
        assert drained == [False]
        assert committer.rolled_back is not None and committer.rolled_back.known_offset == 4096
    finally:
        committer.close()


def test_a_ledger_at_or_past_the_mark_is_no_rollback(tmp_path: Path) -> None:
    ends: list[int] = []
    j = reopened(tmp_path, ends, 19, retain=3600)
    assert open_at_ledger(j, LedgerPosition(ends[19], None), None, None) is None
    assert j.backlog_records == 20  # the frames after the commit are replayed, as always


def test_the_mark_file_is_private(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        Journal(tmp_path, fsync="never").close()
    finally:
        os.umask(old)
    assert (tmp_path / MARK_NAME).stat().st_mode & 0o077 == 0


def test_a_rewound_cursor_keeps_its_dead_letters_written() -> None:
    cursor = JournalCursor()
    cursor.parsed(100)
    assert cursor.dealt_with(200)
    cursor.submitted()
    cursor.rewind_to(50)
    assert (cursor.parsed_to, cursor.submitted_to) == (50, 50)
    cursor.parsed(100)
    assert not cursor.dealt_with(200)  # its dead letter is not written twice


def test_a_successor_waits_for_a_stopping_predecessor_and_refuses_a_running_one(tmp_path: Path) -> None:
    import threading

    from shardctl.errors import ShardctlError
    from shardctl.worker.process import ShardLock

    path = tmp_path / "shard" / "worker.lock"
    running = ShardLock(path)
    started = time.monotonic()
    with pytest.raises(ShardctlError, match="already running this shard"):
        ShardLock(path, wait=10.0)  # not stopping, not orphaned: refused at once
    assert time.monotonic() - started < 5.0
    running.mark_stopping()
    assert path.read_text().endswith(" stopping")
    threading.Timer(0.3, running.release).start()
    successor = ShardLock(path, wait=10.0)  # waits for the predecessor, then holds the lock
    assert path.read_text() == str(os.getpid())
    successor.release()


def test_gaps_handed_over_after_the_older_ledger_are_recorded_again(tmp_path: Path) -> None:
    """Gaps recorded during the stretch the database lost were rolled back with it: queued again, once each."""
    from types import SimpleNamespace

    from shardctl.worker.bookkeeping import Bookkeeper, OwedGap, RecordGap

    tasks: list[object] = []
    stream = SimpleNamespace(first_connected_at=None, gaps=[(100.0, 101.0, "disconnected: a"),
                                                            (200.0, 202.0, "disconnected: b")])
    parts = dict(stream=stream, journal=SimpleNamespace(gaps=[]), gate=SimpleNamespace(gaps=[]),
                 committer=SimpleNamespace(run_task=tasks.append), assets={})
    books = Bookkeeper(OwedGap(tmp_path))
    books.hand_over(**parts)  # type: ignore[arg-type]
    assert len(tasks) == 2
    assert books.record_again_since(150.0) == 1  # the database went back to a batch received at 150
    books.hand_over(**parts)  # type: ignore[arg-type]
    again = [t for t in tasks[2:] if isinstance(t, RecordGap)]
    assert [(t.start.timestamp(), t.reason) for t in again] == [(200.0, "disconnected: b")]


def test_a_down_gap_is_owed_on_disk_until_recorded_and_a_successor_inherits_it(tmp_path: Path) -> None:
    """A worker killed after its start but before the database had its "worker down" gap leaves it owed:
    the next worker's gap starts where the owed one did, and recording it pays it."""
    from types import SimpleNamespace

    from shardctl.worker.bookkeeping import Bookkeeper, OwedGap, RecordGap

    killed = Bookkeeper(OwedGap(tmp_path))
    killed.down_since = 100.0
    killed.owe_down_gap()
    assert OwedGap(tmp_path).read() == (100.0, "worker down")  # the process dies here

    tasks: list[object] = []
    successor = Bookkeeper(OwedGap(tmp_path))
    successor.down_since = 130.0  # the killed worker had read until 130
    successor.owe_down_gap()
    assert successor.down_since == 100.0
    parts = dict(stream=SimpleNamespace(first_connected_at=140.0, gaps=[]), journal=SimpleNamespace(gaps=[]),
                 gate=SimpleNamespace(gaps=[]), committer=SimpleNamespace(run_task=tasks.append), assets={})
    successor.hand_over(**parts)  # type: ignore[arg-type]
    (gap,) = [t for t in tasks if isinstance(t, RecordGap)]
    assert (gap.start.timestamp(), gap.end.timestamp(), gap.reason) == (100.0, 140.0, "worker down")
    assert OwedGap(tmp_path).read() is not None, "owed until the database has it"
    gap(SimpleNamespace(record_gap=lambda *args: None))  # type: ignore[arg-type]
    assert OwedGap(tmp_path).read() is None


def test_a_later_owed_gap_and_a_takeover_leave_the_start_alone(tmp_path: Path) -> None:
    from shardctl.worker.bookkeeping import Bookkeeper, OwedGap

    OwedGap(tmp_path).write(150.0, "worker down")
    books = Bookkeeper(OwedGap(tmp_path))
    books.down_since = 120.0
    books.owe_down_gap()
    assert books.down_since == 120.0 and OwedGap(tmp_path).read() == (120.0, "worker down")
    OwedGap(tmp_path).write(50.0, "worker down")
    books = Bookkeeper(OwedGap(tmp_path))
    books.down_since, books.down_reason = 200.0, "takeover from host-b"
    books.owe_down_gap(inherit=False)  # the other host recorded this host's earlier stretch
    assert books.down_since == 200.0 and OwedGap(tmp_path).read() == (200.0, "takeover from host-b")


def test_an_owed_gap_that_cannot_be_written_is_logged_not_raised(tmp_path: Path, caplog) -> None:
    from shardctl.worker.bookkeeping import OwedGap

    owed = OwedGap(tmp_path / "gone")  # the write fails (ENOENT here, ENOSPC on a full disk)
    with caplog.at_level(logging.WARNING, logger="shardctl.worker"):
        owed.write(10.0, "worker down")
    assert owed.read() is None and "cannot write" in caplog.text and "worker down" in caplog.text
