"""The supervisor's record of which symbols it means to collect (``shardctl.db.collection``), for the audit's "off".

``CollectionRecord.sync(reason)`` writes, in a thread, the open stretches as
the shards the supervisor wants running now (single-host mode; a cluster's
hosts would overwrite each other's view, so cluster mode records nothing).
Calls are serialised; each one reads the wanted state when it runs, so the
last one wins. A failure is logged, never raised: the record must not stall a lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Callable, Mapping, Sequence

from shardctl.db.collection import reconcile_collection
from shardctl.db.connection import connect
from shardctl.errors import ShardctlError

log = logging.getLogger("shardctl.supervisor")

#: shard -> its symbols, for the shards the supervisor wants running now.
Wanted = Callable[[], Mapping[str, Sequence[str]]]


class CollectionRecord:
    """Keeps ``shardctl_collection`` in step with the supervisor's wanted shards (see the module docstring)."""

    def __init__(self, dsn: str, wanted: Wanted, shards: Callable[[], Sequence[str]]) -> None:
        self.dsn, self._wanted, self._shards = dsn, wanted, shards
        self._lock = asyncio.Lock()

    async def sync(self, reason: str) -> None:
        """Record the wanted state now; ``reason`` goes on the stretches it closes."""
        async with self._lock:
            wanted, shards = dict(self._wanted()), list(self._shards())
            try:
                opened, closed = await asyncio.to_thread(self._write, wanted, shards, reason)
            except ShardctlError as exc:
                log.warning("cannot record which symbols are collected (%s): %s", reason, exc)
                return
            if opened or closed:
                log.info("collecting: %d symbol(s) started, %d stopped (%s)", opened, closed, reason)

    def _write(self, wanted: Mapping[str, Sequence[str]], shards: Sequence[str], reason: str) -> tuple[int, int]:
        conn = connect(self.dsn, application_name="shardctl-supervisor")
        try:
            # time.time(), not datetime.now(): end-to-end tests simulate the wall clock (shardctl.simclock)
            return reconcile_collection(conn, wanted, shards, datetime.fromtimestamp(time.time(), timezone.utc), reason)
        finally:
            conn.close()
