"""Whether a worker may read its socket now: a small state machine over its journal.

    READING ──journal at its cap ("block")──> JOURNAL_FULL ──commits free a segment──> READING
    READING ──the disk refuses a write──────> DISK_FULL ──the buffered frames fit──> READING

While paused the worker does not read: the server's frames wait in the
socket, then in the server, and the stream may drop. Each pause becomes a gap
from the last frame the journal holds to the moment reading resumes, so every
tick missed meanwhile lies inside a recorded gap.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Callable, Protocol

from shardctl.journal.errors import JournalDiskFull

log = logging.getLogger("shardctl.worker")

#: How often a paused worker whose disk is full tries to write its buffered frames out again.
DISK_RETRY = 0.2

Gap = tuple[float, float, str]


class GatedJournal(Protocol):
    """What the gate needs of ``shardctl.journal.journal.Journal``."""

    @property
    def full(self) -> bool: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def last_received_at(self) -> float | None: ...
    def write_buffered(self) -> None: ...


class ReadState(enum.Enum):
    READING = "reading"
    JOURNAL_FULL = "journal full"
    DISK_FULL = "disk full"


class ReadGate:
    """Decides, before each read, whether the worker reads; collects the gaps its pauses leave.

    ``wall`` gives Unix time (gap bounds), ``clock`` monotonic time (retries).
    """

    def __init__(self, journal: GatedJournal, *, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic, disk_retry: float = DISK_RETRY) -> None:
        self._journal = journal
        self._wall, self._clock, self._disk_retry = wall, clock, disk_retry
        self.state = ReadState.READING
        #: The disk's refusal while DISK_FULL (its message names the path and the free bytes).
        self.disk_error: JournalDiskFull | None = None
        #: Pauses that ended: (from, to, reason), for the bookkeeper.
        self.gaps: list[Gap] = []
        self._paused_since = 0.0
        self._retry_at = 0.0

    def disk_refused(self, exc: JournalDiskFull) -> bool:
        """A write hit a full disk: pause (DISK_FULL). True when this starts the pause."""
        self.disk_error = exc
        self._retry_at = self._clock() + self._disk_retry
        if self.state is ReadState.DISK_FULL:
            return False
        self._pause(ReadState.DISK_FULL)
        log.error("%s: not reading the socket; writing the journal's backlog to the database, which gives "
                  "the space back; reading again when there is room", exc)
        return True

    def may_read(self) -> bool:
        """True when the worker may read its socket now, moving between states as the journal allows."""
        if self.state is ReadState.DISK_FULL:
            if self._clock() < self._retry_at:
                return False
            self._retry_at = self._clock() + self._disk_retry
            try:
                self._journal.write_buffered()
            except JournalDiskFull as exc:
                self.disk_error = exc
                return False
            assert self.disk_error is not None
            log.info("the disk has room again (%s): reading the socket", self.disk_error.directory)
            self.disk_error = None
            self._resume("disk full: not reading")
        if self._journal.full:
            if self.state is ReadState.READING:
                self._pause(ReadState.JOURNAL_FULL)
                log.error("journal is full (%d bytes, journal_on_full = \"block\"): not reading the socket until "
                          "the database takes the backlog", self._journal.size_bytes)
            return False
        if self.state is ReadState.JOURNAL_FULL:
            log.info("the journal has room again; reading the socket")
            self._resume("journal full: not reading")
        return True

    def _pause(self, state: ReadState) -> None:
        if self.state is ReadState.READING:  # the gap starts at the last frame the journal holds
            self._paused_since = self._journal.last_received_at or self._wall()
        self.state = state

    def _resume(self, reason: str) -> None:
        self.gaps.append((self._paused_since, self._wall(), reason))
        self.state = ReadState.READING
