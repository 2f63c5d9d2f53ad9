"""``shardctl demo``: the demo from an installed package alone, no clone, no key, no database server.

It writes the built-in demo config (the repository's ``config/demo.toml``,
shipped as ``shardctl.examples``) to ``STATE_DIR/demo.toml``, with the ports
asked for, and runs the supervisor on it in the foreground: the local feed
(``shardctl feed``, simulated prices on 127.0.0.1), the embedded PostgreSQL
in the state directory, one worker per shard. Once every shard runs it
prints where the status page is (a daemon thread that polls the control socket:
the one thread beside the supervisor's loop, in demo mode only). ``shardctl status``, ``stop`` and
``restart`` find it in the default state directory, as with ``shardctl start``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

from shardctl.config.model import default_state_dir
from shardctl.config.starter import DEMO_CONFIG, DEMO_FEED_PORT, DEMO_METRICS_PORT, demo_config_text
from shardctl.errors import EXIT_OK, ControlError, UsageError
from shardctl.private import PRIVATE_UMASK, private_dir, private_open

log = logging.getLogger("shardctl.supervisor")

#: How long the announcement waits for every shard to run before giving up (silently: the log says why).
ANNOUNCE_WITHIN = 120.0


def write_demo_config(state_dir: Path, *, feed_port: int, metrics_port: int) -> Path:
    """Write the demo config with these ports to ``state_dir/demo.toml`` (0600, replaced each time); return it."""
    private_dir(state_dir)
    path = state_dir / DEMO_CONFIG
    text = demo_config_text(feed_port=feed_port, metrics_port=metrics_port)
    header = ("# Written by `shardctl demo` from the built-in demo config; replaced on every `shardctl demo`.\n"
              "# To change it, copy it elsewhere and run `shardctl start COPY`.\n")
    fd = private_open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(header + text)
    return path


class _Out:
    """Lines for the user on stdout, flushed at once (the supervisor's log goes to stderr)."""

    def say(self, text: str) -> None:
        print(text, flush=True)


def _announce(config_path: Path, url: str, out: _Out) -> None:
    """Print the status page's address once every shard is RUNNING (polls the control socket)."""
    from shardctl.config import load_config
    from shardctl.supervisor.control import ControlClient

    config = load_config(config_path)
    client = ControlClient(config.supervisor.control_socket, config.path)
    deadline = time.monotonic() + ANNOUNCE_WITHIN
    while time.monotonic() < deadline:
        try:
            shards = client.request("status", timeout=5.0)["shards"]
        except ControlError:
            shards = []
        if shards and all(s["state"] == "RUNNING" for s in shards):
            names = ", ".join(s["name"] for s in shards)
            out.say(f"shardctl demo: {len(shards)} shard(s) streaming ({names}); status page: {url}\n"
                    f"  shardctl status | shardctl restart crypto | shardctl stop (or Ctrl-C)")
            return
        time.sleep(0.2)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo in the foreground (see the module docstring); ``--print-config`` prints the config only."""
    for name in ("feed_port", "metrics_port"):
        if not 1 <= getattr(args, name) <= 65535:
            raise UsageError(f"--{name.replace('_', '-')} must be a TCP port (1-65535)")
    if args.feed_port == args.metrics_port:
        raise UsageError("--feed-port and --metrics-port must differ")
    if args.print_config:
        sys.stdout.write(demo_config_text(feed_port=args.feed_port, metrics_port=args.metrics_port))
        return EXIT_OK
    os.umask(PRIVATE_UMASK)
    state_dir = default_state_dir()
    path = write_demo_config(state_dir, feed_port=args.feed_port, metrics_port=args.metrics_port)
    url = f"http://127.0.0.1:{args.metrics_port}/"
    out = _Out()
    out.say(f"shardctl demo: simulated prices from a local feed on 127.0.0.1:{args.feed_port}, an embedded "
            f"PostgreSQL in {state_dir}; config {path}\n  starting; the status page will be at {url}")
    from shardctl.supervisor.supervisor import serve

    announcer = threading.Thread(target=_announce, args=(path, url, out), name="demo-announce", daemon=True)
    return serve(path, log_format=args.log_format, on_ready=lambda _sup: announcer.start())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shardctl demo`` to the CLI."""
    p = subparsers.add_parser(
        "demo", help="run the demo: local feed, embedded PostgreSQL, two shards, status page",
        description="Run the built-in demo in the foreground: simulated prices from a local Twelve Data-"
                    "compatible feed, an embedded PostgreSQL in the state directory ($SHARDCTL_STATE_DIR or "
                    "your user data directory), two shards, the status page. Needs no key, no database and "
                    "no clone of the repository.")
    p.add_argument("--feed-port", type=int, default=DEMO_FEED_PORT,
                   help=f"port of the local feed (default {DEMO_FEED_PORT})")
    p.add_argument("--metrics-port", type=int, default=DEMO_METRICS_PORT,
                   help=f"port of the status page, /metrics and /healthz (default {DEMO_METRICS_PORT})")
    p.add_argument("--print-config", action="store_true",
                   help="print the demo config (every key, with a comment) and exit")
    p.set_defaults(func=cmd_demo)
