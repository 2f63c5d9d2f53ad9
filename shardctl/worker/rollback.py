"""A database that went back in time: line the journal up with its older ledger, and say what is lost.

The ledger a worker reads (at start) or writes against (every batch) is
behind what this shard saw committed: a failover to an asynchronous standby,
or a restore. The standby's (or backup's) rows and ledger are one consistent
snapshot, so the rows of every frame after the older ledger's offset are
missing and none before it: the journal's records after that offset are made
uncommitted again and written once more, with no duplicate. Records the
journal no longer holds (past ``journal_retain``, or never written on this
host) are a gap, from the older ledger's last receive time to the first record
kept, so backfill fills it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from shardctl.journal.journal import Journal

log = logging.getLogger("shardctl.worker")

ROLLBACK_REASON = "database went back in time"


@dataclass(frozen=True, slots=True)
class Rollback:
    """What was found and done: the ledger's offset, the offset known committed, where re-reading starts."""

    ledger_offset: int
    known_offset: int
    resume_offset: int
    #: (from, to) wall-clock seconds of the stretch the journal no longer held (None: it held all of it).
    lost: tuple[float, float] | None

    def describe(self) -> str:
        """One line for the status: the offsets, and what is written again or lost."""
        text = (f"ledger at journal offset {self.ledger_offset}, behind the committed {self.known_offset}: "
                f"offsets {self.resume_offset}..{self.known_offset} written again from the journal")
        if self.lost is not None:
            text += (f"; offsets {self.ledger_offset}..{self.resume_offset} no longer in the journal, "
                     f"recorded as a gap of {self.lost[1] - self.lost[0]:.1f}s")
        return text


def rewind_journal(journal: Journal, ledger_offset: int, known_offset: int,
                   ledger_received_at: datetime | None) -> Rollback:
    """Make the journal's records after ``ledger_offset`` uncommitted again; log the rollback as an ERROR."""
    resume = journal.uncommit(ledger_offset)
    lost = None
    if resume > ledger_offset:
        end = journal.oldest_uncommitted_received_at or time.time()
        start = ledger_received_at.timestamp() if ledger_received_at is not None else end
        lost = (min(start, end), end)
    rollback = Rollback(ledger_offset, known_offset, resume, lost)
    log.error("the database went back in time (a failover to an asynchronous standby, or a restore): %s",
              rollback.describe())
    return rollback
