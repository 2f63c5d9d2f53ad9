"""One shard under the supervisor: its worker process, its report pipe, its totals.

``Shard`` does the I/O for a ``ShardMachine`` (``shardctl.states``): it
execs ``python -m shardctl.worker`` in a new session with a pipe for the
worker's reports (``shardctl.report``), feeds ready and stats reports and the exit status to
the machine, and keeps per-shard counter totals across worker restarts (a
counter never goes down while the supervisor lives). ``lock`` serialises
operator commands on the shard: a command that finds it held answers busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from shardctl.config.model import ShardConfig, SupervisorConfig
from shardctl.db.leases import LEASE_EPOCH_ENV
from shardctl.logs import mask_secrets
from shardctl.report import Counters, ReadyReport, ShardState, ShardStatus, WorkerReport, decode_report
from shardctl.supervisor.states import PROCESS_STATES, Action, ShardMachine, describe_exit

log = logging.getLogger("shardctl.supervisor")

REPORT_LINE_LIMIT = 1 << 20
#: ticks/s in ``status`` is measured over this many seconds.
RATE_WINDOW = 10.0


class Deadline:
    """A stop deadline shared by several shards; ``hurry()`` moves it to now (a second signal)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.at = clock() + seconds
        self.changed = asyncio.Event()

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    def hurry(self) -> None:
        self.at = min(self.at, self.clock())
        self.changed.set()


def worker_command(config_path: Path, shard: str, log_format: str) -> list[str]:
    """The worker's argv (the contract in ``shardctl.worker``)."""
    return [sys.executable, "-m", "shardctl.worker", "--config", str(config_path), "--shard", shard,
            "--log-format", log_format]


class Shard:
    """A supervised shard; the supervisor calls ``launch``, ``poll``, ``stop`` and reads ``status``."""

    def __init__(self, config: ShardConfig, *, config_path: Path, dsn: str, policy: SupervisorConfig,
                 stop_timeout: float, log_format: str = "text") -> None:
        self.config = config
        self.name = config.name
        self.config_path = config_path
        self.dsn = dsn
        self.stop_timeout = stop_timeout
        self.log_format = log_format
        self.machine = ShardMachine(config.name, policy, listener=self._log_transition)
        self.lock = asyncio.Lock()
        self.process: asyncio.subprocess.Process | None = None
        #: The current worker's last report (None until its first, and without a worker).
        self.report: WorkerReport | None = None
        #: Counters of the shard's past worker processes, added up.
        self.past: Counters = Counters()
        #: The last report of the last worker that exited: its times and error stay visible.
        self.last_report: WorkerReport = WorkerReport()
        self.last_exit: str | None = None
        #: Cluster mode: the epoch of the lease this host holds for the shard, handed to its workers.
        self.lease_epoch: int | None = None
        self._changed = asyncio.Event()
        self._exited: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rate: deque[tuple[float, float]] = deque()

    # ------------------------------------------------------------ observation

    @property
    def state(self) -> ShardState:
        return self.machine.state

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _log_transition(self, machine: ShardMachine, old: ShardState, new: ShardState, reason: str) -> None:
        level = logging.ERROR if new is ShardState.FATAL else \
            logging.WARNING if new is ShardState.BACKOFF else logging.INFO
        pid = f" (pid {self.pid})" if self.pid is not None and new in PROCESS_STATES else ""
        log.log(level, "%s -> %s%s: %s", old.value, new.value, pid, reason, extra={"shard": self.name})
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, states: frozenset[ShardState] | set[ShardState], timeout: float) -> ShardState:
        """Wait until the shard is in one of ``states`` or ``timeout`` passes; return the state then."""
        loop_deadline = time.monotonic() + timeout
        while self.state not in states:
            remaining = loop_deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.state

    def status(self) -> ShardStatus:
        """A snapshot: state, pid, uptime, restarts, counters added up across restarts; text is masked."""
        m = self.machine
        now_mono, now = time.monotonic(), time.time()
        current = self.report if self.process is not None else None
        last = self.last_report
        if current is None:
            worker = WorkerReport(last_tick_at=last.last_tick_at, last_event_ts=last.last_event_ts,
                                  last_error=last.last_error)
        else:  # the current worker's error, not a past one's; its times, or the last known ones
            worker = dataclasses.replace(
                current, counters=Counters(),
                last_tick_at=current.last_tick_at if current.last_tick_at is not None else last.last_tick_at,
                last_event_ts=current.last_event_ts if current.last_event_ts is not None else last.last_event_ts)
        if worker.last_error:
            worker = dataclasses.replace(worker, last_error=mask_secrets(worker.last_error))
        alive = self.process is not None and m.started_at is not None
        return ShardStatus(
            name=self.name,
            state=m.state,
            reason=mask_secrets(m.reason) if m.reason else m.reason,
            wanted=m.wanted,
            pid=self.pid,
            since=None if m.since is None else now - (now_mono - m.since),
            uptime=(now_mono - m.started_at) if alive and m.started_at is not None else None,
            restarts=m.restarts,
            failures=m.failures_in_window(now_mono),
            symbols=len(self.config.symbols),
            ticks_per_second=round(self.ticks_per_second(), 2),
            last_exit=self.last_exit,
            counters=self.past + (current.counters if current is not None else Counters()),
            worker=worker,
        )

    # ------------------------------------------------------------ process

    async def launch(self, *, manual: bool = False, reason: str = "", after_backoff: bool = False) -> None:
        """Start a worker now (STOPPED/BACKOFF/FATAL → STARTING); a failed exec counts as a crash.

        ``after_backoff`` launches (queued by the clock) do nothing if the shard
        left BACKOFF meanwhile (an operator's stop came first). A stop that
        arrives while the worker is being exec'd terminates it as soon as it exists.
        """
        if after_backoff and self.machine.state is not ShardState.BACKOFF:
            return
        now = time.monotonic()
        self.machine.spawned(now, manual=manual, reason=reason)
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "SHARDCTL_DSN": self.dsn, "SHARDCTL_REPORT_FD": str(write_fd)}
        if self.lease_epoch is not None:
            env[LEASE_EPOCH_ENV] = str(self.lease_epoch)
        try:
            process = await asyncio.create_subprocess_exec(
                *worker_command(self.config_path, self.name, self.log_format), env=env, pass_fds=(write_fd,),
                start_new_session=True, stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            log.error("cannot exec the worker: %s", exc.strerror, extra={"shard": self.name})
            self.last_exit = f"exec failed: {exc.strerror}"
            self.machine.exited(time.monotonic(), None)
            return
        os.close(write_fd)
        self.process = process
        self.report = None
        self._exited = asyncio.Event()
        log.info("worker started (pid %d)", process.pid, extra={"shard": self.name})
        self._spawn_task(self._watch(process, read_fd, self._exited))
        if self.machine.state is ShardState.STOPPING:  # stopped while the exec was under way
            self._signal(signal.SIGTERM)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, process: asyncio.subprocess.Process, read_fd: int, exited: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=REPORT_LINE_LIMIT)
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        reading = loop.create_task(self._read_reports(reader))
        try:
            returncode = await process.wait()
            # The final stats line is written just before exit: drain what the pipe still holds.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(reading), 1.0)
        finally:
            reading.cancel()
            transport.close()
        self._process_gone(returncode)
        exited.set()

    async def _read_reports(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                log.warning("worker report line too long; ignored", extra={"shard": self.name})
                continue
            if not line:
                return
            self._on_report(line)

    def _on_report(self, line: bytes) -> None:
        try:
            report = decode_report(line)
        except ValueError:
            log.warning("unreadable report from the worker: %r", line[:120], extra={"shard": self.name})
            return
        now = time.monotonic()
        if isinstance(report, ReadyReport):
            self.machine.ready(now)
            return
        if report.freshness is None and self.report is not None:  # freshness rides on every few reports only
            report = dataclasses.replace(report, freshness=self.report.freshness)
        self.report = report
        self.machine.heartbeat(now)
        self._rate.append((now, self.past.ticks_received + report.counters.ticks_received))
        while len(self._rate) > 2 and now - self._rate[1][0] >= RATE_WINDOW:
            self._rate.popleft()

    def ticks_per_second(self) -> float:
        """Ticks received per second over the last ~10 s (0 when no worker runs)."""
        if self.process is None or len(self._rate) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def _process_gone(self, returncode: int) -> None:
        if self.report is not None:
            self.past = self.past + self.report.counters
            last = self.last_report
            self.last_report = dataclasses.replace(
                self.report,
                last_tick_at=self.report.last_tick_at if self.report.last_tick_at is not None else last.last_tick_at,
                last_event_ts=self.report.last_event_ts if self.report.last_event_ts is not None
                else last.last_event_ts)
        self.report = None
        self.process = None
        self.last_exit = describe_exit(returncode)
        self.machine.exited(time.monotonic(), returncode)

    def poll(self) -> None:
        """The supervisor's tick: apply clock-driven moves (grace, heartbeat loss, backoff expiry)."""
        action = self.machine.poll(time.monotonic())
        if action is Action.SPAWN:
            self._spawn_task(self.launch(reason="restarting after backoff", after_backoff=True))
        elif action is Action.TERMINATE:
            self._spawn_task(self._terminate(Deadline(self.stop_timeout)))

    def change_symbols(self, config: ShardConfig) -> None:
        """Take ``config`` (only its symbols differ) and have the running worker re-subscribe (SIGHUP)."""
        self.config = config
        log.info("symbols changed: the worker re-subscribes on its open connection (SIGHUP)",
                 extra={"shard": self.name})
        self._signal(signal.SIGHUP)

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def _terminate(self, deadline: Deadline) -> bool:
        """SIGTERM the worker, wait for its exit until ``deadline``, then SIGKILL. True if it had to be killed."""
        exited = self._exited
        if self.process is None or exited is None:
            return False
        self._signal(signal.SIGTERM)
        while not exited.is_set() and deadline.remaining() > 0:
            waiters = [asyncio.ensure_future(exited.wait()), asyncio.ensure_future(deadline.changed.wait())]
            await asyncio.wait(waiters, timeout=deadline.remaining(), return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        if exited.is_set():
            return False
        log.error("worker (pid %s) did not stop within the deadline; killing it (SIGKILL)", self.pid,
                  extra={"shard": self.name})
        self._signal(signal.SIGKILL)
        await exited.wait()
        return True

    async def stop(self, deadline: Deadline | None = None, reason: str = "stopped by operator") -> bool:
        """Stop the shard: SIGTERM, wait (≤ deadline), SIGKILL stragglers. Returns True if it was killed.

        A shard in BACKOFF just stops (no restart); STOPPED/FATAL are left alone.
        """
        deadline = deadline or Deadline(self.stop_timeout)
        had_process = self.machine.stop_requested(time.monotonic(), reason)
        if had_process or self.state is ShardState.STOPPING:
            return await self._terminate(deadline)
        return False

    async def stand_by(self, reason: str) -> bool:
        """Cluster mode: stop the worker, if any (SIGTERM, drain, SIGKILL after ``stop_timeout``); then STANDBY.

        Returns True if the worker had to be killed.
        """
        had_process = self.machine.stand_by(time.monotonic(), reason)
        if had_process or self.state is ShardState.STOPPING:
            return await self._terminate(Deadline(self.stop_timeout))
        return False

    async def close(self) -> None:
        """Cancel background tasks (after the worker is gone)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
