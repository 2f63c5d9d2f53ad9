"""The supervisor's commands: start, status, stop, restart, reload and ``shard start|stop|restart``.

    shardctl start CONFIG                      run the supervisor in the foreground (all shards)
    shardctl start CONFIG --shard NAME         run ONE shard's worker in the foreground, no supervisor
                                               (systemd/Kubernetes: the process becomes the worker)
    shardctl status [CONFIG] [SHARD] [--json]  table of shards (or JSON)
    shardctl status [CONFIG] [SHARD] --symbols per-symbol freshness: a table per shard, stale symbols first
    shardctl stop [CONFIG]                     stop every shard and the supervisor
    shardctl stop [CONFIG] SHARD               stop one shard; the supervisor keeps running
    shardctl restart [CONFIG] SHARD            restart one shard; waits until it is RUNNING again
    shardctl reload [CONFIG]                   re-read the config (like SIGHUP)
    shardctl move [CONFIG] SHARD --to HOST     cluster mode: the owner drains SHARD, then HOST streams it
    shardctl shard start|stop|restart [CONFIG] SHARD
                                               one shard on a running supervisor (``shard start``
                                               brings back a STOPPED or FATAL shard)

The control commands find the supervisor's socket through CONFIG, given as
the first argument, with ``-c CONFIG`` or in ``$SHARDCTL_CONFIG``; without
one, in the default state directory (where config/demo.toml keeps it). A
shard name never contains "/" or ".", so an argument that does is the config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shardctl.config import load_config
from shardctl.config.model import SupervisorConfig, default_state_dir
from shardctl.errors import EXIT_OK, EXIT_RUNTIME, UsageError
from shardctl.logs import mask_secrets
from shardctl.private import PRIVATE_UMASK
from shardctl.report import ShardState, ShardStatus
from shardctl.supervisor.control import ControlClient
from shardctl.supervisor.pidfile import Pidfile, pid_alive
from shardctl.supervisor.shard import worker_command

log = logging.getLogger("shardctl.supervisor")

#: Seconds the client allows beyond the supervisor's own timeouts.
SLACK = 15.0


@dataclass(frozen=True)
class _Target:
    """Where a running supervisor listens, and the timeouts its config sets."""

    client: ControlClient
    pidfile: Path
    supervisor: SupervisorConfig

    @property
    def wait_budget(self) -> float:
        sup = self.supervisor
        return sup.stop_timeout + sup.start_grace + 10.0 + SLACK


def _looks_like_path(arg: str) -> bool:
    return "/" in arg or "." in arg


def _target(args: argparse.Namespace, *, shard_required: bool = False) -> _Target:
    """Split ``[CONFIG] [SHARD]`` positionals (setting ``args.shard``) and locate the supervisor."""
    words = list(args.words)
    config_path = args.config
    if words and _looks_like_path(words[0]):
        config_path = words.pop(0)
    if len(words) > 1:
        raise UsageError(f"expected [CONFIG] [SHARD], got {' '.join(args.words)!r}")
    args.shard = words[0] if words else None
    if shard_required and args.shard is None:
        raise UsageError("name the shard, e.g. `shardctl restart crypto`")
    config_path = config_path or os.environ.get("SHARDCTL_CONFIG")
    if config_path:
        config = load_config(config_path)
        sup = config.supervisor
        return _Target(ControlClient(sup.control_socket, config.path), sup.pidfile, sup)
    run = default_state_dir() / "run"
    return _Target(ControlClient(run / "control.sock", None), run / "shardctl.pid", SupervisorConfig())


# ------------------------------------------------------------------ start

def cmd_start(args: argparse.Namespace) -> int:
    """Run the supervisor (or, with --shard, exec one worker) in the foreground, under a private umask."""
    os.umask(PRIVATE_UMASK)  # everything it (and its children) create under the state dir is the owner's alone
    if args.shard:
        return _exec_single_shard(args)
    from shardctl.supervisor.supervisor import serve

    return serve(args.config, log_format=args.log_format)


def _exec_single_shard(args: argparse.Namespace) -> int:
    """Replace this process with the shard's worker (it resolves the DSN and applies the schema itself).

    The embedded server, if used, is left running: other shards' units share it.
    """
    config = load_config(args.config, require_env=True, warn=lambda w: log.warning("%s", w))
    config.shard(args.shard)  # unknown shard → ConfigError listing the known ones
    argv = worker_command(config.path, args.shard, args.log_format) + ["--log-level", args.log_level]
    env = {k: v for k, v in os.environ.items() if k != "SHARDCTL_REPORT_FD"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return EXIT_RUNTIME  # not reached


# ------------------------------------------------------------------ status

def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours // 24}d{hours % 24:02d}h" if hours >= 48 else f"{hours}h{minutes:02d}m"


def _ago(stamp: float | None, now: float) -> str:
    return "-" if stamp is None else _duration(now - float(stamp))


def _backlog(shard: ShardStatus) -> str:
    """Journal records not yet in the database and how far behind, e.g. "12,000 (31s)"; "FULL" at the cap."""
    worker = shard.worker
    records = worker.journal_backlog
    text = f"{records:,} ({_duration(worker.seconds_behind)})" if records else "0"
    if worker.disk_full:
        return text + " DISK FULL"
    return text + " FULL" if worker.journal_full else text


def _dead_letters(shard: ShardStatus) -> str:
    """Frames set aside, and how many of them the dead_letter_max_bytes cap deleted, e.g. "1,500 (1,120 dropped)"."""
    count, dropped = shard.counters.dead_letters, shard.counters.dead_letters_dropped
    return f"{count:,} ({dropped:,} dropped)" if dropped else f"{count:,}"


def format_status(shards: list[ShardStatus], now: float | None = None) -> str:
    """The aligned status table (one row per shard); errors are masked (``shardctl.logs.mask_secrets``)."""
    now = time.time() if now is None else now
    header: tuple[str, ...] = ("SHARD", "STATE", "PID", "UPTIME", "RESTARTS", "ROWS", "TICKS/S", "LAST TICK",
                               "LAG", "BACKLOG", "DEAD LETTERS", "LAST ERROR")
    cluster = any(s.host_id for s in shards)
    if cluster:
        header = header[:2] + ("STREAMED BY", "STANDING BY") + header[2:]
    rows = [header]
    for s in shards:
        running_note = s.worker.last_error or (s.worker.last_rollback and f"database went back in time: "
                                                                            f"{s.worker.last_rollback}")
        note = mask_secrets(str((running_note if s.state is ShardState.RUNNING else s.reason) or "-"))
        hosts = (_owner(s), ",".join(s.standby_hosts) or "-") if cluster else ()
        rows.append((s.name, s.state, *hosts, str(s.pid or "-"), _duration(s.uptime), str(s.restarts),
                     f"{s.counters.rows_written:,}", f"{s.ticks_per_second:.1f}",
                     _ago(s.worker.last_tick_at, now), _ago(s.worker.last_event_ts, now), _backlog(s),
                     _dead_letters(s), " ".join(note.split())[:80]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s" if abs(value) < 100 else f"{value:.0f}s"


def _per_minute(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def format_symbols(shards: list[ShardStatus], now: float | None = None) -> str:
    """One table per shard: each symbol's last tick age, delay p50/p99, tick rate, market and STALE or SLOW.

    Stale symbols first, then slow ones.
    """
    now = time.time() if now is None else now
    blocks = []
    for s in shards:
        records = sorted(s.worker.freshness or (), key=lambda r: (not r.stale, not r.slow))
        stale, slow = sum(r.stale for r in records), sum(r.slow for r in records)
        title = f"{s.name}: {len(records)} symbol(s), {stale} stale (stale_after {_duration(s.worker.stale_after)})" \
            + (f", {slow} slow" if slow else "") if s.worker.freshness is not None else \
            f"{s.name}: no freshness report yet ({s.state})"
        rows = [("SYMBOL", "LAST TICK", "DELAY P50", "DELAY P99", "RATE/MIN", "NORMAL/MIN", "MARKET", "")]
        rows += [(r.symbol, _ago(r.last_tick_at, now), _seconds(r.delay_p50), _seconds(r.delay_p99),
                  _per_minute(r.rate), _per_minute(r.normal_rate), r.market,
                  "STALE" if r.stale else "SLOW" if r.slow else "") for r in records]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        blocks.append("\n".join([title, *table]) if records else title)
    return "\n\n".join(blocks)
def _owner(shard: ShardStatus) -> str:
    """``host@epoch`` of the lease holder, with ``(db?)`` when this host's last lease round got no answer."""
    if not shard.lease_owner:
        return "-"
    stale = "" if shard.lease_database_ok else " (db?)"
    return f"{shard.lease_owner}@{shard.lease_epoch}{stale}"


def cmd_status(args: argparse.Namespace) -> int:
    """Print the shards' table (or --json, or --symbols); exit 1 when the supervisor is not running."""
    target = _target(args)
    response = target.client.request("status", args.shard, timeout=10.0)
    if args.json:
        print(mask_secrets(json.dumps(response, indent=2, sort_keys=True)))
    elif args.symbols:
        print(format_symbols([ShardStatus.from_json(s) for s in response["shards"]]))
    else:
        print(format_status([ShardStatus.from_json(s) for s in response["shards"]]))
    return EXIT_OK


# ------------------------------------------------------------------ stop / restart / start one shard

def _describe(shard: ShardStatus) -> str:
    pid = f" (pid {shard.pid})" if shard.pid else ""
    return f"{shard.name}: {shard.state}{pid}"


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop one shard, or (no SHARD) every shard and the supervisor, waiting until it has exited."""
    target = _target(args)
    client = target.client
    if args.shard:
        response = client.request("stop", args.shard, timeout=target.supervisor.stop_timeout + SLACK)
        killed = " (killed: it did not stop in time)" if response.get("killed") else ""
        print(_describe(ShardStatus.from_json(response["shard"])) + killed)
        return EXIT_RUNTIME if response.get("killed") else EXIT_OK
    pid = Pidfile(target.pidfile).read()
    response = client.request("stop_all", timeout=target.supervisor.stop_timeout + SLACK)
    deadline = time.monotonic() + SLACK
    while pid is not None and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped, killed = response.get("stopped", []), response.get("killed", [])
    totals = f"{response.get('ticks_received', 0)} tick(s) received, {response.get('rows_written', 0)} row(s) written"
    if killed:
        print(f"supervisor stopped; {len(stopped)} shard(s), killed after the deadline: {', '.join(killed)}; "
              f"{totals}")
        return EXIT_RUNTIME
    print(f"supervisor stopped; {len(stopped)} shard(s) stopped cleanly; {totals}")
    return EXIT_OK


def cmd_shard(args: argparse.Namespace) -> int:
    """start/restart one shard and wait until it is RUNNING (or say why not); stop one shard."""
    if args.action == "stop":
        return cmd_stop(args)
    target = _target(args, shard_required=True)
    client = target.client
    before = None
    if args.action == "restart":
        before = ShardStatus.from_json(client.request("status", args.shard, timeout=10.0)["shards"][0]).pid
    shard = ShardStatus.from_json(client.request(args.action, args.shard, timeout=target.wait_budget)["shard"])
    print(f"{shard.name}: {shard.state} (pid {shard.pid}" + (f"; was {before})" if before else ")"))
    return EXIT_OK


def cmd_restart(args: argparse.Namespace) -> int:
    args.action = "restart"
    return cmd_shard(args)


def cmd_move(args: argparse.Namespace) -> int:
    """Cluster mode: move a shard to host ``--to``; wait until that host holds its lease."""
    target = _target(args, shard_required=True)
    wait = 2 * target.supervisor.stop_timeout + 10.0
    response = target.client.request("move", args.shard, to=args.to, wait=wait, timeout=wait + SLACK)
    print(f"{response['shard']}: moved from {response['from']} to {response['to']} (epoch {response['epoch']})")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the supervisor to re-read its config and apply the shard changes."""
    target = _target(args)
    response = target.client.request("reload", timeout=target.wait_budget)
    print(f"reloaded: added {response['added'] or 'none'}, removed {response['removed'] or 'none'}, "
          f"restarted {response['restarted'] or 'none'}, re-subscribed {response.get('resubscribed') or 'none'}")
    return EXIT_OK


# ------------------------------------------------------------------ parsers

def _control_args(parser: argparse.ArgumentParser, metavar: str, shard_help: str | None) -> None:
    parser.add_argument("words", nargs="*", metavar=metavar,
                        help="the config path (optional: -c, $SHARDCTL_CONFIG or the default state directory)"
                             + (f"; SHARD: {shard_help}" if shard_help else ""))
    parser.add_argument("-c", "--config", help="path of the TOML config (locates the control socket)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add start, status, stop, restart, reload and shard to the CLI."""
    p = subparsers.add_parser("start", help="run the supervisor in the foreground (or one shard with --shard)",
                              description="Run the supervisor for CONFIG in the foreground: every shard's worker, "
                                          "the control socket, metrics. With --shard NAME, run only that "
                                          "shard's worker in this process (no supervisor), e.g. under systemd. "
                                          "To start one stopped shard on a running supervisor use "
                                          "`shardctl shard start CONFIG SHARD`.")
    p.add_argument("config", help="path of the TOML config")
    p.add_argument("--shard", metavar="NAME", help="run only this shard's worker, in the foreground")
    p.set_defaults(func=cmd_start)

    p = subparsers.add_parser("status", help="show the shards of a running supervisor")
    _control_args(p, "[CONFIG] [SHARD]", "only this shard")
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.add_argument("--symbols", action="store_true",
                   help="per-symbol freshness: last tick, delay p50/p99, market, stale (a table per shard)")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("stop", help="stop one shard, or everything (the supervisor) without SHARD")
    _control_args(p, "[CONFIG] [SHARD]", "stop only this shard; without it the supervisor stops too")
    p.set_defaults(func=cmd_stop)

    p = subparsers.add_parser("restart", help="restart one shard and wait until it runs again")
    _control_args(p, "[CONFIG] SHARD", "the shard to restart")
    p.set_defaults(func=cmd_restart)

    p = subparsers.add_parser("move", help="cluster mode: move a shard to another host, gracefully",
                              description="The shard's owner drains and commits, hands the lease to HOST, "
                                          "and HOST starts streaming it. Any host's supervisor takes the request.")
    _control_args(p, "[CONFIG] SHARD", "the shard to move")
    p.add_argument("--to", required=True, metavar="HOST", help="host id of a host standing by")
    p.set_defaults(func=cmd_move)

    p = subparsers.add_parser("reload", help="make a running supervisor re-read its config (like SIGHUP)")
    _control_args(p, "[CONFIG]", None)
    p.set_defaults(func=cmd_reload)

    p = subparsers.add_parser("shard", help="start, stop or restart one shard on a running supervisor")
    p.add_argument("action", choices=["start", "stop", "restart"])
    _control_args(p, "[CONFIG] SHARD", "the shard")
    p.set_defaults(func=cmd_shard)
