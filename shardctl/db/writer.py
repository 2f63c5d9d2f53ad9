"""Writes batches of ticks with binary COPY and commits the shard's ledger row in the same transaction.

The ledger row (``shard``, ``last_seq``, ``journal_offset``, ``rows_total``)
is the idempotency key: a batch whose ``seq`` is not above the committed
``last_seq`` is refused without writing, so a caller that lost the answer to
a commit (connection dropped mid-commit) can simply send the same batch again.

Errors: ``DatabaseUnavailable`` when the connection is lost or the server is
out of reach (the connection is dropped; the next call reconnects, so the
caller retries the same batch with backoff), ``DatabaseError`` otherwise
(the transaction is rolled back; retrying the same batch will fail again).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Mapping, Sequence

import psycopg2
from pgcopy import CopyManager, inspect
from pgcopy.copy import numeric as _pgcopy_numeric
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import encodings

from shardctl.config.model import TablesConfig
from shardctl.crashpoints import NO_CRASHES, CrashPoints
from shardctl.db.connection import connect, map_error, scalar
from shardctl.db.copyformat import TickEncoder, fast_path_types_ok, pgcopy_row
from shardctl.db.gaps import record_gap
from shardctl.db.leases import Fence, LeaseStart, fence, lease_start
from shardctl.db.schema import ensure_partition, upsert_assets
from shardctl.errors import DatabaseError, DatabaseUnavailable, LedgerRolledBack, ShardctlError, ShardFenced
from shardctl.rows import COLUMNS, Tick

log = logging.getLogger("shardctl.writer")

#: Environment variable: "pgcopy" makes every CopyManager use pgcopy's own per-field formatters.
ENCODER_ENV = "SHARDCTL_COPY_ENCODER"
#: TimescaleDB >= 2.21: COPY compresses rows in memory and writes columnstore batches.
DIRECT_COMPRESS_GUC = "timescaledb.enable_direct_compress_copy"
#: Smaller batches are written as rows even with direct compress: a columnstore batch is built for ~1,000
#: rows, and tiny compressed batches cost more time and space than rows (benchmarks/README.md).
DIRECT_COMPRESS_MIN_ROWS = 1000


def _numeric(value: Any) -> Any:
    """pgcopy's NUMERIC encoder wants Decimal; accept int (exact) and float (via its shortest repr) too."""
    if isinstance(value, Decimal):
        return _pgcopy_numeric(value)
    if isinstance(value, bool):
        raise TypeError(f"numeric field requires a number (got {value!r})")
    if isinstance(value, int):
        return _pgcopy_numeric(Decimal(value))
    if isinstance(value, float):
        return _pgcopy_numeric(Decimal(repr(value)))
    return _pgcopy_numeric(value)


@dataclass(frozen=True, slots=True)
class LedgerPosition:
    """The shard's ledger row: the journal offset committed last, and its last frame's receive time."""

    offset: int
    received_at: datetime | None


class ShardBusy(ShardctlError):
    """Another worker holds this shard's writer lock on the database."""


class TickCopyManager(CopyManager):
    """pgcopy's CopyManager (table introspection, formatters, ``copystream``) with a fast ``writestream``.

    When the COPY columns have the types of ``copyformat.TICK_TYPES`` (the
    writer's COLUMNS on shardctl's schema), rows are encoded by
    ``copyformat.TickEncoder``: the same bytes as pgcopy's formatters, several
    times faster; rows it does not recognise still go through pgcopy's
    formatters (same bytes, same errors). Other column types, or
    ``fast=False`` (an escape hatch and the benchmarks' "before"), keep
    pgcopy's own ``writestream``.
    """

    type_formatters = {"numeric": _numeric}
    _fast = True

    def __init__(self, conn: Connection, table: str, cols: Sequence[str], *, fast: bool = True) -> None:
        self._fast = fast
        super().__init__(conn, table, cols)

    def compile(self) -> None:
        """pgcopy's compile (formatters per column; ValueError for a missing column), then the fast encoder."""
        super().compile()
        atts = inspect.get_types(self.conn, self.schema, self.table)
        columns = [atts[c] for c in self.cols]
        self.encoder: TickEncoder | None = None
        if self._fast and fast_path_types_ok(columns):
            formatters = self.formatters
            self.encoder = TickEncoder(encodings[self.conn.encoding], [not a.not_null for a in columns],
                                       lambda row: pgcopy_row(formatters, row))

    def writestream(self, data: Any, datastream: Any) -> None:
        """Write the binary COPY payload of ``data`` (header, rows, trailer) to ``datastream``."""
        if self.encoder is None:
            super().writestream(data, datastream)
        else:
            datastream.write(self.encoder.encode(data))


def utc_day(moment: datetime) -> date:
    """The UTC day of ``moment`` (a naive one is taken as UTC, as pgcopy stores it): its partition's day."""
    if moment.tzinfo is None:  # pgcopy stores naive datetimes as UTC; so do we
        return moment.date()
    return moment.astimezone(timezone.utc).date()


class Writer:
    """One shard's writer: one connection (opened lazily), one CopyManager reused across batches."""

    def __init__(self, dsn: str, tables: TablesConfig, shard: str, *, application_name: str | None = None,
                 pgcopy_encoder: bool = False, crash_points: CrashPoints = NO_CRASHES,
                 fence: Fence | None = None, direct_compress: bool = False) -> None:
        """``direct_compress``: on TimescaleDB >= 2.24, COPY batches of at least ``DIRECT_COMPRESS_MIN_ROWS``
        rows straight into the columnstore."""
        self.dsn = dsn
        #: Cluster mode: every batch commits only while this is still the shard's lease (``shardctl.db.leases``).
        self.fence = fence
        self._pgcopy_encoder = pgcopy_encoder
        self._crash_points = crash_points
        self.direct_compress = direct_compress
        self._compress_copies = False  # direct_compress asked for, and this server has it
        self.tables = tables
        self.shard = shard
        self.application_name = application_name or f"shardctl:{shard}"
        self._conn: Connection | None = None
        self._copy: TickCopyManager | None = None
        self._partitioned = False
        self._days: set[date] = set()  # days known to have their own partition (plain PostgreSQL)
        #: The highest offset this writer saw committed (read or written): a ledger below it went back in time.
        self.known_offset = 0

    # ------------------------------------------------------------ connection

    def _connection(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._drop()
        conn = connect(self.dsn, application_name=self.application_name, cluster=self.fence is not None)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                            (sql.Identifier(self.tables.ticks).as_string(conn),))
                row = cur.fetchone()
            if row is None:
                raise DatabaseError(f"table {self.tables.ticks} does not exist; run `shardctl db init CONFIG`")
            self._partitioned = row[0] == "p"
            self._compress_copies = self.direct_compress and not self._partitioned and self._has_direct_compress(conn)
            # One writer per shard and database, across hosts: two would interleave journal offsets
            # in one ledger row and skip each other's batches. The lock lives as long as the session.
            # In cluster mode the lease epoch, checked in every batch's transaction, is that guarantee
            # instead: a session lock of a host cut off mid-way would hold up its successor.
            locked = True
            if self.fence is None:
                with conn.cursor() as cur:
                    locked = scalar(cur, "SELECT pg_try_advisory_lock(hashtext(%s))",
                                    (f"shardctl {self.tables.ledger} {self.shard}",))
            if not locked:
                raise ShardBusy(f"shard {self.shard} is already being written to this database by another "
                                "worker (another host, or a second supervisor); stop that one first")
            self._copy = TickCopyManager(conn, self.tables.ticks, COLUMNS, fast=not self._pgcopy_encoder)
            conn.commit()
        except (psycopg2.Error, ValueError) as exc:
            error = self._error(exc, conn, "cannot prepare the writer")
            conn.close()
            raise error from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _has_direct_compress(self, conn: Connection) -> bool:
        """True on TimescaleDB >= 2.24 (direct compress COPY into a hypertable with continuous aggregates,
        as shardctl's always has; older versions refuse it with a warning per COPY); else a warning."""
        from shardctl.db.policies import timescaledb_version

        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_settings WHERE name = %s", (DIRECT_COMPRESS_GUC,))
            known = cur.fetchone() is not None
            if known and timescaledb_version(cur) >= (2, 24):
                return True
        log.warning("shard %s: direct_compress needs TimescaleDB >= 2.24 (%s with continuous aggregates); "
                    "writing rows uncompressed", self.shard, DIRECT_COMPRESS_GUC, extra={"shard": self.shard})
        return False

    def _drop(self) -> None:
        """Forget the connection (closing it if still open); the next call reconnects."""
        conn, self._conn, self._copy = self._conn, None, None
        if conn is not None and not conn.closed:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    def _error(self, exc: BaseException, conn: Connection | None, action: str) -> DatabaseError:
        if isinstance(exc, psycopg2.Error):
            return map_error(exc, self.dsn, action=f"shard {self.shard}: {action}", conn=conn)
        return DatabaseError(f"shard {self.shard}: {action}: {str(exc).splitlines()[0] if str(exc) else exc!r}")

    def _fail(self, exc: BaseException, action: str) -> DatabaseError:
        """Map ``exc``; roll back, or drop the connection if it is gone (or the rollback fails)."""
        conn = self._conn
        error = self._error(exc, conn, action)
        if isinstance(error, DatabaseUnavailable) or conn is None or conn.closed:
            self._drop()
            if not isinstance(error, DatabaseUnavailable):
                error = DatabaseUnavailable(str(error))
        else:
            try:
                conn.rollback()
            except psycopg2.Error:
                self._drop()
        return error

    # ------------------------------------------------------------ API

    def ledger_position(self) -> LedgerPosition:
        """The shard's committed offset (0 if none) and receive time; remembered as ``known_offset``."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT greatest(last_seq, coalesce(journal_offset, 0)), "
                                    "coalesce(received_at, updated_at) FROM {} WHERE shard = %s")
                            .format(sql.Identifier(self.tables.ledger)), (self.shard,))
                row = cur.fetchone()
            conn.commit()
        except psycopg2.Error as exc:
            raise self._fail(exc, "cannot read the ledger") from None
        position = LedgerPosition(int(row[0]), row[1]) if row else LedgerPosition(0, None)
        self.known_offset = position.offset
        return position

    def lease_start(self) -> LeaseStart:
        """Cluster mode, at a worker's start: ShardFenced unless our lease holds; who committed last, and when.

        Connects if needed; raises DatabaseUnavailable / DatabaseError like the other reads.
        """
        assert self.fence is not None
        conn = self._connection()
        try:
            return lease_start(conn, self.shard, self.fence)
        except psycopg2.Error as exc:
            raise self._fail(exc, "cannot read the shard's lease") from None

    def _ensure_days(self, rows: Sequence[Tick]) -> None:
        days: set[date] = set()
        last: Any = None
        for row in rows:  # rows of the same second share one datetime object (the parser's cache)
            moment = row.time
            if moment is not last:
                last = moment
                if isinstance(moment, datetime):
                    days.add(utc_day(moment))
        days -= self._days
        for day in sorted(days):
            assert self._conn is not None, "write() holds a connection"
            ensure_partition(self._conn, self.tables, day)  # raises DatabaseError; commits its own transaction
            self._days.add(day)

    def write(self, seq: int, rows: Sequence[Tick], *, journal_offset: int | None = None,
              received_at: datetime | None = None) -> bool:
        """Write ``rows`` as batch ``seq`` in one transaction with the ledger update; False if already committed.

        Returns True once the rows and the ledger row (last_seq=seq,
        rows_total += len(rows), journal_offset, updated_at) are committed
        together; False (writing nothing) if ``seq`` <= the committed last_seq.
        With a ``fence`` (cluster mode) the same transaction first claims the
        lease row (``shardctl.db.leases.fence``, recording ``received_at``, the
        batch's last frame's receive time); ShardFenced, with nothing written,
        when the lease is no longer ours.
        Raises DatabaseUnavailable (retry the same call later) or DatabaseError.
        """
        conn = self._connection()
        ledger = sql.Identifier(self.tables.ledger)
        try:
            if self._partitioned:
                self._ensure_days(rows)
            with conn.cursor() as cur:
                if self.fence is not None:
                    fence(cur, self.shard, self.fence, received_at)
                cur.execute(sql.SQL("SELECT last_seq, coalesce(received_at, updated_at), journal_offset FROM {} "
                                    "WHERE shard = %s FOR UPDATE").format(ledger), (self.shard,))
                row = cur.fetchone()
                if row is None:
                    cur.execute(sql.SQL("INSERT INTO {} (shard, last_seq, rows_total, updated_at) "
                                        "VALUES (%s, 0, 0, now()) ON CONFLICT (shard) DO NOTHING").format(ledger),
                                (self.shard,))
                    cur.execute(sql.SQL("SELECT last_seq, received_at, journal_offset FROM {} WHERE shard = %s "
                                        "FOR UPDATE").format(ledger), (self.shard,))
                    row = cur.fetchone()
                ledger_at = max(row[0], row[2] or 0)  # as ``ledger_position`` reads it
                if ledger_at < self.known_offset:
                    conn.rollback()
                    raise LedgerRolledBack(self.shard, int(ledger_at), self.known_offset, row[1])
                if seq <= row[0]:
                    conn.rollback()
                    log.info("batch %d already committed (ledger at %d); skipped", seq, row[0],
                             extra={"shard": self.shard})
                    return False
                if rows:
                    assert self._copy is not None
                    if self._compress_copies and len(rows) >= DIRECT_COMPRESS_MIN_ROWS:
                        cur.execute("SELECT set_config(%s, 'on', true)", (DIRECT_COMPRESS_GUC,))  # this transaction
                    self._copy.copy(rows, io.BytesIO)
                self._crash_points.reach("after_copy")
                cur.execute(sql.SQL("UPDATE {} SET last_seq = %s, rows_total = rows_total + %s, "
                                    "journal_offset = %s, received_at = coalesce(%s, received_at), updated_at = now() "
                                    "WHERE shard = %s").format(ledger),
                            (seq, len(rows), journal_offset, received_at, self.shard))
            conn.commit()
            self.known_offset = seq
            return True
        except DatabaseUnavailable:
            self._drop()
            raise
        except ShardFenced:
            self._drop()  # rolls back: nothing of this batch is committed
            raise
        except LedgerRolledBack:
            raise
        except DatabaseError:
            if self._conn is not None and not self._conn.closed:
                try:
                    self._conn.rollback()
                except psycopg2.Error:
                    self._drop()
            raise
        except (psycopg2.Error, ValueError, TypeError) as exc:
            raise self._fail(exc, f"cannot write batch {seq}") from None

    def record_gap(self, gap_from: datetime, gap_to: datetime, reason: str) -> None:
        """Record that this shard may have missed ticks in [gap_from, gap_to) (idempotent; see shardctl.db.gaps)."""
        try:
            record_gap(self._connection(), self.shard, gap_from, gap_to, reason)
        except DatabaseUnavailable:
            self._drop()
            raise

    def upsert_assets(self, names: Mapping[str, str | None]) -> None:
        """Record symbols and their names as the stream told them, where no name is known yet."""
        try:
            upsert_assets(self._connection(), self.tables, names, replace=False)
        except DatabaseUnavailable:
            self._drop()
            raise

    def close(self) -> None:
        """Close the connection (rolling back nothing committed-pending: every write commits or rolls back)."""
        self._drop()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
