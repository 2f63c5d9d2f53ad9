"""``shardctl feed``: the local Twelve Data look-alike in the foreground, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

from shardctl.errors import UsageError
from shardctl.feed.faults import parse_fault_spec
from shardctl.feed.server import LOOPBACK_HOSTS, FeedServer

log = logging.getLogger("shardctl.feed")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shardctl feed`` to the CLI."""
    p = subparsers.add_parser("feed", help="serve a local Twelve Data-compatible websocket feed",
                              description="Serve simulated or replayed Twelve Data prices "
                              "over websocket on 127.0.0.1, with fault modes for tests.")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default), localhost or ::1")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 = any free port)")
    p.add_argument("--symbols", default="", help="comma-separated extra known symbols (SYM, SYM:EXCH, X/Y)")
    p.add_argument("--rate", type=float, default=100.0, help="price events/s per connection (0 = as fast as read)")
    p.add_argument("--count", type=int, default=None, help="stop streaming after N events per connection")
    p.add_argument("--duration", default=None, help="stop streaming after this long per connection (e.g. 30s)")
    p.add_argument("--replay", metavar="FILE", help="replay a JSON-lines file instead of simulating")
    p.add_argument("--fast", action="store_true", help="replay as fast as possible, not at recorded pace")
    p.add_argument("--sent-log", metavar="FILE", help="append every price event sent, as JSON lines")
    p.add_argument("--api-key-env", metavar="NAME",
                   help="environment variable holding the one key to accept (default: any non-empty key)")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="standing fault, e.g. close:after=500, abort:after=1000, garbage:every=1000, "
                        "silence:after=200,seconds=5, malformed_price:after=10, bad_key (repeatable)")
    p.add_argument("--closed-market", action="append", default=[], metavar="MIC",
                   help="REST /market_state calls this exchange (MIC code or name) closed; repeatable "
                        "(default: every exchange open)")
    p.add_argument("--seed", type=int, default=None, help="seed the random walk for reproducible prices")
    p.add_argument("--stats-interval", default="10s", help="how often to log a stats line (default 10s)")
    p.set_defaults(func=cmd_feed)


def cmd_feed(args: argparse.Namespace) -> int:
    """Run the feed in the foreground until SIGTERM/SIGINT; exit 0 on a clean stop. Its log lines say ``[feed]``."""
    from shardctl import logs
    from shardctl.config.model import parse_duration

    logs.configure("feed", level=getattr(args, "log_level", "INFO"), fmt=getattr(args, "log_format", "text"))

    if args.host not in LOOPBACK_HOSTS:
        raise UsageError(f"--host must be one of {', '.join(LOOPBACK_HOSTS)} (the feed is local only), "
                         f"not {args.host!r}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {args.port}")
    if args.rate < 0 or (args.count is not None and args.count < 0):
        raise UsageError("--rate and --count cannot be negative")
    try:
        duration = parse_duration(args.duration) if args.duration is not None else None
        stats_interval = max(parse_duration(args.stats_interval), 0.1)
        faults = [parse_fault_spec(spec) for spec in args.fault]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env, "")
        if not api_key:
            raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is unset or empty")
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    server = FeedServer(args.host, args.port, symbols=symbols, rate=args.rate, count=args.count,
                        duration=duration, api_key=api_key, sent_log=args.sent_log, replay=args.replay,
                        replay_fast=args.fast, seed=args.seed, faults=faults, keep_sent=0)
    for market in args.closed_market:
        server.set_market(market, open=False)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        mode = (f"replay {args.replay} ({'fast' if args.fast else 'recorded pace'})" if args.replay
                else f"rate {args.rate:g}/s" if args.rate else "rate unlimited")
        log.info("feed listening on %s, %d symbols, %s%s%s", server.url, server.symbol_count, mode,
                 ", key required" if api_key else "", f", faults {', '.join(args.fault)}" if faults else "")
        log.info("REST (Twelve Data /time_series, one-minute bars) on %s", server.rest_url)
        last, last_t = 0, time.monotonic()
        while not stop.wait(stats_interval):
            s = server.stats()
            now = time.monotonic()
            log.info("feed stats: open=%d accepted=%d rejected=%d sent=%d (%.0f/s)", s.open_connections,
                     s.accepted, s.rejected, s.sent, (s.sent - last) / (now - last_t))
            last, last_t = s.sent, now
    finally:
        server.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    s = server.stats()
    log.info("feed stopped (%s): accepted=%d rejected=%d evicted=%d sent=%d garbage=%d malformed=%d",
             signal.Signals(received[0]).name if received else "stop", s.accepted, s.rejected, s.evicted,
             s.sent, s.garbage_sent, s.malformed_sent)
    return 0
