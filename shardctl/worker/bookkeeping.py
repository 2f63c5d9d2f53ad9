"""What a worker learns besides ticks, handed to the committer thread: gaps and asset names.

Gaps are stretches in which the shard may have missed ticks: the stream's
disconnections, the time the worker was down (from the last frame its
journal holds to its first connection), and frames the journal dropped at its cap.
The "worker down" gap is owed on disk (``OwedGap``, beside the journal) from
start until the database has it: a worker killed before it recorded the gap
leaves it to the next one, which records one gap from the earlier start. Asset
names come from the first event of each symbol (``currency_base``, which the
parser keeps: ``FrameParser.take_new_names``). Both are
written by the committer thread, in order with the batches and retried like
them, so neither ever blocks the socket.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

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
    #: Called once the database has the gap.
    then: Callable[[], None] | None = None

    def __call__(self, writer: BatchWriter) -> None:
        writer.record_gap(self.start, self.end, self.reason)
        if self.then is not None:
            self.then()


@dataclass(frozen=True, slots=True)
class UpsertAssets:
    """A committer task: store the asset names learnt from the stream (None: none known yet)."""

    names: Mapping[str, str | None]

    def __call__(self, writer: BatchWriter) -> None:
        writer.upsert_assets(self.names)


class OwedGap:
    """The file ``down.owed`` in ``directory``: since when the shard's "worker down" gap runs, and why, while
    no worker has recorded it in the database yet."""

    NAME = "down.owed"
    _SINCE = struct.Struct("<d")

    def __init__(self, directory: Path) -> None:
        self.path = directory / self.NAME

    def read(self) -> tuple[float, str] | None:
        """(since, reason), or None when nothing is owed (or the file is torn)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) <= self._SINCE.size:
            return None
        since = self._SINCE.unpack_from(data)[0]
        reason = data[self._SINCE.size:].decode("utf-8", "replace")
        return None if math.isnan(since) else (since, reason)

    def write(self, since: float, reason: str) -> None:
        """Owe the gap from ``since``, replacing the file whole (a kill leaves the old one or the new). An
        OSError (a full disk) leaves the old one, which starts no later: it is logged, not raised."""
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, self._SINCE.pack(since) + reason.encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write %s (%s): if this worker dies before it records its \"%s\" gap, the next "
                        "one starts it later", self.path, exc.strerror or exc, reason)

    def paid(self) -> None:
        """The database has the gap."""
        self.path.unlink(missing_ok=True)


class Bookkeeper:
    """Collects gaps and asset names in the main thread; ``hand_over`` queues them for the database."""

    def __init__(self, owed: OwedGap) -> None:
        self._owed = owed
        #: Wall-clock time the previous worker of this shard was last alive (None: unknown).
        self.down_since: float | None = None
        #: The reason the "down" gap is recorded with (a takeover names the host it took the shard from).
        self.down_reason = "worker down"
        self._new_assets: dict[str, str | None] = {}
        self._journal_gaps_taken = 0
        #: Gaps found elsewhere (a database that went back in time): (from, to, reason), wall-clock seconds.
        self.extra_gaps: list[tuple[float, float, str]] = []
        self._recent: collections.deque[tuple[float, float, str]] = collections.deque(maxlen=RECENT_GAPS)

    def owe_down_gap(self, *, inherit: bool = True) -> None:
        """Keep the "worker down" gap on disk until it is recorded; with ``inherit``, start it where a
        predecessor's unrecorded one started, when that is earlier."""
        owed = self._owed.read() if inherit else None
        if owed is not None and (self.down_since is None or owed[0] < self.down_since):
            self.down_since, self.down_reason = owed
        if self.down_since is None:
            self._owed.paid()
        else:
            self._owed.write(self.down_since, self.down_reason)

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
        if self.down_since is not None and stream.first_connected_at is not None:
            self._record(committer, (self.down_since, stream.first_connected_at, self.down_reason),
                         then=self._owed.paid)
            self.down_since = None
        gaps, gate.gaps = gate.gaps, []
        gaps.extend(stream.gaps)
        stream.gaps.clear()
        gaps.extend(self.extra_gaps)
        self.extra_gaps.clear()
        for gap in journal.gaps[self._journal_gaps_taken:]:
            self._journal_gaps_taken += 1
            if gap.first_received_at is not None:
                gaps.append((gap.first_received_at, gap.resumed_received_at or time.time(),
                             f"journal cap: dropped {gap.records} frame(s)"))
        for found in gaps:
            self._record(committer, found)
        if self._new_assets:
            names, self._new_assets = self._new_assets, {}
            committer.run_task(UpsertAssets(names))

    def _record(self, committer: Committer, gap: tuple[float, float, str],
                then: Callable[[], None] | None = None) -> None:
        start, end, reason = gap
        log.warning("gap recorded: %s for %.1fs", reason, end - start)
        committer.run_task(RecordGap(_utc(start), _utc(end), reason, then=then))
        self._recent.append(gap)
