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
import os
import sys
from pathlib import Path
from typing import Sequence

from shardctl import __version__, logs
from shardctl.config import check_config
from shardctl.config.model import LOCAL_FEED_API_KEY, Config
from shardctl.config.starter import STARTER_CONFIG, example_text, write_starter
from shardctl.errors import EXIT_CONFIG, EXIT_OK, ReferenceUnavailable, ShardctlError
from shardctl.journal.space import journal_space_warnings

#: Modules that add commands, in help order.
COMMAND_MODULES = (
    "shardctl.supervisor.cli",
    "shardctl.supervisor.demo",
    "shardctl.feed.cli",
    "shardctl.db.cli",
    "shardctl.db.readouts",
    "shardctl.audit.cli",
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
    if getattr(args, "online", False):
        code = _check_online(config, args.config)
        if code != EXIT_OK:
            return code
    symbols = sum(len(s.symbols) for s in config.shards.values())
    shards = ", ".join(f"{s.name} ({len(s.symbols)})" for s in config.shards.values())
    target = "embedded PostgreSQL" if config.database.embedded else "configured database"
    print(f"{args.config}: OK: {len(config.shards)} shard(s), {symbols} symbol(s): {shards}; "
          f"source {config.source.url}; {target}")
    return EXIT_OK


def _check_online(config: Config, path: str) -> int:
    """Ask Twelve Data's reference lists about every configured symbol; print each unknown one (exit 2).

    No key, no network or a refused key: one line, exit 2.
    """
    from shardctl.twelvedata.reference import check_symbols

    logs.register_secrets(config.secrets())
    key = os.environ.get(config.source.api_key_env) or (LOCAL_FEED_API_KEY if config.source.is_local else None)
    owner = {symbol: shard.name for shard in config.shards.values() for symbol in shard.symbols}
    if not key:
        print(f"{path}: --online: no Twelve Data API key: ${config.source.api_key_env} is not set; export your "
              "key in it", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = check_symbols(owner, config.source.rest_url, key)
    except ReferenceUnavailable as exc:
        print(f"{path}: --online: {logs.mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    for unknown in result.unknown:
        hint = (f"; did you mean {' or '.join(repr(s) for s in unknown.suggestions)}?" if unknown.suggestions
                else "; check its spelling (and its :EXCHANGE suffix) in Twelve Data's symbol search")
        print(f"error: {path}: shards.{owner[unknown.symbol]}.symbols: Twelve Data does not know "
              f"{unknown.symbol!r}{hint}", file=sys.stderr)
    print(f"{path}: online: {len(result.names)} of {len(owner)} symbol(s) known to Twelve Data "
          f"({config.source.rest_url}; {result.credits} API credit(s): {', '.join(result.lists) or 'none'})",
          file=sys.stderr if result.unknown else sys.stdout)
    return EXIT_CONFIG if result.unknown else EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    """Write the commented starting config for Twelve Data to PATH (refusing to overwrite) or stdout."""
    if args.path in (None, "-"):
        sys.stdout.write(example_text(STARTER_CONFIG))
        return EXIT_OK
    path = Path(args.path)
    write_starter(path, force=args.force)
    print(f"wrote {path}: a starting config for Twelve Data. Next: export TWELVEDATA_API_KEY=..., then "
          f"`shardctl validate --online {path}` and `shardctl start {path}`")
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
    validate.add_argument("--online", action="store_true",
                          help="also ask Twelve Data's reference lists (source.rest_url) whether they know every "
                               "symbol, with a did-you-mean (1 API credit per list, at most 5)")
    validate.set_defaults(func=cmd_validate)

    init = sub.add_parser("init", help="write a commented starting config for Twelve Data",
                          description="Write a commented starting config for the Twelve Data stream to PATH, or "
                                      "to stdout without PATH (or with -). The API key stays in the environment "
                                      "(TWELVEDATA_API_KEY); the file never holds it.")
    init.add_argument("path", nargs="?", metavar="PATH", help="file to write (default: stdout)")
    init.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    init.set_defaults(func=cmd_init)

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
