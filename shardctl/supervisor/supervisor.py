"""The supervisor: one asyncio loop (no threads) running one worker process per shard.

``serve(config_path)`` is ``shardctl start CONFIG``: pidfile, control socket,
metrics and the status page (``shardctl.supervisor.http.statuspage``), database (embedded if
none configured; schema applied), the local feed when ``[feed]`` is set, then
every shard's worker. It runs in the foreground until SIGTERM/SIGINT or
``shardctl stop``, and returns 0 when every worker stopped cleanly (1 if any
had to be SIGKILLed).

Signals and control commands share one path (gunicorn's arbiter style): a
signal handler only queues a request, the dispatcher acts on it.

* SIGTERM/SIGINT = ``stop_all``: every shard stops in parallel under one
  deadline (``supervisor.stop_timeout``); a second signal cuts it short and
  stragglers are SIGKILLed (logged as an error).
* SIGHUP = ``reload``: re-read the config; restart the shards whose settings
  changed, start added ones, stop removed ones. ``[database]``, ``[feed]`` and
  ``[supervisor]`` changes need a supervisor restart (a warning says so).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Awaitable, Callable

from shardctl.config import load_config
from shardctl.config.model import Config
from shardctl.errors import ConfigError, ControlCode, ControlError
from shardctl.journal.space import journal_space_warnings
from shardctl.private import private_dir
from shardctl.report import ShardState, ShardStatus
from shardctl.supervisor.assets import asset_names_loop
from shardctl.supervisor.audits import AuditSchedule, schedule_for
from shardctl.supervisor.cluster import Cluster
from shardctl.supervisor.collecting import CollectionRecord
from shardctl.supervisor.control import (
    Command,
    ControlServer,
    ReloadReply,
    Reply,
    ReplyFuture,
    Request,
    ShardReply,
    StatusReply,
    StoppedReply,
    SupervisorInfo,
)
from shardctl.supervisor.http.metrics import MetricsServer
from shardctl.supervisor.http.statuspage import StatusPage
from shardctl.supervisor.pidfile import Pidfile
from shardctl.supervisor.shard import Deadline, Shard
from shardctl.supervisor.sidecars import DatabaseSetup, LocalFeed
from shardctl.supervisor.states import PROCESS_STATES

log = logging.getLogger("shardctl.supervisor")

TICK = 0.1
#: How long start/restart wait for RUNNING beyond start_grace unless the request says otherwise.
COMMAND_WAIT_EXTRA = 10.0
_DONE_STATES = frozenset({ShardState.RUNNING, ShardState.FATAL, ShardState.STOPPED})


def _use_pidfd_watcher() -> None:
    """Reap children with pidfds on the loop itself (3.11's default watcher starts a thread per child)."""
    if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(asyncio.get_running_loop())
            asyncio.set_child_watcher(watcher)


class Supervisor:
    """Owns the shards; ``run`` returns the process exit code."""

    def __init__(self, config: Config, *, log_format: str = "text") -> None:
        self.config = config
        self.log_format = log_format
        self.shards: dict[str, Shard] = {}
        self.database = DatabaseSetup(config)
        self.shutting_down = False
        self.metrics_port: int | None = None
        self.feed = LocalFeed(config.feed, log_format)
        #: Cluster mode (``[cluster]``): the lease loop that decides which shards stream on this host.
        self.cluster: Cluster | None = None
        #: ``[audit]``: the scheduled audit, and its last result for /metrics (None without the section).
        self.audits: AuditSchedule | None = None
        #: Single-host mode: which symbols it means to collect, for the audit's "off" (``supervisor.collecting``).
        self.collection: CollectionRecord | None = None
        self._shard_names: set[str] = set(config.shards)
        #: Shards that reached RUNNING since they were last started on purpose (their stretches are open).
        self._streamed: set[str] = set()
        self._queue: asyncio.Queue[tuple[Request, ReplyFuture | None, str]] | None = None
        self._done: asyncio.Event | None = None
        self._deadline: Deadline | None = None
        self._stop_waiters: list[ReplyFuture] = []
        self._reload_lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.exit_code = 0

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Start everything, serve until stopped, clean up; return 0 if every worker stopped cleanly."""
        loop = asyncio.get_running_loop()
        _use_pidfd_watcher()
        self._queue, self._done, self._reload_lock = asyncio.Queue(), asyncio.Event(), asyncio.Lock()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        sup = self.config.supervisor
        control = ControlServer(sup.control_socket, self.handle)
        page = StatusPage(lambda: self.config, lambda: self.status().to_json(), self.handle, lambda: self.database.dsn)
        metrics = MetricsServer(sup.metrics_host, sup.metrics_port, self.statuses, page.serve,
                                fail_on_stale=lambda: self.config.supervisor.healthz_fails_on_stale,
                                fail_on_slow=lambda: self.config.supervisor.healthz_fails_on_slow,
                                audit=lambda: self.audits.last if self.audits is not None else None) \
            if sup.metrics_port else None
        try:
            await control.start()
            if metrics is not None:
                page.start()
                await metrics.start()
                self.metrics_port = metrics.port
            self.database.prepare()
            await self.feed.start()
            for shard_config in self.config.shards.values():
                self.shards[shard_config.name] = self._new_shard(shard_config.name)
            if self.config.cluster is not None:
                self.cluster = Cluster(self.config.cluster, self.database.dsn, lambda: self.shards)
                for shard in self.shards.values():
                    shard.machine.stand_by(time.monotonic(), "waiting for the lease")
                self._spawn(self.cluster.run())
                log.info("cluster mode: host %s (lease ttl %gs, renewed every %gs)", self.cluster.host_id,
                         self.config.cluster.lease_ttl, self.config.cluster.renew_interval)
            else:
                for shard in self.shards.values():
                    await shard.launch(reason="supervisor started")
                self.collection = CollectionRecord(self.database.dsn, self._wanted_symbols,
                                                   lambda: sorted(self._shard_names))
            log.info("supervising %d shard(s); control socket %s", len(self.shards), sup.control_socket)
            self._spawn(self._dispatch())
            self._spawn(self._ticker())
            if self.database.needs_maintenance:
                self._spawn(self.database.maintenance_loop())
            self._spawn(asset_names_loop(self.config.path, self.database.dsn))
            self.audits = schedule_for(lambda: self.config, self.database.dsn, dict(os.environ))
            if self.audits is not None:
                self._spawn(self.audits.loop())
            await self._done.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if not self._done.is_set():  # failed while starting: leave nothing behind
                await self._stop_everything(Deadline(sup.stop_timeout))
            if self.cluster is not None:
                await self.cluster.close()
            await control.close()
            if metrics is not None:
                await metrics.close()
            page.close()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            self.database.stop_embedded()
        return self.exit_code

    def _wanted_symbols(self) -> dict[str, tuple[str, ...]]:
        """The symbols of every shard that has streamed since it was last started and is still wanted."""
        return {name: self.config.shards[name].symbols for name, shard in self.shards.items()
                if name in self._streamed and shard.machine.wanted and name in self.config.shards
                and not self.shutting_down}

    def _note_streaming(self) -> None:
        """A wanted shard that reached RUNNING starts its collection stretch; one no longer wanted ends it.

        A crash does not end a stretch (the shard stays wanted: its gap explains the minutes), a stop does.
        """
        if self.collection is None:
            return
        streaming = {n for n, s in self.shards.items() if s.machine.wanted and s.state is ShardState.RUNNING}
        # A shard under an operator's command is left to that command (it records with its own reason).
        kept = {n for n in self._streamed if n in self.shards and (self.shards[n].machine.wanted
                                                                    or self.shards[n].lock.locked())}
        if streaming - kept or kept != self._streamed:
            self._streamed = kept | streaming
            self._record_collection("streaming" if streaming - kept else "stopped")

    def _record_collection(self, reason: str) -> None:
        if self.collection is not None:
            self._spawn(self.collection.sync(reason))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _new_shard(self, name: str) -> Shard:
        return Shard(self.config.shards[name], config_path=self.config.path, dsn=self.database.dsn,
                     policy=self.config.supervisor, stop_timeout=self.config.supervisor.stop_timeout,
                     log_format=self.log_format)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        request = Request(Command.RELOAD) if signum == signal.SIGHUP else Request(Command.STOP_ALL)
        assert self._queue is not None
        self._queue.put_nowait((request, None, f"signal {name}"))

    # ------------------------------------------------------------ loops

    async def _ticker(self) -> None:
        while True:
            if not self.shutting_down:
                for shard in list(self.shards.values()):
                    shard.poll()
                self._note_streaming()
            await asyncio.sleep(TICK)

    async def _dispatch(self) -> None:
        assert self._queue is not None
        while True:
            request, reply, source = await self._queue.get()
            if request.cmd is Command.STOP_ALL:
                self._request_shutdown(reply, source)
            elif self.shutting_down:
                _fail(reply, ControlError(ControlCode.SHUTTING_DOWN, "the supervisor is shutting down"))
            elif request.cmd is Command.RELOAD:
                self._spawn(_answer(reply, self._reload(source)))
            else:
                self._spawn(_answer(reply, self._shard_command(request)))

    # ------------------------------------------------------------ control

    async def handle(self, request: Request) -> Reply:
        """The control server's handler: status is answered at once, the rest goes through the queue."""
        if request.cmd is Command.STATUS:
            return self.status(request.shard)
        assert self._queue is not None
        reply: ReplyFuture = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, reply, "control socket"))
        return await reply

    def statuses(self) -> list[ShardStatus]:
        return [self._status(shard) for shard in self.shards.values()]

    def _status(self, shard: Shard) -> ShardStatus:
        status = shard.status()
        return self.cluster.annotate(status) if self.cluster is not None else status

    def status(self, name: str | None = None) -> StatusReply:
        """Every shard, or only ``name`` (no_such_shard if unknown), and the supervisor."""
        shards = [self._status(self._shard(name))] if name else self.statuses()
        return StatusReply(tuple(shards), SupervisorInfo(
            pid=os.getpid(), config=str(self.config.path), shutting_down=self.shutting_down,
            metrics_port=self.metrics_port, feed_pid=self.feed.process.pid if self.feed.process else None,
            host_id=self.cluster.host_id if self.cluster is not None else None))

    def _shard(self, name: str | None) -> Shard:
        shard = self.shards.get(name or "")
        if shard is None:
            known = ", ".join(self.shards) or "none"
            raise ControlError(ControlCode.NO_SUCH_SHARD, f"no shard named {name!r} (known: {known})")
        return shard

    async def _shard_command(self, request: Request) -> Reply:
        shard = self._shard(request.shard)
        if shard.lock.locked():
            raise ControlError(ControlCode.BUSY, f"shard {shard.name} is busy with another command; try again")
        wait = request.timeout or (self.config.supervisor.start_grace + COMMAND_WAIT_EXTRA)
        if request.cmd is Command.MOVE:
            if self.cluster is None:
                raise ControlError(ControlCode.BAD_REQUEST, "move needs cluster mode: add a [cluster] section")
            assert request.to is not None
            return await self.cluster.move(shard, request.to, request.timeout or 2 * self.config.supervisor.stop_timeout
                                           + COMMAND_WAIT_EXTRA)
        if self.cluster is not None and request.cmd in (Command.START, Command.RESTART):
            self.cluster.check_start(shard)
        async with shard.lock:
            state = shard.state
            if request.cmd is Command.START:
                if state in PROCESS_STATES:
                    raise ControlError(ControlCode.ALREADY_RUNNING,
                                       f"shard {shard.name} is {state.value} (pid {shard.pid})")
                await shard.launch(manual=True)
                return await self._await_running(shard, wait)
            if request.cmd is Command.STOP:
                if state in (ShardState.STOPPED, ShardState.FATAL):
                    raise ControlError(ControlCode.NOT_RUNNING, f"shard {shard.name} is {state.value}, not running")
                killed = await shard.stop()
                self._streamed.discard(shard.name)
                self._record_collection("stopped by operator")
                return ShardReply(shard.status(), killed=killed)
            # restart: one lock held across stop and start, so it is atomic for other commands
            if state in PROCESS_STATES or state is ShardState.BACKOFF:
                await shard.stop(reason="restarting by operator")
            if self.shutting_down:
                raise ControlError(ControlCode.SHUTTING_DOWN, "the supervisor is shutting down")
            await shard.launch(manual=True, reason="restarted by operator")
            return await self._await_running(shard, wait)

    async def _await_running(self, shard: Shard, wait: float) -> ShardReply:
        state = await shard.wait_for(_DONE_STATES, wait)
        if state is ShardState.RUNNING:
            return ShardReply(shard.status())
        if state in (ShardState.FATAL, ShardState.STOPPED):
            raise ControlError(ControlCode.NOT_RUNNING, f"shard {shard.name} did not start: {state.value}: "
                                              f"{shard.machine.reason}")
        raise ControlError(ControlCode.TIMEOUT, f"shard {shard.name} is not RUNNING after {wait:g}s: {state.value}: "
                                      f"{shard.machine.reason}")

    # ------------------------------------------------------------ shutdown

    def _request_shutdown(self, reply: ReplyFuture | None, source: str) -> None:
        if self.shutting_down:
            if reply is None and self._deadline is not None:
                log.warning("%s again: stopping stragglers now", source)
                self._deadline.hurry()
            _fail(reply, ControlError(ControlCode.SHUTTING_DOWN, "the supervisor is already shutting down"))
            return
        if reply is not None:
            self._stop_waiters.append(reply)
        self._spawn(self._shutdown(source))

    async def _shutdown(self, source: str) -> None:
        self.shutting_down = True
        if self.cluster is not None:
            self.cluster.stopping = True  # keeps renewing while the workers drain; acquires nothing
        self._deadline = Deadline(self.config.supervisor.stop_timeout)
        log.info("%s: stopping %d shard(s) (deadline %gs)", source, len(self.shards),
                 self.config.supervisor.stop_timeout)
        killed = await self._stop_everything(self._deadline)
        if self.cluster is not None:
            await self.cluster.release_all()
        self.exit_code = 1 if killed else 0
        shards = self.statuses()
        ticks = sum(s.counters.ticks_received for s in shards)
        rows = sum(s.counters.rows_written for s in shards)
        result = StoppedReply(sorted(self.shards), killed, tuple(shards), ticks, rows)
        for waiter in self._stop_waiters:
            if not waiter.done():
                waiter.set_result(result)
        (log.error if killed else log.info)(
            "supervisor stopped %s: %d tick(s) received, %d row(s) written",
            f"(killed: {', '.join(killed)})" if killed else "cleanly", ticks, rows)
        assert self._done is not None
        self._done.set()

    async def _stop_everything(self, deadline: Deadline) -> list[str]:
        """Stop every shard in parallel under ``deadline``, then the feed; return the shards that were killed."""
        self.shutting_down = True
        names = list(self.shards)
        results = await asyncio.gather(*(self.shards[n].stop(deadline, "supervisor stopping") for n in names),
                                       return_exceptions=True)
        killed = [n for n, r in zip(names, results) if r is True]
        for name, result in zip(names, results):
            if isinstance(result, BaseException):
                log.error("stopping failed: %s", result, extra={"shard": name})
        await asyncio.gather(*(shard.close() for shard in self.shards.values()), return_exceptions=True)
        if self.collection is not None:
            await self.collection.sync("supervisor stopping")
        await self.feed.stop()
        return killed

    # ------------------------------------------------------------ reload

    async def _reload(self, source: str) -> ReloadReply:
        assert self._reload_lock is not None
        async with self._reload_lock:
            old = self.config
            try:
                new = load_config(old.path, require_env=True)
            except ConfigError as exc:
                log.error("reload (%s) failed; keeping the running config: %s", source, exc)
                raise ControlError(ControlCode.BAD_REQUEST, f"reload failed, config unchanged: {exc}") from None
            for section in ("database", "feed", "supervisor"):
                if getattr(new, section) != getattr(old, section):
                    log.warning("reload: [%s] changed; that takes effect after a supervisor restart", section)
            everything = new.source != old.source or new.tables != old.tables
            removed = [n for n in old.shards if n not in new.shards]
            added = [n for n in new.shards if n not in old.shards]
            changed = [n for n in new.shards if n in old.shards and (everything or new.shards[n] != old.shards[n])]
            # Only the symbols differ and the worker streams: it re-subscribes on its open connection.
            live = [n for n in changed if not everything and self.shards[n].state is ShardState.RUNNING
                    and dataclasses.replace(old.shards[n], symbols=new.shards[n].symbols) == new.shards[n]]
            restarted = [n for n in changed if n not in live]
            self.config = new
            log.info("reload (%s): %d added, %d removed, %d restarted, %d re-subscribed", source, len(added),
                     len(removed), len(restarted), len(live))
            for name in live:
                self.shards[name].change_symbols(new.shards[name])
            await asyncio.gather(*(self._reload_shard(n, added=n in added, removed=n in removed)
                                   for n in added + removed + restarted))
            self._shard_names |= set(new.shards)
            self._record_collection(f"reload ({source})")
            return ReloadReply(added, removed, restarted, live)

    async def _reload_shard(self, name: str, *, added: bool, removed: bool) -> None:
        if self.shutting_down:
            return
        if added:
            self.shards[name] = shard = self._new_shard(name)
            if self.cluster is not None:
                shard.machine.stand_by(time.monotonic(), "added by reload; waiting for the lease")
            else:
                await shard.launch(reason="added by reload")
            return
        shard = self.shards[name]
        async with shard.lock:
            if removed:
                await shard.stop(reason="removed by reload")
                await shard.close()
                del self.shards[name]
                return
            shard.config = self.config.shards[name]
            if shard.machine.wanted and (self.cluster is None or shard.state in PROCESS_STATES):
                await shard.stop(reason="config changed; restarting")
                if not self.shutting_down:
                    await shard.launch(manual=True, reason="config changed")


async def _answer(reply: ReplyFuture | None, work: Awaitable[Reply]) -> None:
    try:
        result = await work
    except ControlError as exc:
        _fail(reply, exc)
    except Exception as exc:
        log.exception("command failed")
        _fail(reply, ControlError(ControlCode.INTERNAL, f"internal error: {exc}"))
    else:
        if reply is not None and not reply.done():
            reply.set_result(result)


def _fail(reply: ReplyFuture | None, exc: ControlError) -> None:
    if reply is not None and not reply.done():
        reply.set_exception(exc)


def serve(config_path: str | Path, *, log_format: str = "text",
          on_ready: Callable[[Supervisor], None] | None = None) -> int:
    """``shardctl start CONFIG``: run the supervisor in the foreground; return its exit code.

    Config warnings (a password in ``database.dsn``...) are logged, one line
    each; ``STATE_DIR/run`` is made private (0700). Raises ShardctlError (one
    line) for a bad config, a supervisor already running, a port in use or an
    unreachable database.
    """
    config = load_config(config_path, require_env=True, warn=lambda w: log.warning("%s", w))
    for warning in journal_space_warnings(config):
        log.warning("%s", warning)
    private_dir(config.state_dir / "run")
    pidfile = Pidfile(config.supervisor.pidfile, config_path=str(config_path))
    pidfile.create()
    try:
        supervisor = Supervisor(config, log_format=log_format)
        if on_ready is not None:
            on_ready(supervisor)
        return asyncio.run(supervisor.run())
    finally:
        pidfile.unlink()

