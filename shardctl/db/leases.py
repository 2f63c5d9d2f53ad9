"""Shard leases across hosts: who streams each shard, with a fencing epoch, in PostgreSQL.

Tables (``sql/common/leases.sql``): ``shardctl_hosts`` (one heartbeat
counter per host, moved by every renewal) and ``shardctl_leases`` (per
shard: owner host, epoch, an operator's pending move, and who committed the
last batch). No consensus protocol of our own: every change is one
compare-and-set statement on the lease row, and the right to commit is
checked in the batch's own transaction (``fence``), so a host that lost its
lease can never commit again, whatever it believes.

Two faces:

* ``fence`` and ``lease_start`` (blocking, psycopg2 cursors): the worker's
  writer, inside its transactions;
* ``LeaseStore`` (asyncio, psycopg2's asynchronous connections on the
  caller's loop, no threads): the supervisor's renewals, reads and moves.
  Every call is bounded (``timeout``); a call that fails or times out drops
  the connection (the next reconnects) and raises DatabaseUnavailable or
  DatabaseError. Statements run with ``lock_timeout`` 2 s: a lease row held
  by a batch transaction of a vanished host waits until the server drops
  that session (``CLUSTER_SERVER_OPTIONS``) rather than blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import connection as Connection

from shardctl.db.connection import connect_params, map_error
from shardctl.errors import DatabaseError, DatabaseUnavailable, ShardFenced

#: The supervisor hands a worker the epoch of the lease it acquired in this variable.
LEASE_EPOCH_ENV = "SHARDCTL_LEASE_EPOCH"
LEASES_TABLE = "shardctl_leases"
HOSTS_TABLE = "shardctl_hosts"
#: Lease statements never wait longer than this for a row lock, nor run longer than the statement timeout.
_SESSION_OPTIONS = "-c lock_timeout=2000 -c statement_timeout=5000"
CALL_TIMEOUT = 6.0


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a worker was started under: it may commit only while the lease row still names both."""

    host_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class LeaseStart:
    """What a worker learns at start: who committed the shard's last batch, and that frame's receive time."""

    committed_host: str | None
    committed_received_at: datetime | None


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One shard's lease as read now; ``owner_heartbeat`` is the owner's counter (None: no host row)."""

    shard: str
    owner: str | None
    epoch: int
    move_to: str | None = None
    owner_heartbeat: int | None = None


@dataclass(frozen=True, slots=True)
class HostRow:
    """A host's heartbeat; ``fresh`` when it renewed within the TTL by the database's clock."""

    host_id: str
    heartbeat: int
    fresh: bool


@dataclass(frozen=True, slots=True)
class ClusterView:
    """Every configured shard's lease (absent: never owned) and every known host, read in one statement each."""

    leases: dict[str, LeaseRow]
    hosts: dict[str, HostRow]


# ---------------------------------------------------------------- the worker's side (blocking)

_FENCE = (f"UPDATE {LEASES_TABLE} SET committed_host = %s, committed_epoch = %s, "
          f"committed_received_at = COALESCE(%s, committed_received_at) "
          f"WHERE shard = %s AND owner = %s AND epoch = %s")


def fence(cur: Any, shard: str, fence: Fence, received_at: datetime | None) -> None:
    """Inside a batch's transaction: claim the commit for ``fence``, or raise ShardFenced.

    Row-locks the lease row until the transaction ends, so a takeover's
    compare-and-set waits for this batch, and a batch begun after a takeover
    finds the new epoch and commits nothing. The caller must roll back on
    ShardFenced.
    """
    cur.execute(_FENCE, (fence.host_id, fence.epoch, received_at, shard, fence.host_id, fence.epoch))
    if cur.rowcount != 1:
        raise ShardFenced(f"shard {shard}: the lease is no longer {fence.host_id}'s at epoch {fence.epoch} "
                          "(another host took the shard over); committing nothing more")


def lease_start(conn: Connection, shard: str, fence: Fence) -> LeaseStart:
    """Check that ``fence`` is still the shard's lease and say who committed last; ShardFenced otherwise.

    Commits its (read-only) transaction. psycopg2 errors propagate to the caller.
    """
    with conn.cursor() as cur:
        cur.execute(f"SELECT owner, epoch, committed_host, committed_received_at FROM {LEASES_TABLE} "
                    f"WHERE shard = %s", (shard,))
        row = cur.fetchone()
    conn.commit()
    if row is None or row[0] != fence.host_id or row[1] != fence.epoch:
        held = "nobody" if row is None or row[0] is None else f"{row[0]} at epoch {row[1]}"
        raise ShardFenced(f"shard {shard}: started for {fence.host_id} at epoch {fence.epoch}, but the lease is "
                          f"held by {held}; not streaming")
    return LeaseStart(committed_host=row[2], committed_received_at=row[3])


# ---------------------------------------------------------------- the supervisor's side (asyncio)

class LeaseStore:
    """The supervisor's lease statements on one asynchronous connection (reopened after any failure)."""

    def __init__(self, dsn: str, host_id: str, *, timeout: float = CALL_TIMEOUT) -> None:
        self.dsn = dsn
        self.host_id = host_id
        self.timeout = timeout
        self._conn: Connection | None = None

    async def _open(self) -> Any:
        params = connect_params(self.dsn, application_name=f"shardctl-lease:{self.host_id}", cluster=True)
        params["options"] = f"{params.get('options', '')} {_SESSION_OPTIONS}".strip()
        conn = psycopg2.connect(self.dsn, async_=1, **params)
        try:
            await _wait(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _run(self, query: str, params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
        try:
            return await asyncio.wait_for(self._execute(query, params), self.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self.close()
            raise DatabaseUnavailable(f"the lease statement took longer than {self.timeout:g}s") from None
        except psycopg2.Error as exc:
            conn, self._conn = self._conn, None
            error = map_error(exc, self.dsn, action="lease statement", conn=conn)
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
            raise error from None
        except OSError as exc:
            self.close()
            raise DatabaseUnavailable(f"lease connection failed: {exc}") from None

    async def _execute(self, query: str, params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
        if self._conn is None or self._conn.closed:
            self._conn = await self._open()
        conn = self._conn
        with conn.cursor() as cur:
            cur.execute(query, params)
            await _wait(conn)
            rows = cur.fetchall() if cur.description is not None else []
            return rows, cur.rowcount

    def close(self) -> None:
        """Drop the connection (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    async def renew(self, pid: int) -> int:
        """Move this host's heartbeat counter (creating its row); return the new value."""
        rows, _ = await self._run(
            f"INSERT INTO {HOSTS_TABLE} (host_id, heartbeat, renewed_at, started_at, pid) VALUES (%s, 1, now(), "
            f"now(), %s) ON CONFLICT (host_id) DO UPDATE SET heartbeat = {HOSTS_TABLE}.heartbeat + 1, "
            f"renewed_at = now(), pid = EXCLUDED.pid RETURNING heartbeat", (self.host_id, pid))
        return int(rows[0][0])

    async def view(self, shards: Sequence[str], ttl: float) -> ClusterView:
        """The leases of ``shards`` with their owners' heartbeats, and every host (fresh: renewed within ``ttl``)."""
        rows, _ = await self._run(
            f"SELECT l.shard, l.owner, l.epoch, l.move_to, h.heartbeat FROM {LEASES_TABLE} l "
            f"LEFT JOIN {HOSTS_TABLE} h ON h.host_id = l.owner WHERE l.shard = ANY(%s)", (list(shards),))
        leases = {r[0]: LeaseRow(r[0], r[1], int(r[2]), r[3], None if r[4] is None else int(r[4])) for r in rows}
        rows, _ = await self._run(
            f"SELECT host_id, heartbeat, renewed_at > now() - make_interval(secs => %s) FROM {HOSTS_TABLE} "
            f"ORDER BY host_id", (ttl,))
        return ClusterView(leases, {r[0]: HostRow(r[0], int(r[1]), bool(r[2])) for r in rows})

    async def acquire(self, shard: str, expected_epoch: int | None) -> int | None:
        """Take the lease if it is still at ``expected_epoch`` (None: no row yet); the new epoch, or None if lost."""
        if expected_epoch is None:
            rows, _ = await self._run(
                f"INSERT INTO {LEASES_TABLE} (shard, owner, epoch, acquired_at) VALUES (%s, %s, 1, now()) "
                f"ON CONFLICT (shard) DO NOTHING RETURNING epoch", (shard, self.host_id))
        else:
            rows, _ = await self._run(
                f"UPDATE {LEASES_TABLE} SET owner = %s, epoch = epoch + 1, acquired_at = now(), move_to = NULL "
                f"WHERE shard = %s AND epoch = %s RETURNING epoch", (self.host_id, shard, expected_epoch))
        return int(rows[0][0]) if rows else None

    async def hand_over(self, shard: str, epoch: int, to: str | None) -> bool:
        """Give our lease at ``epoch`` to host ``to`` (None: to nobody, any standby takes it); False if not ours."""
        _, count = await self._run(
            f"UPDATE {LEASES_TABLE} SET owner = %s, epoch = epoch + 1, acquired_at = now(), move_to = NULL "
            f"WHERE shard = %s AND owner = %s AND epoch = %s", (to, shard, self.host_id, epoch))
        return count == 1

    async def request_move(self, shard: str, to: str) -> str:
        """Ask the shard's owner to hand it to ``to``; return the owner. DatabaseError if nobody owns it."""
        rows, _ = await self._run(
            f"UPDATE {LEASES_TABLE} SET move_to = %s WHERE shard = %s AND owner IS NOT NULL RETURNING owner",
            (to, shard))
        if not rows:
            raise DatabaseError(f"shard {shard} has no owner to move it from")
        return str(rows[0][0])


async def _wait(conn: Connection) -> None:
    """Drive an asynchronous psycopg2 connection until its current operation is done, on the running loop."""
    loop = asyncio.get_running_loop()
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        fd = conn.fileno()
        ready: asyncio.Future[None] = loop.create_future()

        def wake(fut: asyncio.Future[None] = ready) -> None:
            if not fut.done():
                fut.set_result(None)

        if state == psycopg2.extensions.POLL_READ:
            loop.add_reader(fd, wake)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
        elif state == psycopg2.extensions.POLL_WRITE:
            loop.add_writer(fd, wake)
            try:
                await ready
            finally:
                loop.remove_writer(fd)
        else:
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
