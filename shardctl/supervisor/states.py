"""The shard state machine and its restart policy: pure logic, no I/O.

Modelled on supervisord's ``states.py``/``process.py``: an explicit enum, a
table of allowed moves and one guarded ``transition()`` that raises
``IllegalTransition`` on any other move. Every method takes ``now`` (seconds
on a monotonic clock), so tests drive it with a fake clock and never sleep::

    STOPPED ──start──▶ STARTING ──ready / start_grace──▶ RUNNING
                          │                                 │
                          │ exit (unrequested)              │ exit, or heartbeats lost
                          ▼                                 ▼   (→ STOPPING first)
     FATAL ◀──too many── BACKOFF ──delay elapsed──▶ STARTING
       ▲      failures
       └── exit code 2 (configuration error), at once

    STARTING/RUNNING ──stop──▶ STOPPING ──exit──▶ STOPPED
    BACKOFF ──stop──▶ STOPPED            FATAL ──manual start──▶ STARTING

There is no EXITED state: a streaming worker never finishes on purpose, so
any exit the supervisor did not ask for is a failure (BACKOFF or FATAL),
except a fenced one (below).

Cluster mode (``[cluster]``) adds STANDBY: the shard is wanted, but another
host holds its lease and streams it; no worker runs here and no websocket is
open. The lease (``shardctl.supervisor.lease``) moves the shard in and out::

    STOPPED ──stand by──▶ STANDBY ──lease acquired──▶ STARTING
    STARTING/RUNNING ──lease lost / moved──▶ STOPPING ──exit──▶ STANDBY
    STARTING/RUNNING ──worker exits 3 (fenced)──▶ STANDBY
    BACKOFF/FATAL ──lease lost──▶ STANDBY        STANDBY ──stop──▶ STOPPED
"""

from __future__ import annotations

import enum
import random
from collections import deque
from typing import Callable

from shardctl.backoff import Backoff
from shardctl.config.model import SupervisorConfig
from shardctl.errors import EXIT_CONFIG, EXIT_FENCED
from shardctl.report import ShardState

S = ShardState
#: Every legal move; anything else is a bug and raises IllegalTransition.
ALLOWED: dict[ShardState, frozenset[ShardState]] = {
    S.STOPPED: frozenset({S.STARTING, S.STANDBY}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.STOPPING, S.FATAL, S.STANDBY}),
    S.RUNNING: frozenset({S.BACKOFF, S.STOPPING, S.FATAL, S.STANDBY}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.FATAL, S.STANDBY}),
    S.STOPPING: frozenset({S.STOPPED, S.BACKOFF, S.FATAL, S.STANDBY}),
    S.FATAL: frozenset({S.STARTING, S.STANDBY}),
    S.STANDBY: frozenset({S.STARTING, S.STOPPED}),
}
#: States in which a worker process exists (or is being waited for).
PROCESS_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING})


class IllegalTransition(RuntimeError):
    """A move the table above does not allow (a programming error, never a user error)."""


class Action(enum.Enum):
    """What ``ShardMachine.poll`` asks the process layer to do."""

    NONE = "none"
    SPAWN = "spawn"          #: the backoff delay is over: start a worker
    TERMINATE = "terminate"  #: heartbeats stopped: send SIGTERM (the machine is already STOPPING)


#: Called after every transition with (machine, old state, new state, reason).
Listener = Callable[["ShardMachine", ShardState, ShardState, str], None]


class ShardMachine:
    """One shard's lifecycle. Holds no process; the caller does the I/O and reports events.

    Event methods (``spawned``, ``heartbeat``, ``ready``, ``exited``,
    ``stop_requested``) move the state; ``poll(now)`` handles the clock-driven
    moves (start grace, heartbeat loss, backoff expiry) and says what to do.
    """

    def __init__(self, name: str, policy: SupervisorConfig, *, listener: Listener | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.name = name
        self.policy = policy
        self.state = ShardState.STOPPED
        self.reason = "not started"
        self.since: float | None = None
        self.listener = listener
        self.backoff = Backoff(policy.restart_initial, max(policy.restart_max, policy.restart_initial),
                               reset_after=policy.healthy_after, rng=rng)
        self.failure_times: deque[float] = deque()
        self.spawns = 0
        self.started_at: float | None = None
        self.running_since: float | None = None
        self.last_heartbeat: float | None = None
        self.backoff_until: float | None = None
        self._stop_is_failure = False
        self._stop_to_standby = False
        #: True while the operator wants this shard running (start), False after stop.
        self.wanted = False

    # ------------------------------------------------------------ core

    def transition(self, new: ShardState, now: float, reason: str) -> None:
        """Move to ``new`` or raise IllegalTransition; tells the listener."""
        old = self.state
        if new not in ALLOWED[old]:
            raise IllegalTransition(f"shard {self.name}: {old.value} -> {new.value} is not allowed ({reason})")
        self.state = new
        self.reason = reason
        self.since = now
        if self.listener is not None:
            self.listener(self, old, new, reason)

    @property
    def restarts(self) -> int:
        """How many workers were started after the first one."""
        return max(0, self.spawns - 1)

    def failures_in_window(self, now: float) -> int:
        while self.failure_times and now - self.failure_times[0] > self.policy.failure_window:
            self.failure_times.popleft()
        return len(self.failure_times)

    # ------------------------------------------------------------ events

    def spawned(self, now: float, *, manual: bool = False, reason: str = "") -> None:
        """A worker is being started: STOPPED/BACKOFF/FATAL → STARTING.

        ``manual`` (an operator's start/restart) forgets past failures and the
        backoff, so a FATAL shard gets a fresh budget.
        """
        if manual:
            self.failure_times.clear()
            self.backoff.reset()
        self.wanted = True
        self.spawns += 1
        self.started_at = now
        self.last_heartbeat = now
        self.running_since = None
        self.backoff_until = None
        self._stop_is_failure = False
        self._stop_to_standby = False
        self.transition(ShardState.STARTING, now, reason or ("started by operator" if manual else "starting"))

    def heartbeat(self, now: float) -> None:
        """A stats line arrived: the worker is alive."""
        self.last_heartbeat = now

    def ready(self, now: float) -> None:
        """The worker says it is connected and subscribed: STARTING → RUNNING (no-op otherwise)."""
        self.last_heartbeat = now
        if self.state is ShardState.STARTING:
            self._run(now, "worker reported ready")

    def _run(self, now: float, reason: str) -> None:
        self.running_since = now
        self.backoff.succeeded(now)
        self.transition(ShardState.RUNNING, now, reason)

    def stop_requested(self, now: float, reason: str = "stopped by operator") -> bool:
        """The operator wants the shard stopped.

        Returns True when a worker must be sent SIGTERM (now STOPPING), False
        when there is none (BACKOFF → STOPPED, or already STOPPED/FATAL/STOPPING).
        """
        self.wanted = False
        self._stop_to_standby = False
        if self.state in (ShardState.STARTING, ShardState.RUNNING):
            self._stop_is_failure = False
            self.transition(ShardState.STOPPING, now, reason)
            return True
        if self.state in (ShardState.BACKOFF, ShardState.STANDBY):
            self.backoff_until = None
            self.transition(ShardState.STOPPED, now, reason)
        elif self.state is ShardState.STOPPING:
            self._stop_is_failure = False
        return False

    def stand_by(self, now: float, reason: str) -> bool:
        """Cluster mode: another host streams the shard (or will): no worker here, still wanted.

        Returns True when a worker must be sent SIGTERM (now STOPPING; it drains
        and commits what its lease still allows, and its exit leads to STANDBY),
        False when there is none (STOPPED/BACKOFF/FATAL → STANDBY at once;
        already STANDBY or STOPPING: no change but the destination).
        """
        self.wanted = True
        if self.state in (ShardState.STARTING, ShardState.RUNNING):
            self._stop_is_failure = False
            self._stop_to_standby = True
            self.transition(ShardState.STOPPING, now, reason)
            return True
        if self.state is ShardState.STOPPING:
            self._stop_is_failure = False
            self._stop_to_standby = True
        elif self.state in (ShardState.STOPPED, ShardState.BACKOFF, ShardState.FATAL):
            self.backoff_until = None
            self.transition(ShardState.STANDBY, now, reason)
        return False

    def exited(self, now: float, returncode: int | None) -> None:
        """The worker process is gone; decide STOPPED, BACKOFF or FATAL.

        An exit during a requested stop is clean (STOPPED). Exit code 2 is a
        configuration error: FATAL at once. Anything else counts as a failure:
        ``max_failures`` of them within ``failure_window`` make the shard
        FATAL; otherwise BACKOFF for the next backoff delay.
        """
        how = describe_exit(returncode)
        if self.state is ShardState.STOPPING and self._stop_to_standby:
            self._stop_to_standby = False
            self.transition(ShardState.STANDBY, now, f"worker stopped ({how}); {self.reason}")
            return
        if self.state is ShardState.STOPPING and not self._stop_is_failure:
            self.transition(ShardState.STOPPED, now, f"worker stopped ({how})")
            return
        if self.state not in PROCESS_STATES:
            raise IllegalTransition(f"shard {self.name}: worker exit reported in state {self.state.value}")
        if returncode == EXIT_FENCED:  # not a failure: the lease is another host's, which streams the shard
            self.transition(ShardState.STANDBY, now, "fenced: another host holds the lease; standing by")
            return
        cause = "heartbeats stopped" if self._stop_is_failure else how
        if returncode == EXIT_CONFIG:  # the worker says its configuration is wrong: retrying cannot help
            self.transition(ShardState.FATAL, now, f"configuration error ({how}); fix the config, then start")
            return
        self.failure_times.append(now)
        count = self.failures_in_window(now)
        if count >= self.policy.max_failures:
            self.transition(ShardState.FATAL, now,
                            f"{count} failures within {self.policy.failure_window:g}s (last: {cause}); "
                            f"start it again by hand")
            return
        delay = self.backoff.failed(now)
        self.backoff_until = now + delay
        self.transition(ShardState.BACKOFF, now, f"{cause}; restarting in {delay:.1f}s")

    # ------------------------------------------------------------ clock

    def poll(self, now: float) -> Action:
        """Apply the clock-driven moves and return what the process layer must do."""
        if self.state is ShardState.STARTING and self.started_at is not None \
                and now - self.started_at >= self.policy.start_grace:
            self._run(now, f"alive after start_grace ({self.policy.start_grace:g}s)")
        if self.state is ShardState.RUNNING and self.last_heartbeat is not None \
                and now - self.last_heartbeat >= self.policy.heartbeat_timeout:
            self._stop_is_failure = True
            self.transition(ShardState.STOPPING, now,
                            f"no heartbeat for {now - self.last_heartbeat:.1f}s; stopping the worker")
            return Action.TERMINATE
        if self.state is ShardState.BACKOFF and self.backoff_until is not None and now >= self.backoff_until:
            return Action.SPAWN
        return Action.NONE


def describe_exit(returncode: int | None) -> str:
    """``exit code 1`` / ``killed by SIGKILL`` / ``exit status unknown``."""
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        import signal
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"
