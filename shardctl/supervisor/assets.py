"""Instrument names in the assets table, from Twelve Data's reference lists: at start and once a day.

``fill_asset_names(config_path)`` looks every configured symbol up
(``shardctl.twelvedata.reference.check_symbols``: at most 5 API credits, one
per list, a list only while some symbol of its shape is still unknown) and
writes each name found into the assets table (``crypto_assets.name``),
replacing what the stream said (``currency_base``); the stream only fills
names still missing. Symbols Twelve Data does not know are logged once per
fill. A 429 (the minute's credits spent, e.g. by backfill on the same key)
waits for the next minute, at most 3 times.

The supervisor runs it in a child process (``python -m
shardctl.supervisor.assets CONFIG``, the DSN in ``SHARDCTL_DSN``) through
``asset_names_loop``: right after the shards start, then every
``FILL_INTERVAL`` seconds, so a slow or large list (``/stocks`` is tens of
megabytes) never stalls the supervisor and its memory goes back at exit.
A fill that fails (no key, no network) is logged and tried again next time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from shardctl.config import load_config
from shardctl.config.model import LOCAL_FEED_API_KEY
from shardctl.db import connection as database
from shardctl.db.schema import upsert_assets
from shardctl.errors import EXIT_OK, EXIT_RUNTIME, ShardctlError
from shardctl.supervisor.children import run_child
from shardctl.twelvedata.reference import check_symbols

__all__ = ["FILL_INTERVAL", "FILL_TIMEOUT", "asset_names_loop", "fill_asset_names"]

log = logging.getLogger("shardctl.assets")

#: Seconds between fills (once a day).
FILL_INTERVAL = 86400.0
#: A fill still running after this long is killed (and tried again next time).
FILL_TIMEOUT = 900.0


def fill_asset_names(config_path: str | Path) -> int:
    """One fill (see the module docstring); returns the exit code. Raises ShardctlError with one line."""
    config = load_config(config_path)
    symbols = [s for shard in config.shards.values() for s in shard.symbols]
    key = os.environ.get(config.source.api_key_env) or (LOCAL_FEED_API_KEY if config.source.is_local else None)
    result = check_symbols(symbols, config.source.rest_url, key, suggest=False, retries_429=3)
    conn = database.connect(database.resolve_dsn(config, start_embedded=False),
                            application_name="shardctl-assets", autocommit=True)
    try:
        changed = upsert_assets(conn, config.tables, result.names)
    finally:
        conn.close()
    log.info("asset names: %d of %d symbol(s) named from %s (%d row(s) changed in %s); %d API credit(s): %s",
             len(result.names), len(symbols), config.source.rest_url, changed, config.tables.assets,
             result.credits, ", ".join(result.lists) or "none")
    if result.unknown:
        log.warning("asset names: Twelve Data does not know %s (see `shardctl validate --online %s`)",
                    ", ".join(u.symbol for u in result.unknown), config.path)
    return EXIT_OK


async def asset_names_loop(config_path: Path, dsn: str, interval: float = FILL_INTERVAL,
                           timeout: float = FILL_TIMEOUT) -> None:
    """Run a fill in a child process now and then every ``interval`` seconds; failures are logged, never raised.

    Cancelling the loop kills a fill in progress.
    """
    while True:
        await run_child(["shardctl.supervisor.assets", str(config_path)], dsn, timeout, "the asset-name fill")
        await asyncio.sleep(interval)


if __name__ == "__main__":  # python -m shardctl.supervisor.assets CONFIG (the supervisor runs this)
    from shardctl import logs

    logs.configure("assets")
    if len(sys.argv) != 2:
        print("usage: python -m shardctl.supervisor.assets CONFIG", file=sys.stderr)
        raise SystemExit(2)
    try:
        raise SystemExit(fill_asset_names(sys.argv[1]))
    except ShardctlError as exc:
        log.error("asset names: %s", exc)
        raise SystemExit(EXIT_RUNTIME) from None
