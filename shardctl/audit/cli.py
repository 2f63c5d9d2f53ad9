"""``shardctl audit CONFIG``: which minutes the database holds for each symbol, which it misses, and why.

Exit status 0 when no minute is unexplained, 1 otherwise (cron and CI friendly); 2 for a bad config or usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shardctl.audit.render import render_html, render_json, render_text
from shardctl.audit.run import run_audit, unscheduled_note
from shardctl.config import load_config
from shardctl.config.model import LOCAL_FEED_API_KEY, parse_duration
from shardctl.db.connection import resolve_dsn
from shardctl.errors import EXIT_OK, EXIT_RUNTIME, UsageError
from shardctl.logs import register_secrets

__all__ = ["register", "cmd_audit", "parse_window"]

RENDERERS = {"text": render_text, "json": render_json, "html": render_html}


def register(subparsers: Any) -> None:
    """Add ``shardctl audit``."""
    p = subparsers.add_parser(
        "audit", help="for every symbol and minute: ticks, backfilled, closed, off, gap, quiet or unexplained",
        description="Classify every minute of every configured symbol from what the database holds: ticks, "
                    "backfilled (a REST bar), closed (its market's calendar), off (not collected yet), gap "
                    "(a recorded gap), quiet (REST confirms nothing traded, --online) or unexplained. "
                    "Exit status 1 when some minute is unexplained.")
    p.add_argument("config", help="path of the TOML config")
    p.add_argument("--since", default=None, help="the window ends at the last whole minute and starts this long "
                                                 "before (default 1d)")
    p.add_argument("--from", dest="start", default=None, metavar="TIME",
                   help="window start, ISO 8601 (UTC unless it names an offset)")
    p.add_argument("--to", dest="end", default=None, metavar="TIME", help="window end (exclusive), ISO 8601")
    p.add_argument("--symbol", action="append", default=[], help="audit only this symbol (repeatable)")
    p.add_argument("--format", choices=sorted(RENDERERS), default="text")
    p.add_argument("--out", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--online", action="store_true",
                   help="ask Twelve Data's REST time_series about unexplained minutes (quiet or unexplained) "
                        "and compare candles with REST bars; spends credits like backfill does")
    p.add_argument("--tolerance", type=float, default=1e-6,
                   help="relative tolerance of the close/volume comparison (default 1e-6)")
    p.set_defaults(func=cmd_audit)


def _moment(text: str, flag: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected an ISO 8601 time like 2026-12-04T09:30 or "
                         "2026-12-04 09:30+00:00") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def parse_window(since: str | None, start: str | None, end: str | None, now: float) -> tuple[int, int]:
    """(first, last) minute numbers of the window the flags ask for; the default is the last day's whole minutes."""
    if since is not None and start is not None:
        raise UsageError("give --since or --from, not both")
    hi = int(now // 60) if end is None else -(-int(_moment(end, "--to").timestamp()) // 60)
    if start is not None:
        lo = int(_moment(start, "--from").timestamp() // 60)
    else:
        try:
            span = parse_duration(since or "1d")
        except ValueError as exc:
            raise UsageError(f"--since: {exc}") from None
        lo = hi - max(1, int(span // 60))
    if hi <= lo:
        raise UsageError("the audit window is empty: --to must come after --from")
    return lo, hi - 1


def cmd_audit(args: argparse.Namespace) -> int:
    """Print (or write) the report; exit 0 when every minute is explained, 1 otherwise."""
    config = load_config(args.config)
    register_secrets(config.secrets())
    if args.tolerance < 0:
        raise UsageError("--tolerance cannot be negative")
    first, last = parse_window(args.since, args.start, args.end, time.time())
    api_key = os.environ.get(config.source.api_key_env) or (LOCAL_FEED_API_KEY if config.source.is_local else None)
    report = run_audit(config, resolve_dsn(config), first, last, only=args.symbol, online=args.online,
                       api_key=api_key, tolerance=args.tolerance)
    note = unscheduled_note(config)
    if note:
        print(note, file=sys.stderr)
    text = RENDERERS[args.format](report)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}: {report.unexplained} unexplained minute(s)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_RUNTIME if report.unexplained else EXIT_OK
