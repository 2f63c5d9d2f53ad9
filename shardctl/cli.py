"""The ``shardctl`` command: argument parsing and the one-line error contract.

Each command lives beside the code it drives; a module joins the CLI by
exposing ``register(subparsers)`` which adds its parser(s) with
``set_defaults(func=handler)``; a handler takes the parsed arguments and
returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from shardctl import __version__, logs
from shardctl.config import check_config
from shardctl.errors import EXIT_CONFIG, EXIT_OK, ShardctlError
from shardctl.journal.space import journal_space_warnings

#: Modules that add commands, in help order.
COMMAND_MODULES = (
    "shardctl.supervisor.cli",
    "shardctl.feed.server",
    "shardctl.db.cli",
    "shardctl.db.readouts",
    "shardctl.bench.cli",
)

log = logging.getLogger("shardctl.cli")


def cmd_validate(args: argparse.Namespace) -> int:
    """Print a one-line summary of a valid config, or every problem (exit 2)."""
    config, problems, warnings = check_config(args.config)
    if config is not None:
        warnings += journal_space_warnings(config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{args.config}: {len(problems)} problem(s) found", file=sys.stderr)
        return EXIT_CONFIG
    assert config is not None
    symbols = sum(len(s.symbols) for s in config.shards.values())
    shards = ", ".join(f"{s.name} ({len(s.symbols)})" for s in config.shards.values())
    target = "embedded PostgreSQL" if config.database.embedded else "configured database"
    print(f"{args.config}: OK: {len(config.shards)} shard(s), {symbols} symbol(s): {shards}; "
          f"source {config.source.url}; {target}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardctl",
        description="Stream Twelve Data prices into PostgreSQL/TimescaleDB, one worker process per shard.")
    parser.add_argument("--version", action="version", version=f"shardctl {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = sub.add_parser("validate", help="check a config file and summarise it")
    validate.add_argument("config", help="path of the TOML config")
    validate.set_defaults(func=cmd_validate)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure("shardctl", level=args.log_level, fmt=args.log_format)
    try:
        return int(args.func(args) or 0)
    except ShardctlError as exc:
        print(f"shardctl: error: {logs.mask_secrets(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("shardctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
