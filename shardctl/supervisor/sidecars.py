"""What the supervisor runs beside the workers: the database setup, maintenance, the local feed.

``DatabaseSetup`` resolves the DSN once (starting the embedded server when
no DSN is configured, and stopping it at exit only if it started it),
applies the schema, and on plain PostgreSQL keeps partitions ahead and the
candle table fresh from a short-lived child process every few minutes (so a
slow refresh never stalls the supervisor's loop). ``LocalFeed`` runs
``shardctl feed`` as a child when the config has ``[feed]``.

``python -m shardctl.supervisor.sidecars maintain CONFIG`` is that maintenance pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path

from shardctl.config import load_config
from shardctl.config.model import Config, FeedConfig
from shardctl.db import candles, schema
from shardctl.db import connection as database
from shardctl.errors import ShardctlError
from shardctl.supervisor.children import run_child

log = logging.getLogger("shardctl.supervisor")

MAINTENANCE_INTERVAL = 60.0
FIRST_MAINTENANCE = 10.0
FEED_START_TIMEOUT = 15.0


class DatabaseSetup:
    """The supervisor's database: ``prepare`` (blocking, once), ``maintenance_loop``, ``stop_embedded``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dsn = ""
        self.flavour = ""
        self._target: database.DsnTarget | None = None

    @property
    def needs_maintenance(self) -> bool:
        return self.flavour == schema.POSTGRESQL

    def prepare(self) -> None:
        """Resolve the DSN, apply the schema and (plain PostgreSQL) refresh the candles once.

        Raises DatabaseError / EmbeddedServerError / ConfigError with one line.
        """
        self._target = database.resolve_target(self.config)
        self.dsn = self._target.dsn
        log.info("database: %s (%s)", database.mask_dsn(self.dsn), self._target.source)
        conn = database.connect(self.dsn, application_name="shardctl-supervisor", autocommit=True)
        try:
            self.flavour = schema.apply_schema(conn, self.config.tables, self.config.timescaledb)
            if self.flavour == schema.POSTGRESQL:
                candles.refresh_all_candles(conn, self.config)
        finally:
            conn.close()
        log.info("schema ready (%s)", self.flavour)

    def stop_embedded(self) -> None:
        """Stop the embedded server if (and only if) ``prepare`` started it; errors are logged."""
        target = self._target
        if target is not None and target.started and target.embedded is not None:
            try:
                target.embedded.stop()
            except ShardctlError as exc:
                log.error("%s", exc)

    async def maintenance_loop(self, interval: float = MAINTENANCE_INTERVAL) -> None:
        """Every ``interval`` seconds run one maintenance pass in a child process; failures are logged.

        The first pass comes after ``FIRST_MAINTENANCE`` seconds, so a new
        deployment shows candles soon. A pass that takes longer than
        ``interval`` is killed (and retried next time); cancelling the loop
        kills a pass in progress.
        """
        delay = min(FIRST_MAINTENANCE, interval)
        while True:
            await asyncio.sleep(delay)
            delay = interval
            await run_child(["shardctl.supervisor.sidecars", "maintain", str(self.config.path)], self.dsn,
                            interval, "maintenance (partitions, candles)")


class LocalFeed:
    """``shardctl feed`` as a child process (only when the config has ``[feed]``)."""

    def __init__(self, config: FeedConfig | None, log_format: str = "text") -> None:
        self.config = config
        self.log_format = log_format
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the feed and wait until its port accepts connections; ShardctlError if it cannot."""
        feed = self.config
        if feed is None:
            return
        if await port_open(feed.host, feed.port):
            raise ShardctlError(f"feed port {feed.host}:{feed.port} is already in use; stop what listens "
                                "there or change [feed] port (and the source url)")
        argv = [sys.executable, "-m", "shardctl", "--log-format", self.log_format, "feed", "--host", feed.host,
                "--port", str(feed.port), "--rate", f"{feed.rate:g}"]
        if feed.symbols:
            argv += ["--symbols", ",".join(feed.symbols)]
        self.process = process = await asyncio.create_subprocess_exec(*argv, start_new_session=True,
                                                                      stdin=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + FEED_START_TIMEOUT
        while not await port_open(feed.host, feed.port):
            if process.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise ShardctlError(f"the local feed did not start on {feed.host}:{feed.port}; see its log above")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.wait()), 0.1)
        log.info("local feed (pid %d) on %s:%d", process.pid, feed.host, feed.port)

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the feed, SIGKILL it after ``timeout`` seconds (logged)."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            log.error("local feed (pid %d) did not stop in %gs; killed", process.pid, timeout)
            process.kill()
            await process.wait()


async def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def maintain(config_path: str | Path) -> int:
    """One maintenance pass: partitions ahead (plain PostgreSQL), candle refresh. Returns 0 on success.

    On TimescaleDB there are no partitions to create (chunks come by
    themselves) and the refresh runs the policies' windows once more.
    """
    config = load_config(config_path)
    conn = database.connect(database.resolve_dsn(config, start_embedded=False),
                            application_name="shardctl-maintenance", autocommit=True)
    try:
        recorded = schema.recorded_schema(conn, config.tables)
        created = []
        if recorded is None or recorded[0] == schema.POSTGRESQL:
            created = schema.ensure_partitions(conn, config.tables)
        rewritten = candles.refresh_all_candles(conn, config)
    finally:
        conn.close()
    log.info("maintenance: %d partition(s) created; candle rows rewritten: %s", len(created),
             ", ".join(f"{interval} {rows}" for interval, rows in rewritten.items()) or "none due")
    return 0


if __name__ == "__main__":  # python -m shardctl.supervisor.sidecars maintain CONFIG (the supervisor runs this)
    from shardctl import logs

    logs.configure("maintenance")
    if len(sys.argv) != 3 or sys.argv[1] != "maintain":
        print("usage: python -m shardctl.supervisor.sidecars maintain CONFIG", file=sys.stderr)
        raise SystemExit(2)
    try:
        raise SystemExit(maintain(sys.argv[2]))
    except ShardctlError as exc:
        log.error("%s", exc)
        raise SystemExit(exc.exit_code) from None
