"""A worker's symbols: which it streams (changed live on SIGHUP), how fresh each is, and whether its market is open."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Sequence

from shardctl.config import load_config
from shardctl.config.model import ShardConfig
from shardctl.errors import ShardctlError
from shardctl.report import SymbolFreshness
from shardctl.rows import Tick
from shardctl.twelvedata.markets import fetch_market_state
from shardctl.twelvedata.parse import StatusEvent
from shardctl.twelvedata.stream import StreamClient
from shardctl.worker.backfill import Backfiller
from shardctl.worker.freshness import FreshnessTracker
from shardctl.worker.markets import MarketWatch

log = logging.getLogger("shardctl.worker")


class ShardSymbols:
    """The shard's symbol list and what is known of each symbol; ``shard`` is the config now in force."""

    def __init__(self, shard: ShardConfig, config_path: Path, rest_url: str, api_key: str) -> None:
        self.shard = shard
        self._config_path = config_path
        self._reload_requested = False
        s = shard.settings
        self._fresh = FreshnessTracker(shard.symbols, s.stale_after, time.time(), slow_below=s.slow_below,
                                       slow_window=s.slow_window)
        self._markets = MarketWatch(s.market_hours, lambda: fetch_market_state(rest_url, api_key),
                                    s.market_state_refresh)

    @property
    def stale_after(self) -> float:
        return self._fresh.stale_after

    def start(self) -> None:
        self._markets.start()

    def stop(self) -> None:
        self._markets.stop()

    def observe(self, ticks: Sequence[Tick], received_at: float) -> None:
        """``ticks`` arrived together at ``received_at`` (Unix seconds): each one counts for its symbol's freshness."""
        self._fresh.observe_ticks(ticks, received_at)

    def on_status(self, stream: StreamClient, event: StatusEvent) -> None:
        """A subscribe/unsubscribe/reset answer: the stream takes it, and it names the symbols' exchanges."""
        stream.handle_status(event)
        self._markets.learn(event)

    def snapshot(self) -> tuple[SymbolFreshness, ...]:
        """Every symbol's freshness now, stale judged against its market."""
        return self._fresh.snapshot(time.time(), self._markets.market)

    def request_reload(self) -> None:
        """Re-read the symbols at the next ``reload_if_requested`` (safe from a signal handler)."""
        self._reload_requested = True

    def reload_if_requested(self, stream: StreamClient, backfill: Backfiller | None) -> None:
        """Stream the symbols the config file lists now, on the open connection; other changes need a restart."""
        if not self._reload_requested:
            return
        self._reload_requested = False
        try:
            new = load_config(self._config_path, require_env=True).shards.get(self.shard.name)
        except ShardctlError as exc:
            log.error("symbols not reloaded: %s", exc)
            return
        if new is None:
            log.warning("symbols not reloaded: the shard is no longer in %s", self._config_path)
            return
        if dataclasses.replace(self.shard, symbols=new.symbols) != new:
            log.warning("symbols not reloaded: other settings of the shard changed too; restart it to apply them")
            return
        added, removed = stream.change_symbols(new.symbols)
        self.shard = new
        self._fresh.set_symbols(new.symbols, time.time())
        if backfill is not None:
            backfill.symbols = new.symbols
        log.info("symbols reloaded: added %s, removed %s", ", ".join(added) or "none", ", ".join(removed) or "none")
