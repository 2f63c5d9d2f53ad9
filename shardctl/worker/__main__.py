"""``python -m shardctl.worker --config FILE --shard NAME``: one shard in the foreground.

Sets a private umask (the state directory is the owner's alone), reads the
config (registering its secrets for masking), takes the shard's host lock
(waiting for a predecessor that is still stopping),
makes sure the schema exists when run by hand (the supervisor does that
otherwise), installs the stop signals and runs the ``Worker`` until it stops. Exits 0 after a clean stop,
with the error's exit code (one logged line) otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Sequence

from shardctl import logs
from shardctl.config import load_config
from shardctl.config.model import Config, ShardConfig
from shardctl.db.connection import connect, resolve_dsn
from shardctl.db.leases import LEASE_EPOCH_ENV, Fence
from shardctl.db.schema import apply_schema
from shardctl.errors import ShardctlError
from shardctl.journal.space import journal_space_warnings
from shardctl.private import PRIVATE_UMASK, private_dir
from shardctl.simclock import install_from_env
from shardctl.worker.process import ShardLock
from shardctl.worker.switches import Switches
from shardctl.worker.worker import Worker, log


def _install_signals(worker: Worker) -> None:
    def handler(signum: int, _frame: object) -> None:
        worker.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: worker.request_symbols_reload())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardctl.worker", description="Run one shard in the foreground.")
    parser.add_argument("--config", required=True, help="path of the TOML config")
    parser.add_argument("--shard", required=True, help="name of the shard to run")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    args = parser.parse_args(argv)
    os.umask(PRIVATE_UMASK)  # the shard's files (journal, dead letters, lock, stamp) are the owner's alone
    logs.configure(args.shard, level=args.log_level, fmt=args.log_format)
    report_fd = int(os.environ["SHARDCTL_REPORT_FD"]) if os.environ.get("SHARDCTL_REPORT_FD") else None
    try:
        switches = Switches.from_environ(os.environ)
        config = load_config(args.config, require_env=True)
        shard = config.shard(args.shard)
        for warning in journal_space_warnings(config, [shard.name]):
            log.warning("%s", warning)
        private_dir(config.state_dir / "shards")
        # A predecessor still stopping (its supervisor was killed, or a restart came quickly) is waited for:
        # its journal and its last receive time are read only once it is done with them.
        lock = ShardLock(config.shard_dir(shard.name) / "worker.lock", wait=shard.settings.stop_timeout + 2.0)
        try:
            return _run(config, shard, report_fd, switches, lock)
        finally:
            lock.release()
    except ShardctlError as exc:
        log.error("%s", exc)
        return exc.exit_code


def _fence(config: Config) -> Fence | None:
    """Cluster mode: the lease the supervisor acquired for this worker (``$SHARDCTL_LEASE_EPOCH``)."""
    if config.cluster is None:
        return None
    epoch = os.environ.get(LEASE_EPOCH_ENV, "")
    if not epoch.isdigit():
        raise ShardctlError(f"{config.path}: [cluster] is set, so a worker streams only under a lease its "
                            f"supervisor acquired (${LEASE_EPOCH_ENV}); run `shardctl start` instead")
    return Fence(config.cluster.host_id, int(epoch))


def _run(config: Config, shard: ShardConfig, report_fd: int | None, switches: Switches, lock: ShardLock) -> int:
    fence = _fence(config)
    dsn = resolve_dsn(config)
    if report_fd is None:
        # Run by hand: make sure the tables exist (the supervisor does this otherwise).
        conn = connect(dsn, application_name=f"shardctl-{shard.name}")
        try:
            apply_schema(conn, config.tables, config.timescaledb)
        finally:
            conn.close()
    worker = Worker(config, shard, dsn, report_fd=report_fd, switches=switches, fence=fence,
                    on_stopping=lock.mark_stopping)
    _install_signals(worker)
    return worker.run()


if __name__ == "__main__":
    install_from_env()  # end-to-end tests only: SHARDCTL_SIMULATED_CLOCK (shardctl.simclock)
    sys.exit(main())
