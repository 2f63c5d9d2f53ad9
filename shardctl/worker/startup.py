"""Where a starting worker picks its journal up: at the ledger's offset, or after another host's tenure."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shardctl.db.leases import LeaseStart
from shardctl.db.writer import LedgerPosition
from shardctl.journal.journal import Journal
from shardctl.rows import Tick
from shardctl.twelvedata.parse import FrameParser
from shardctl.worker.rollback import Rollback, rewind_journal

log = logging.getLogger("shardctl.worker")


@dataclass(frozen=True, slots=True)
class Takeover:
    """The shard comes from another host: its "worker down" gap starts at that host's last committed frame."""

    down_since: float | None
    reason: str


def read_until(journal: Journal) -> float | None:
    """Where the "worker down" gap of a predecessor that died starts: at or before the send time of the
    first frame it never read (None: it never read one).

    Its last read is not enough: a worker that fell behind its socket (a stall, a starved CPU, a slow
    disk) read, at its last receive time, frames the server had sent up to seconds before; what waited
    behind them was sent earlier still. So the gap starts at the latest event timestamp in the last
    burst the journal holds, when that is earlier: what was never read was sent after it (one
    connection keeps the server's order, and no event is sent before it happens).
    """
    received = journal.last_received_at
    if received is None:
        return None
    parser = FrameParser()
    times = [found.time.timestamp() for found in map(parser.read, journal.last_burst) if isinstance(found, Tick)]
    return min(received, max(times)) if times else received


def open_at_ledger(journal: Journal, ledger: LedgerPosition, lease: LeaseStart | None,
                   host_id: str | None) -> Takeover | Rollback | None:
    """Line the journal up with the ledger's offset; a Takeover when another host committed last,
    a Rollback when the ledger is behind what the journal saw committed (``shardctl.worker.rollback``).

    After a takeover this host's journal holds an earlier tenure's frames: they are dropped, and what
    the previous owner read but never committed is lost, inside the gap from its last committed frame.
    """
    base = ledger.offset
    if lease is not None and lease.committed_host not in (None, host_id):
        dropped = journal.backlog_records
        journal.advance_to(max(base, journal.end_offset + 1))
        received = lease.committed_received_at
        log.info("taking the shard over from %s at ledger offset %d%s", lease.committed_host, base,
                 f"; dropped {dropped} journal record(s) of an earlier tenure" if dropped else "")
        return Takeover(received.timestamp() if received is not None else None,
                        f"takeover from {lease.committed_host}")
    marked = journal.marked_committed
    if marked is not None and base < marked <= journal.end_offset:
        return rewind_journal(journal, base, marked, ledger.received_at)
    if base > journal.end_offset:
        log.warning("the journal ends at offset %d but the ledger is at %d (journal replaced?): "
                    "starting a new journal there", journal.end_offset, base)
        journal.advance_to(base)
    elif base < journal.first_offset:
        log.error("the journal starts at offset %d, after the ledger's %d: frames in between are lost",
                  journal.first_offset, base)
    else:
        journal.commit(base)
    return None
