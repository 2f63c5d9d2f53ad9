"""A worker's life as explicit phases: waiting for the database, streaming, draining, shutting down, stopped.

Draining is the graceful stop's first step: the worker has said goodbye on the
websocket (unsubscribe, close frame) and keeps reading and journaling what the
server sent before its answering close, for at most ``drain_timeout``.
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


class Lifecycle:
    """The current phase, moved only along ``_NEXT`` (ValueError otherwise), and the drain's clock."""

    def __init__(self, drain_timeout: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.drain_timeout = drain_timeout
        self._clock = clock
        self.phase = Phase.WAITING_FOR_DATABASE
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

    def drain_left(self) -> float:
        """Seconds the drain may still take (0 outside DRAINING)."""
        if self.phase is not Phase.DRAINING or self._drain_started is None:
            return 0.0
        return max(0.0, self._drain_started + self.drain_timeout - self._clock())
