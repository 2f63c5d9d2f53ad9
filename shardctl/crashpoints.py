"""Deliberate crashes for fault-injection tests: ``SHARDCTL_CRASH_AT=POINT[:N]``.

With the variable set, the N-th time (default 1st) the process reaches
``crash_point(POINT)`` it SIGKILLs itself: no cleanup, no flush, exactly
like a power cut of that one process. Unset (always, in production), a
crash point costs one comparison.

Points: ``after_copy`` (rows copied, transaction not committed),
``after_commit`` (batch committed, journal not yet told).
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("SHARDCTL_CRASH_AT", "")
_point, _, _count = _spec.partition(":")
_remaining = int(_count) if _count.isdigit() else 1


def crash_point(name: str) -> None:
    """SIGKILL this process if SHARDCTL_CRASH_AT names ``name`` and its count is reached."""
    global _remaining
    if name != _point:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
