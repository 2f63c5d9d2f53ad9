"""One shard's lease, seen from this host: pure logic, no I/O, an injected clock.

Every round the cluster loop (``shardctl.supervisor.cluster``) reads the
shard's lease row and hands it to ``LeaseTracker.observe(now, row)``, or
calls ``database_failed(now)`` when the database did not answer. The tracker
says what to do (``Decision``); the loop does it and reports back
(``acquired``, ``lost_race``, ``handed_over``)::

    UNKNOWN ──row: nobody owns it──▶ (ACQUIRE) ──won──▶ OWNER
       │    ──row: another host──▶ STANDBY ──owner's heartbeat still for ttl──▶ (ACQUIRE)
       │    ──row: ours (a restart)──▶ (ACQUIRE: a new epoch fences our old workers)
    OWNER ──row: another owner or epoch──▶ (STAND_BY) ──▶ STANDBY
    OWNER ──row: move_to another host──▶ (DRAIN) ──▶ HANDING_OVER ──worker gone──▶ (HAND_OVER) ──▶ STANDBY

Rules that keep the promises of the README ("Across hosts"):

* A standby takes over only after it has watched the owner's heartbeat
  counter stand still for ``ttl`` seconds of its own monotonic clock, with
  the database answering every round in between. A round without an answer
  restarts the watch: after an outage the owner, which keeps streaming into
  its journal, renews first and keeps its shards.
* Every acquisition is a compare-and-set on the epoch the tracker saw; two
  standbys racing for a shard cannot both win.
* A returning host finds another owner and stands by (no flapping). Only an
  operator's move (``move_to``) hands a shard back.
* An owner that finds the lease at a later epoch it did not take while its own
  host id is the owner (a second supervisor with the same host id) stops and
  stands by for good (``conflict``) instead of fighting for it.
* An owner that finds its lease at an *earlier* epoch (the database went back
  in time: failover to an asynchronous standby, restore) takes a new epoch
  and restarts its worker; an older row naming another host makes that host
  the owner again (it re-acquires as "the lease names this host", or, dead,
  is taken over after the TTL). The fence checks owner and epoch in every
  batch's transaction on the database that takes the write, so two hosts
  never commit one shard.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shardctl.db.leases import LeaseRow
from shardctl.report import Role


class Act(enum.Enum):
    NONE = "none"
    ACQUIRE = "acquire"        #: compare-and-set the lease at ``expected_epoch`` (None: create the row)
    START = "start"            #: we own it at ``epoch``: run the worker
    STAND_BY = "stand_by"      #: stop our worker (if any) and stand by
    DRAIN = "drain"            #: stop our worker gracefully, then report ``drained``
    HAND_OVER = "hand_over"    #: give the lease at ``epoch`` to ``to``


@dataclass(frozen=True, slots=True)
class Decision:
    act: Act
    reason: str = ""
    expected_epoch: int | None = None
    epoch: int | None = None
    to: str | None = None


NOTHING = Decision(Act.NONE)


class LeaseTracker:
    """What this host should do about one shard's lease, round by round (see the module doc)."""

    def __init__(self, shard: str, host_id: str, ttl: float) -> None:
        self.shard = shard
        self.host_id = host_id
        self.ttl = ttl
        self.role = Role.UNKNOWN
        self.epoch: int | None = None
        #: The last lease row read (None before the first answer or when the shard has no row yet).
        self.row: LeaseRow | None = None
        self.conflict = False
        #: (owner, epoch, heartbeat) being watched, and since when (monotonic) it has not moved.
        self._watched: tuple[str | None, int, int | None] | None = None
        self._still_since: float | None = None
        self._drained = False

    # ------------------------------------------------------------ observations

    def database_failed(self, now: float) -> None:
        """No answer this round: forget the watch, so an outage never counts as the owner's silence."""
        self._watched = None
        self._still_since = None

    def observe(self, now: float, row: LeaseRow | None) -> Decision:
        """The shard's lease row as read this round (None: no row yet); what to do about it."""
        self.row = row
        if row is None or row.owner is None:
            if self.role is Role.OWNER:  # a row we owned was cleared by hand: stop, then compete
                return self._lose("the lease was released by someone else")
            return Decision(Act.ACQUIRE, "nobody holds the lease", expected_epoch=None if row is None else row.epoch)
        if row.owner == self.host_id and row.epoch == self.epoch and self.role in (Role.OWNER, Role.HANDING_OVER):
            return self._as_owner(row)
        if self.role in (Role.OWNER, Role.HANDING_OVER):
            if row.owner == self.host_id and self.epoch is not None and row.epoch < self.epoch:
                # Epochs only go up: the database went back in time (a failover to an asynchronous standby,
                # a restore). Still ours: take a new epoch (our running worker, fenced by the older row, is
                # replaced). Whichever host the older row names is the one owner: no one is stranded.
                return Decision(Act.ACQUIRE, f"the lease went back from epoch {self.epoch} to {row.epoch} "
                                             "(the database went back in time)", expected_epoch=row.epoch)
            if row.owner == self.host_id:
                self.conflict = True
                return self._lose(f"another supervisor with host id {self.host_id} took the lease (epoch "
                                  f"{row.epoch}); host ids must be unique: standing by")
            return self._lose(f"{row.owner} holds the lease now (epoch {row.epoch})")
        if row.owner == self.host_id and not self.conflict:
            # Ours from before (this supervisor restarted) or handed to us by a move: take a new epoch,
            # which fences any worker still running under the old one.
            return Decision(Act.ACQUIRE, "the lease names this host", expected_epoch=row.epoch)
        self.role = Role.STANDBY
        return self._watch(now, row)

    def _as_owner(self, row: LeaseRow) -> Decision:
        if self.role is Role.OWNER and row.move_to is not None and row.move_to != self.host_id:
            self.role = Role.HANDING_OVER
            self._drained = False
            return Decision(Act.DRAIN, f"moving to {row.move_to} by operator", to=row.move_to)
        if self.role is Role.HANDING_OVER and self._drained:
            return Decision(Act.HAND_OVER, f"handing over to {row.move_to}", epoch=self.epoch, to=row.move_to)
        return NOTHING

    def _lose(self, reason: str) -> Decision:
        self.role = Role.STANDBY
        self.epoch = None
        self._watched = self._still_since = None
        return Decision(Act.STAND_BY, reason)

    def _watch(self, now: float, row: LeaseRow) -> Decision:
        key = (row.owner, row.epoch, row.owner_heartbeat)
        if key != self._watched or self._still_since is None:
            self._watched, self._still_since = key, now
            return NOTHING
        silent = now - self._still_since
        if silent >= self.ttl:
            return Decision(Act.ACQUIRE, f"{row.owner}'s heartbeat stood still for {silent:.1f}s",
                            expected_epoch=row.epoch)
        return NOTHING

    # ------------------------------------------------------------ outcomes

    def acquired(self, epoch: int) -> Decision:
        """Our compare-and-set won: we own the shard at ``epoch``; start the worker."""
        self.role, self.epoch = Role.OWNER, epoch
        self._watched = self._still_since = None
        return Decision(Act.START, f"lease acquired (epoch {epoch})", epoch=epoch)

    def lost_race(self) -> None:
        """Our compare-and-set found another epoch: someone else moved first; watch again from now."""
        self.role = Role.STANDBY
        self._watched = self._still_since = None

    def drained(self) -> None:
        """Our worker is gone after a DRAIN: the next round hands the lease over."""
        self._drained = True

    def handed_over(self) -> None:
        """The lease is the move's target's now (or was never ours any more): stand by."""
        self.role = Role.STANDBY
        self.epoch = None
        self._drained = False
        self._watched = self._still_since = None
