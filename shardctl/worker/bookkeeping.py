"""What a worker learns besides ticks, handed to the committer thread: gaps and asset names.

Gaps are stretches in which the shard may have missed ticks: the stream's
disconnections, the time the worker was down (from the last frame its
journal holds to its first connection), and frames the journal dropped at its cap. Asset
names come from the first event of each symbol (``currency_base``, which the
parser keeps: ``FrameParser.take_new_names``). Both are
written by the committer thread, in order with the batches and retried like
them, so neither ever blocks the socket.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

from shardctl.journal.journal import Journal
from shardctl.twelvedata.stream import StreamClient
from shardctl.worker.committer import BatchWriter, Committer
from shardctl.worker.readgate import ReadGate

log = logging.getLogger("shardctl.worker")

#: Gaps remembered after they were handed over, to record again if the database goes back in time.
RECENT_GAPS = 1000


def _utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, timezone.utc)


@dataclass(frozen=True, slots=True)
class RecordGap:
    """A committer task: record that the shard may have missed ticks between ``start`` and ``end``."""

    start: datetime
    end: datetime
    reason: str

    def __call__(self, writer: BatchWriter) -> None:
        writer.record_gap(self.start, self.end, self.reason)


@dataclass(frozen=True, slots=True)
class UpsertAssets:
    """A committer task: store the asset names learnt from the stream (None: none known yet)."""

    names: Mapping[str, str | None]

    def __call__(self, writer: BatchWriter) -> None:
        writer.upsert_assets(self.names)


class Bookkeeper:
    """Collects gaps and asset names in the main thread; ``hand_over`` queues them for the database."""

    def __init__(self) -> None:
        #: Wall-clock time the previous worker of this shard was last alive (None: unknown).
        self.down_since: float | None = None
        #: The reason the "down" gap is recorded with (a takeover names the host it took the shard from).
        self.down_reason = "worker down"
        self._new_assets: dict[str, str | None] = {}
        self._journal_gaps_taken = 0
        #: Gaps found elsewhere (a database that went back in time): (from, to, reason), wall-clock seconds.
        self.extra_gaps: list[tuple[float, float, str]] = []
        self._recent: collections.deque[tuple[float, float, str]] = collections.deque(maxlen=RECENT_GAPS)

    def record_again_since(self, since: float | None) -> int:
        """The database went back to ``since`` (wall clock; None: unknown, all): the gaps this process handed
        over that end after it were rolled back with it; queue them again (recording is idempotent)."""
        again = [g for g in self._recent if since is None or g[1] >= since]
        self.extra_gaps.extend(again)
        return len(again)

    def hand_over(self, stream: StreamClient, journal: Journal, gate: ReadGate, committer: Committer,
                  assets: Mapping[str, str | None]) -> None:
        """Queue every gap learnt since the last call, and ``assets`` (symbols met for the first time, with the
        name their first event carried), as committer tasks."""
        self._new_assets.update(assets)
        gaps, gate.gaps = gate.gaps, []
        if self.down_since is not None and stream.first_connected_at is not None:
            gaps.append((self.down_since, stream.first_connected_at, self.down_reason))
            self.down_since = None
        gaps.extend(stream.gaps)
        stream.gaps.clear()
        gaps.extend(self.extra_gaps)
        self.extra_gaps.clear()
        for gap in journal.gaps[self._journal_gaps_taken:]:
            self._journal_gaps_taken += 1
            if gap.first_received_at is not None:
                gaps.append((gap.first_received_at, gap.resumed_received_at or time.time(),
                             f"journal cap: dropped {gap.records} frame(s)"))
        for start, end, reason in gaps:
            log.warning("gap recorded: %s for %.1fs", reason, end - start)
            committer.run_task(RecordGap(_utc(start), _utc(end), reason))
            self._recent.append((start, end, reason))
        if self._new_assets:
            names, self._new_assets = self._new_assets, {}
            committer.run_task(UpsertAssets(names))
