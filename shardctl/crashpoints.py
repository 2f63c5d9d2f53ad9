"""Deliberate crashes for fault-injection tests: ``SHARDCTL_CRASH_AT=POINT[:N]``.

The worker's ``main`` reads the variable once and hands a ``CrashPoints`` to
the parts that have crash points. The N-th time (default 1st) such a part
reaches the named point, the process SIGKILLs itself: no cleanup, no flush,
exactly like a power cut of that one process. ``NO_CRASHES`` (always, in
production) costs one comparison per point.

Points: ``after_copy`` (rows copied, transaction not committed),
``after_commit`` (batch committed, journal not yet told).
"""

from __future__ import annotations

import os
import signal

ENV = "SHARDCTL_CRASH_AT"
POINTS = frozenset({"after_copy", "after_commit"})


class CrashPoints:
    """Where this process kills itself: one named point, on its N-th visit."""

    def __init__(self, spec: str = "") -> None:
        point, _, count = spec.partition(":")
        if point and point not in POINTS:
            raise ValueError(f"{ENV}={spec!r}: unknown crash point; known: {', '.join(sorted(POINTS))}")
        self.point = point
        self._remaining = int(count) if count.isdigit() else 1

    def reach(self, name: str) -> None:
        """SIGKILL this process if ``name`` is the armed point and its count is reached."""
        if name != self.point:
            return
        self._remaining -= 1
        if self._remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


NO_CRASHES = CrashPoints()
