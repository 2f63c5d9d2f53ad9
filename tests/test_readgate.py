"""The worker's read gate: when it reads, when it pauses, and the gaps its pauses leave (injected clocks)."""

from __future__ import annotations

from pathlib import Path

from shardctl.journal.errors import JournalDiskFull
from shardctl.worker.readgate import ReadGate, ReadState


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StandInJournal:
    """Pure state: the cap flag, the last frame's time, and whether the disk takes the buffer."""

    def __init__(self) -> None:
        self.full = False
        self.size_bytes = 4096
        self.last_received_at: float | None = 100.0
        self.disk_has_room = True

    def write_buffered(self) -> None:
        if not self.disk_has_room:
            raise JournalDiskFull(Path("/j"), 0)


def gate_with(journal: StandInJournal) -> tuple[ReadGate, Clock]:
    wall = Clock(1000.0)
    return ReadGate(journal, wall=wall, clock=wall, disk_retry=0.2), wall


def test_the_journal_cap_pauses_and_the_gap_runs_from_its_last_frame() -> None:
    journal = StandInJournal()
    gate, clock = gate_with(journal)
    assert gate.may_read() and gate.state is ReadState.READING
    journal.full = True
    assert not gate.may_read() and gate.state is ReadState.JOURNAL_FULL
    clock.now = 1005.0
    assert not gate.may_read()
    journal.full = False
    assert gate.may_read() and gate.state is ReadState.READING
    assert gate.gaps == [(100.0, 1005.0, "journal full: not reading")]


def test_a_full_disk_is_retried_at_its_interval_until_the_buffer_fits() -> None:
    journal = StandInJournal()
    gate, clock = gate_with(journal)
    journal.disk_has_room = False
    assert gate.disk_refused(JournalDiskFull(Path("/j"), 0)) is True
    assert gate.disk_refused(JournalDiskFull(Path("/j"), 0)) is False, "one pause, not two"
    assert not gate.may_read() and gate.state is ReadState.DISK_FULL
    assert gate.disk_error is not None and str(gate.disk_error) == "disk full: /j (0 bytes free)"
    journal.disk_has_room = True
    clock.now = 1000.1
    assert not gate.may_read(), "no retry before the interval"
    clock.now = 1000.3
    assert gate.may_read() and gate.disk_error is None
    assert gate.gaps == [(100.0, 1000.3, "disk full: not reading")]


def test_room_on_the_disk_with_the_cap_reached_goes_on_pausing_as_journal_full() -> None:
    journal = StandInJournal()
    gate, clock = gate_with(journal)
    gate.disk_refused(JournalDiskFull(Path("/j"), 0))
    journal.full = True
    clock.now = 1001.0
    assert not gate.may_read() and gate.state is ReadState.JOURNAL_FULL
    journal.full = False
    clock.now = 1002.0
    assert gate.may_read()
    assert [reason for _, _, reason in gate.gaps] == ["disk full: not reading", "journal full: not reading"]


def test_without_a_last_frame_the_gap_starts_at_the_pause() -> None:
    journal = StandInJournal()
    journal.last_received_at = None
    gate, clock = gate_with(journal)
    journal.full = True
    gate.may_read()
    journal.full = False
    clock.now = 1003.0
    gate.may_read()
    assert gate.gaps == [(1000.0, 1003.0, "journal full: not reading")]
