"""Capped, jittered exponential backoff that resets after a healthy period.

Pure: every method takes ``now`` (seconds, any monotonic clock), so tests
inject the clock and never sleep. Used for websocket reconnects, database
retries and worker restarts.
"""

from __future__ import annotations

import random
from typing import Callable


class Backoff:
    """Delays grow ``initial * multiplier**n`` up to ``maximum``, each varied by ±``jitter``.

    ``succeeded(now)`` marks the start of a healthy period; a failure that
    comes ``reset_after`` seconds or more after it starts again from
    ``initial``. A failure sooner keeps growing the delay.
    """

    def __init__(self, initial: float, maximum: float, *, multiplier: float = 2.0, jitter: float = 0.1,
                 reset_after: float = 60.0, rng: Callable[[], float] = random.random) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"need 0 < initial <= maximum, got initial={initial}, maximum={maximum}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self.reset_after = reset_after
        self._rng = rng
        self.failures = 0
        self._healthy_since: float | None = None

    def succeeded(self, now: float) -> None:
        """Record that the guarded thing works as of ``now``.

        Only the first success after a failure starts the healthy period; the
        successes that follow it do not move its start, so callers may report
        every success.
        """
        if self._healthy_since is None:
            self._healthy_since = now

    def failed(self, now: float) -> float:
        """Record a failure at ``now`` and return how long to wait before the next attempt."""
        if self._healthy_since is not None and now - self._healthy_since >= self.reset_after:
            self.failures = 0
        self._healthy_since = None
        base = min(self.maximum, self.initial * self.multiplier ** self.failures)
        self.failures += 1
        spread = 1.0 + self.jitter * (2.0 * self._rng() - 1.0)
        return min(self.maximum, base * spread)

    def reset(self) -> None:
        """Forget all failures (a manual start)."""
        self.failures = 0
        self._healthy_since = None
