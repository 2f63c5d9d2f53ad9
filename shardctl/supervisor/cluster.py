"""Cluster mode: this host's lease loop, on the supervisor's asyncio loop.

Every ``renew_interval`` the loop moves this host's heartbeat, reads every
configured shard's lease (``shardctl.db.leases.LeaseStore``), lets each
shard's ``LeaseTracker`` (``shardctl.supervisor.lease``) decide, and acts:
acquire a lease and start the worker with its epoch, stop a worker whose
lease is gone (its exit leads to STANDBY), drain and hand over for an
operator's move. Stopping a worker takes up to its ``stop_timeout``, so it
runs as a task of its own: the heartbeat never waits for a worker.

A database that does not answer is not a reason to stop anything: workers
keep streaming into their journals, and the trackers restart their watch.
On a graceful supervisor stop, after the workers have drained,
``release_all`` gives up this host's leases so a standby takes them at its
next round instead of after the TTL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping

from shardctl.config.model import ClusterConfig
from shardctl.db.leases import ClusterView, LeaseStore
from shardctl.errors import ControlCode, ControlError, DatabaseError
from shardctl.report import Role, ShardState, ShardStatus
from shardctl.supervisor.control import MoveReply
from shardctl.supervisor.lease import Act, Decision, LeaseTracker
from shardctl.supervisor.shard import Shard
from shardctl.supervisor.states import PROCESS_STATES

log = logging.getLogger("shardctl.supervisor")


class Cluster:
    """The lease loop for the shards of ``shards()``; ``annotate`` adds the cluster view to a status."""

    def __init__(self, config: ClusterConfig, dsn: str, shards: Callable[[], Mapping[str, Shard]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.host_id = config.host_id
        self.store = LeaseStore(dsn, config.host_id)
        self.shards = shards
        self.clock = clock
        self.trackers: dict[str, LeaseTracker] = {}
        self.view: ClusterView | None = None
        self.database_ok = False
        self._busy: dict[str, asyncio.Task[Any]] = {}
        #: Set by a graceful supervisor stop: keep renewing while workers drain, decide nothing more.
        self.stopping = False
        self._changed = asyncio.Event()

    def tracker(self, name: str) -> LeaseTracker:
        tracker = self.trackers.get(name)
        if tracker is None:
            tracker = self.trackers[name] = LeaseTracker(name, self.host_id, self.config.lease_ttl)
        return tracker

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Rounds every ``renew_interval`` until cancelled."""
        while True:
            started = self.clock()
            await self.round()
            await asyncio.sleep(max(0.05, self.config.renew_interval - (self.clock() - started)))

    async def round(self) -> None:
        """One renewal, one read, one decision per shard."""
        shards = dict(self.shards())
        try:
            await self.store.renew(os.getpid())
            view = await self.store.view(list(shards), self.config.lease_ttl)
        except DatabaseError as exc:
            if self.database_ok:
                log.warning("cluster: cannot reach the database (%s); shards keep streaming here, nobody "
                            "takes over until it answers again", exc)
            self.database_ok = False
            now = self.clock()
            for name in shards:
                self.tracker(name).database_failed(now)
            return
        if not self.database_ok:
            log.info("cluster: the database answers; host %s renewing its heartbeat", self.host_id)
        self.database_ok, self.view = True, view
        if self.stopping:
            return
        now = self.clock()
        for name, shard in shards.items():
            if name in self._busy:
                continue  # a worker of this shard is being stopped; decide again once it is gone
            tracker = self.tracker(name)
            decision = tracker.observe(now, view.leases.get(name))
            if decision.act is Act.NONE and tracker.role is Role.OWNER and shard.state is ShardState.FATAL:
                # Failing here for good: give the shard to whichever standby comes first.
                decision = Decision(Act.HAND_OVER, "the shard is FATAL here", epoch=tracker.epoch, to=None)
            await self._act(shard, decision)
        self._changed.set()
        self._changed = asyncio.Event()

    async def _act(self, shard: Shard, decision: Decision) -> None:
        tracker = self.tracker(shard.name)
        if decision.act is Act.ACQUIRE:
            if shard.state is ShardState.FATAL or (shard.state is ShardState.STOPPED and not shard.machine.wanted):
                return  # stopped here by the operator, or failing here: let another host have it
            try:
                epoch = await self.store.acquire(shard.name, decision.expected_epoch)
            except DatabaseError as exc:
                log.warning("cannot take the lease (%s); trying again", exc, extra={"shard": shard.name})
                return
            if epoch is None:
                tracker.lost_race()
                return
            log.warning("lease acquired at epoch %d: %s", epoch, decision.reason, extra={"shard": shard.name})
            decision = tracker.acquired(epoch)
        if decision.act is Act.START:
            assert decision.epoch is not None
            self._in_background(shard, self._start(shard, decision.epoch, decision.reason))
        elif decision.act is Act.STAND_BY:
            log.warning("standing by: %s", decision.reason, extra={"shard": shard.name})
            self._in_background(shard, shard.stand_by(decision.reason))
        elif decision.act is Act.DRAIN:
            log.info("%s: draining the worker before the handover", decision.reason, extra={"shard": shard.name})
            self._in_background(shard, self._drain(shard, tracker, decision.reason))
        elif decision.act is Act.HAND_OVER:
            assert decision.epoch is not None
            try:
                given = await self.store.hand_over(shard.name, decision.epoch, decision.to)
            except DatabaseError as exc:
                log.warning("cannot hand the lease over (%s); trying again", exc, extra={"shard": shard.name})
                return
            log.info("lease handed over to %s" if given else "the lease was no longer ours to hand to %s",
                     decision.to, extra={"shard": shard.name})
            tracker.handed_over()

    def _in_background(self, shard: Shard, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        name = shard.name
        self._busy[name] = task

        def done(_task: asyncio.Task[Any]) -> None:
            self._busy.pop(name, None)

        task.add_done_callback(done)

    async def _start(self, shard: Shard, epoch: int, reason: str) -> None:
        async with shard.lock:
            if shard.state in PROCESS_STATES:  # a worker under an older epoch of ours: it is fenced; replace it
                await shard.stand_by("the lease has a new epoch")
            shard.lease_epoch = epoch
            await shard.launch(reason=reason)

    async def _drain(self, shard: Shard, tracker: LeaseTracker, reason: str) -> None:
        async with shard.lock:
            await shard.stand_by(reason)
        tracker.drained()

    async def release_all(self, timeout: float = 3.0) -> None:
        """After a graceful stop: give up every lease this host holds, so standbys take over at once."""
        owned = [(name, t.epoch) for name, t in self.trackers.items() if t.role is Role.OWNER and t.epoch]
        for name, epoch in owned:
            assert epoch is not None
            try:
                await asyncio.wait_for(self.store.hand_over(name, epoch, None), timeout)
                log.info("lease released", extra={"shard": name})
            except (DatabaseError, asyncio.TimeoutError, TimeoutError) as exc:
                log.warning("could not release the lease (%s); a standby takes over after the TTL",
                            exc, extra={"shard": name})
        self.store.close()

    async def close(self) -> None:
        for task in list(self._busy.values()):
            task.cancel()
        await asyncio.gather(*self._busy.values(), return_exceptions=True)
        self.store.close()

    # ------------------------------------------------------------ operator and status

    def check_start(self, shard: Shard) -> None:
        """An operator's start/restart: ControlError unless this host holds the shard's lease."""
        tracker = self.tracker(shard.name)
        if tracker.role is not Role.OWNER:
            owner = tracker.row.owner if tracker.row is not None else None
            raise ControlError(ControlCode.NOT_RUNNING,
                               f"shard {shard.name} is streamed by {owner or 'another host'}, not {self.host_id}; "
                               f"move it here with `shardctl move {shard.name} --to {self.host_id}`")

    async def move(self, shard: Shard, to: str, wait: float) -> MoveReply:
        """Ask the owner to drain and hand ``shard`` to host ``to``; wait up to ``wait`` s for ``to`` to own it."""
        view = self.view
        hosts = view.hosts if view is not None else {}
        if to not in hosts or not hosts[to].fresh:
            live = ", ".join(h for h, row in hosts.items() if row.fresh) or "none"
            raise ControlError(ControlCode.BAD_REQUEST, f"host {to!r} is not standing by (live hosts: {live})")
        row = self.tracker(shard.name).row
        if row is not None and row.owner == to:
            raise ControlError(ControlCode.BAD_REQUEST, f"shard {shard.name} is already streamed by {to}")
        try:
            owner = await self.store.request_move(shard.name, to)
        except DatabaseError as exc:
            raise ControlError(ControlCode.NOT_RUNNING, f"cannot move shard {shard.name}: {exc}") from None
        log.info("move to %s requested (owner %s)", to, owner, extra={"shard": shard.name})
        deadline = self.clock() + wait
        while self.clock() < deadline:
            row = self.tracker(shard.name).row
            if row is not None and row.owner == to and row.move_to is None:
                return MoveReply(shard.name, owner, to, row.epoch)
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), max(0.0, deadline - self.clock()))
            except (asyncio.TimeoutError, TimeoutError):
                break
        raise ControlError(ControlCode.TIMEOUT, f"shard {shard.name}: the move to {to} was asked for, but {to} "
                                                f"does not hold the lease after {wait:g}s (see `shardctl status`)")

    def annotate(self, status: ShardStatus) -> ShardStatus:
        """``status`` with who streams the shard and who stands by, as this host last read it."""
        tracker = self.tracker(status.name)
        row = tracker.row
        owner = row.owner if row is not None else None
        hosts = self.view.hosts if self.view is not None else {}
        standby = tuple(h for h, r in hosts.items() if r.fresh and h != owner)
        return dataclasses.replace(status, host_id=self.host_id, lease_role=tracker.role,
                                   lease_owner=owner, lease_epoch=row.epoch if row is not None else None,
                                   standby_hosts=standby, lease_database_ok=self.database_ok)
