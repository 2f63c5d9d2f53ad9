"""A simulated wall clock for end-to-end tests: ``SHARDCTL_SIMULATED_CLOCK=REAL0,SIM0,SPEED``.

Not for production. With the variable set, ``install_from_env`` (called by
the ``shardctl`` and worker entry points) makes ``time.time()`` in that
process answer ``SIM0 + (real - REAL0) * SPEED``: a Friday afternoon at any
hour of the real clock, a minute per real second. Only the wall clock moves;
``time.monotonic()`` (timeouts, backoff, heartbeats) stays real. A test hands
the same ``SimulatedClock`` to its in-process feed, so every tick, gap and
calendar decision lives in one simulated time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Mapping

from shardctl.errors import UsageError

ENV = "SHARDCTL_SIMULATED_CLOCK"
_REAL_TIME = time.time


@dataclass(frozen=True)
class SimulatedClock:
    """Unix time ``sim0`` at real Unix time ``real0``, running ``speed`` times as fast."""

    real0: float
    sim0: float
    speed: float = 1.0

    def __call__(self) -> float:
        return self.sim0 + (_REAL_TIME() - self.real0) * self.speed

    def real_at(self, sim: float) -> float:
        """The real Unix time at which this clock reads ``sim``."""
        return self.real0 + (sim - self.sim0) / self.speed

    @property
    def env(self) -> str:
        """The variable's value for child processes."""
        return f"{self.real0!r},{self.sim0!r},{self.speed!r}"


def from_env(environ: Mapping[str, str]) -> SimulatedClock | None:
    """The clock ``environ`` asks for, or None; UsageError for a value that does not parse."""
    text = environ.get(ENV, "").strip()
    if not text:
        return None
    try:
        real0, sim0, speed = (float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"{ENV}={text!r}: expected REAL0,SIM0,SPEED (Unix seconds, Unix seconds, a factor)") \
            from None
    if speed <= 0:
        raise UsageError(f"{ENV}={text!r}: SPEED must be positive")
    return SimulatedClock(real0, sim0, speed)


def install_from_env(environ: Mapping[str, str] = os.environ) -> SimulatedClock | None:
    """Make ``time.time`` this process's simulated clock when ``environ`` asks for one; return it."""
    clock = from_env(environ)
    if clock is not None:
        time.time = clock
    return clock
