"""A worker's life as one explicit state machine of two parts: its phase, and, while it streams, its mode.

Phases: waiting for the database, streaming, draining, shutting down,
stopped. Draining is the graceful stop's first step: the worker has said
goodbye on the websocket (unsubscribe, close frame) and keeps reading and
journaling what the server sent before its answering close, for at most
``drain_timeout``.

Modes say where rows come from while it streams or drains::

    LIVE ──the committer has no room──> BACK_PRESSURED ──caught up──> LIVE
    LIVE ──the database went back in time──> REPLAYING ──caught up──> LIVE
    any ──the disk refuses a journal write──> DISK_FULL ──caught up──> LIVE

LIVE: rows come from the socket as it is read. Otherwise the journal holds
frames not yet turned into rows and the worker re-reads them when the
committer has room, while it goes on journaling the socket (REPLAYING at
start-up or after a rollback, BACK_PRESSURED after the database fell
behind) or while it does not read at all (DISK_FULL: ``ReadGate`` keeps the
socket shut until the buffered frames fit on the disk). A rollback may come
in any mode and makes it REPLAYING. Whether the socket is read at all is the
``ReadGate``'s part; the mode only says where rows come from.
"""

from __future__ import annotations

import enum
import time
from typing import Callable


class Phase(enum.Enum):
    WAITING_FOR_DATABASE = "waiting for the database"
    STREAMING = "streaming"
    DRAINING = "draining"
    SHUTTING_DOWN = "shutting down"
    STOPPED = "stopped"


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.WAITING_FOR_DATABASE: frozenset((Phase.STREAMING, Phase.SHUTTING_DOWN)),
    Phase.STREAMING: frozenset((Phase.DRAINING, Phase.SHUTTING_DOWN)),
    Phase.DRAINING: frozenset((Phase.SHUTTING_DOWN,)),
    Phase.SHUTTING_DOWN: frozenset((Phase.STOPPED,)),
    Phase.STOPPED: frozenset(),
}


class Mode(enum.Enum):
    LIVE = "live"
    REPLAYING = "replaying"
    BACK_PRESSURED = "back-pressured"
    DISK_FULL = "disk full"


_MODE_NEXT: dict[Mode, frozenset[Mode]] = {
    Mode.LIVE: frozenset((Mode.REPLAYING, Mode.BACK_PRESSURED, Mode.DISK_FULL)),
    Mode.REPLAYING: frozenset((Mode.LIVE, Mode.DISK_FULL)),
    Mode.BACK_PRESSURED: frozenset((Mode.LIVE, Mode.REPLAYING, Mode.DISK_FULL)),
    Mode.DISK_FULL: frozenset((Mode.LIVE, Mode.REPLAYING)),
}


class Lifecycle:
    """The current phase (moved only along ``_NEXT``, ValueError otherwise), the mode (along ``_MODE_NEXT``),
    and the drain's clock."""

    def __init__(self, drain_timeout: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.drain_timeout = drain_timeout
        self._clock = clock
        self.phase = Phase.WAITING_FOR_DATABASE
        self.mode = Mode.LIVE
        #: When the mode last changed (the clock's time).
        self.mode_since = clock()
        self._drain_started: float | None = None
        #: How long the drain took (None: there was none).
        self.drain_seconds: float | None = None

    def to(self, phase: Phase) -> None:
        if phase not in _NEXT[self.phase]:
            raise ValueError(f"a worker cannot go from {self.phase.value} to {phase.value}")
        if phase is Phase.DRAINING:
            self._drain_started = self._clock()
        elif self.phase is Phase.DRAINING and self._drain_started is not None:
            self.drain_seconds = self._clock() - self._drain_started
        self.phase = phase

    @property
    def live(self) -> bool:
        return self.mode is Mode.LIVE

    def to_mode(self, mode: Mode) -> bool:
        """Move to ``mode`` if ``_MODE_NEXT`` has the move; True if the mode changed.

        The one request outside the table, BACK_PRESSURED while already
        catching up from the journal, changes nothing: that worker waits for
        the committer's room anyway.
        """
        if mode not in _MODE_NEXT[self.mode]:
            return False
        self.mode = mode
        self.mode_since = self._clock()
        return True

    def drain_left(self) -> float:
        """Seconds the drain may still take (0 outside DRAINING)."""
        if self.phase is not Phase.DRAINING or self._drain_started is None:
            return 0.0
        return max(0.0, self._drain_started + self.drain_timeout - self._clock())
