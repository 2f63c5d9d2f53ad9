"""The commands that show what the shards stored: ``candles``, ``gaps`` and ``deadletters``.

Argument parsing and presentation only; the data comes from ``db.candles``,
``db.gaps`` and ``journal.deadletters``.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Sequence

import orjson
from psycopg2.extensions import connection as Connection

from shardctl.config import load_config
from shardctl.config.model import TablesConfig, parse_duration
from shardctl.db.candles import fetch_candles, known_symbols
from shardctl.db.candlespec import COLUMNS, UTC, candle_spec
from shardctl.db.connection import connect, resolve_dsn, resolve_target
from shardctl.db.gaps import Gap, format_duration, list_gaps
from shardctl.errors import EXIT_OK, UsageError
from shardctl.journal.deadletters import (
    dead_letter_path,
    read_all_dead_letters,
    rotated_path,
)


def register(subparsers: Any) -> None:
    """Add ``shardctl candles``, ``shardctl gaps`` and ``shardctl deadletters``."""
    register_deadletters(subparsers)
    register_gaps(subparsers)
    register_candles(subparsers)


# ---------------------------------------------------------------- candles

def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def format_candles(rows: Sequence[tuple], fmt: str = "table") -> str:
    """Render rows as an aligned table (numbers right-aligned), CSV with a header, or a JSON list of objects."""
    if fmt == "json":
        return json.dumps([{c: _json_value(v) for c, v in zip(COLUMNS, row)} for row in rows], indent=2)
    cells = [[_text(v) for v in row] for row in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(cells)
        return out.getvalue().rstrip("\n")
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(COLUMNS)]
    left = {0, 1}
    lines = [" | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip(),
             "-+-".join("-" * w for w in widths)]
    for row in cells:
        lines.append(" | ".join(v.ljust(w) if i in left else v.rjust(w)
                                for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)


def cmd_candles(args: argparse.Namespace) -> int:
    """Print the candles of one symbol; an empty result is a message on stderr (exit 0)."""
    config = load_config(args.config)
    spec = candle_spec(config.tables, args.interval)
    try:
        since = timedelta(seconds=parse_duration(args.since))
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    target = resolve_target(config)
    if target.started and target.embedded is not None:
        print(f"embedded PostgreSQL started in {target.embedded.data_dir}; stop it with "
              f"`shardctl db stop {config.path}`", file=sys.stderr)
    conn = connect(target.dsn, application_name="shardctl candles")
    try:
        rows = fetch_candles(conn, config.tables, args.symbol, args.interval, since)
        hint = "" if rows else _hint(conn, config.tables, args.symbol)
    finally:
        conn.close()
    if rows or args.format != "table":
        print(format_candles(rows, args.format))
    if not rows:
        print(f"no {args.interval} candles for {args.symbol!r} in the last {args.since} "
              f"(in {spec.table}){hint}", file=sys.stderr)
    return EXIT_OK


def _hint(conn: Connection, tables: TablesConfig, symbol: str) -> str:
    known = known_symbols(conn, tables)
    if symbol in known:
        return ""
    close = difflib.get_close_matches(symbol, known, n=3, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    return f"; known symbols: {', '.join(known[:10])}" if known else "; no candles yet"


def register_candles(subparsers: Any) -> None:
    """Add ``shardctl candles CONFIG SYMBOL [--interval 1d] [--since 14d] [--format table|csv|json]``."""
    text = "print a symbol's OHLCV candles (the tutorial's one_day_candle query, at any configured interval)"
    parser = subparsers.add_parser("candles", help=text, description=text)
    parser.add_argument("config", help="path of the TOML config")
    parser.add_argument("symbol", help="e.g. BTC/USD")
    parser.add_argument("--interval", default="1d", help="candle interval: 1m, 1h or 1d (default 1d)")
    parser.add_argument("--since", default="14d", help="how far back, e.g. 90m, 12h, 14d (default 14d)")
    parser.add_argument("--format", default="table", choices=["table", "csv", "json"])
    parser.set_defaults(func=cmd_candles)


# ---------------------------------------------------------------- gaps

def _stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _status_text(gap: Gap) -> str:
    if gap.backfill_status is None:
        return "-"
    if gap.backfilled_bars is not None and not gap.backfill_status.startswith("skipped"):
        return f"{gap.backfill_status} ({gap.backfilled_bars} bars)"
    return gap.backfill_status


def format_table(gaps: Sequence[Gap]) -> str:
    """An aligned text table: shard, from, to, duration, reason, backfill (no trailing newline)."""
    header = ("SHARD", "FROM", "TO", "DURATION", "REASON", "BACKFILL")
    rows = [(g.shard, _stamp(g.gap_from), _stamp(g.gap_to), format_duration(g.duration), g.reason,
             _status_text(g)) for g in gaps]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def register_gaps(subparsers: Any) -> None:
    """Add ``shardctl gaps`` to the CLI."""
    p = subparsers.add_parser("gaps", help="list recorded gaps in the tick stream and their backfill",
                              description="List the gaps recorded for every shard (or one), oldest first.")
    p.add_argument("config", help="path of the TOML config")
    p.add_argument("shard", nargs="?", default=None, help="only this shard")
    p.add_argument("--since", default=None, metavar="DURATION",
                   help="only gaps that ended within this long ago, e.g. 7d, 12h (default: all)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    p.set_defaults(func=cmd_gaps)


def cmd_gaps(args: argparse.Namespace) -> int:
    """Print the gaps as an aligned table (or "no gaps recorded") or as a JSON list; exit 0."""
    since: timedelta | None = None
    if args.since is not None:
        try:
            since = timedelta(seconds=parse_duration(args.since))
        except ValueError as exc:
            raise UsageError(f"--since: {exc}") from None
    config = load_config(args.config)
    if args.shard is not None:
        config.shard(args.shard)  # ConfigError naming the known shards
    conn = connect(resolve_dsn(config), application_name="shardctl gaps")
    try:
        gaps = list_gaps(conn, args.shard, since)
    finally:
        conn.close()
    if args.format == "json":
        print(json.dumps([g.as_dict() for g in gaps], indent=2))
    elif gaps:
        print(format_table(gaps))
    else:
        scope = f"shard {args.shard}" if args.shard else "any shard"
        print(f"no gaps recorded for {scope}" + (f" in the last {args.since}" if args.since else ""),
              file=sys.stdout)
    return EXIT_OK


# ---------------------------------------------------------------- dead letters

def cmd_deadletters(args: argparse.Namespace) -> int:
    """List what was set aside and why, newest last, at most --limit per shard (``.1`` file, then the current)."""
    config = load_config(args.config)
    names = [config.shard(args.shard).name] if args.shard else list(config.shards)
    total = 0
    for name in names:
        entries = list(read_all_dead_letters(dead_letter_path(config, name)))
        total += len(entries)
        if args.format == "json":
            for entry in entries[-args.limit:]:
                sys.stdout.write(orjson.dumps({"shard": name, **entry}).decode() + "\n")
            continue
        rotated = rotated_path(dead_letter_path(config, name))
        print(f"{name}: {len(entries)} dead letter(s) in {dead_letter_path(config, name)}"
              + (f" and {rotated.name}" if rotated.exists() else ""))
        for entry in entries[-args.limit:]:
            at = entry.get("at")
            stamp = datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if at else "?"
            frame = str(entry.get("frame", ""))
            frame = frame if len(frame) <= 100 else frame[:97] + "..."
            print(f"  {stamp}  {entry.get('reason', '?')}\n      {frame}")
    if args.format != "json" and not total:
        print("no dead letters: every frame received so far was understood")
    return 0


def register_deadletters(subparsers: Any) -> None:
    """Add ``shardctl deadletters``."""
    parser = subparsers.add_parser("deadletters", help="show malformed frames that were set aside, and why")
    parser.add_argument("config", help="path of the TOML config")
    parser.add_argument("shard", nargs="?", help="only this shard")
    parser.add_argument("--limit", type=int, default=20, help="newest entries to show per shard (default 20)")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.set_defaults(func=cmd_deadletters)
