"""The shard's journal: every received frame is appended here before anything else happens to it.

Files (their layout is in ``shardctl.journal.format``)::

    DIR/00000000000000000000.seg   one file per segment, named by its base offset (20 digits);
    DIR/00000000000067108900.seg   the last one is the active segment, the only one written to

Offsets are byte positions in the concatenation of every segment ever written
(headers included); ``append`` returns its record's *end offset*, what the
ledger stores. They survive reopening and segment deletion because the active
segment is never deleted and its name carries the position on. ``seq`` counts
records from the first ever written, so backlog and loss counts are exact.

Recovery, at open (only the last segment is read): a torn tail (short header
or frame, bad CRC or seq: a crash mid-write) is cut at the last intact record,
logged in one line, and appends go on. Any other damage (bad segment header,
gap between segments, bad record in an older segment, met when reading)
raises ``JournalCorrupt`` naming file and offset: never repaired silently.

Durability (``fsync``): appends are buffered in memory; ``write_buffered()``
hands them to the OS (``write(2)``: enough to survive a killed process), and
the worker calls it before every read of its socket, so a frame it has read
is in the OS before it reads the next burst. ``flush()`` does the same and
then fsyncs per the policy: "never" (shardctl's default): no fsync; "flush"
(this class's default): fsync on ``flush()``, roll and close; "always": after
every append too (slow). Readers see flushed records only.

A full disk (ENOSPC, EDQUOT) raises ``JournalDiskFull`` and leaves the journal
as it was: a partial write is cut back, the records stay buffered, and the next
``write_buffered`` tries again. When every record on disk is committed, the
segment files are replaced by an empty one (at ``RECLAIM_BYTES``, or at once
while the disk is full), so committed space comes back even when all of it
was in the active segment.

Cap (``max_bytes``: all segment bytes, at least two segments' worth). "block":
at ``size_bytes >= max_bytes`` the journal is ``full`` and ``append`` raises
``JournalFull``; the worker checks ``full`` before reading the socket, and a
burst that starts under the cap is taken whole, so the cap is soft by one
burst; ``commit`` frees space. "drop_oldest": ``append`` deletes the oldest
segments, each uncommitted loss becoming a ``DroppedRange`` in ``gaps`` and
counted in ``dropped_records``/``dropped_bytes``.

Retention (``retain``, seconds; 0: none): committed segments are kept this
long after they stop being written, so that a database that goes back in time
(a failover to an asynchronous standby, a restore) can be written again from
the journal (``uncommit``). Retained bytes never count against the cap: they
go first when room is needed, at ``max_bytes`` less one segment, and at once
when the disk is full. Under retention, the active segment rolls once a MiB of
it is committed (so retention is kept by the MiB, not by the segment), and is
never reclaimed while the disk has room. ``committed.mark`` (``shardctl.journal.mark``)
keeps the committed offset and the last receive time across reclaims and restarts.

Threads: any method from any thread (one lock; cursors read files outside
it). In the worker the main thread appends, flushes and re-reads the backlog
with ``read``; the committer thread calls ``commit``. One process owns a
directory.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from shardctl.config.model import FsyncPolicy, OnFull
from shardctl.journal.cursor import Cursor
from shardctl.journal.errors import DISK_FULL_ERRNOS, JournalCorrupt, JournalDiskFull, JournalError, JournalFull
from shardctl.journal.format import (
    _BUFFER,
    _CRC,
    _META,
    _REC,
    _SEG,
    MAGIC,
    MAX_FRAME,
    MIB,
    REC_HEADER,
    SEG_HEADER,
    Record,
    _scan,
    frames_in,
)
from shardctl.journal.mark import Mark, MarkFile
from shardctl.journal.space import free_bytes

log = logging.getLogger("shardctl.journal")

#: Committed bytes in the active segment worth replacing it by an empty one for, once all is committed.
RECLAIM_BYTES = MIB
@dataclass(frozen=True)
class DroppedRange:
    """Uncommitted records deleted by ``drop_oldest``: offsets [start, end), and receive times around the hole."""

    start_offset: int
    end_offset: int
    records: int
    bytes: int
    first_received_at: float | None  # of the first record lost
    resumed_received_at: float | None  # of the first record kept after the hole (None: not written yet)


@dataclass(eq=False)
class _Segment:
    base: int
    first_seq: int
    size: int  # bytes handed to the OS (for the active segment, its buffer is not counted)
    path: Path
    closed_at: float | None = None  # wall clock when the next segment took over (None: active)

    @property
    def end(self) -> int:
        return self.base + self.size


class Journal:
    """An append-only, segmented, crash-safe frame journal in ``directory`` (created if missing).

    A segment rolls before passing ``segment_bytes`` (a bigger frame gets its
    own); ``max_bytes`` (None: no cap), ``on_full``, ``fsync``: see the module.
    After opening, call ``commit(ledger_offset)`` (``advance_to`` if the ledger
    is past ``end_offset``), then ``replay(ledger_offset)``. Read-only status
    (lock-free): ``end_offset`` (flushed or not), ``flushed_offset``, ``last_received_at``,
    ``committed_offset``, ``first_offset`` (first byte on disk), ``size_bytes``,
    ``uncommitted_bytes``, ``backlog_records``, ``oldest_uncommitted_received_at``
    (None when all is committed), ``full``, ``disk_full``, ``gaps``, ``dropped_records``/``_bytes``.
    """

    def __init__(self, directory: Path | str, *, segment_bytes: int = 64 * MIB, max_bytes: int | None = None,
                 on_full: OnFull = "block", fsync: FsyncPolicy = "flush", retain: float = 0.0) -> None:
        if segment_bytes < 256:
            raise ValueError(f"segment_bytes must be at least 256 (got {segment_bytes})")
        if max_bytes is not None and max_bytes < 2 * segment_bytes:
            raise ValueError(f"max_bytes must be at least 2 × segment_bytes = {2 * segment_bytes} (got {max_bytes})")
        if on_full not in ("block", "drop_oldest"):
            raise ValueError(f"on_full must be 'block' or 'drop_oldest' (got {on_full!r})")
        if fsync not in ("never", "flush", "always"):
            raise ValueError(f"fsync must be 'never', 'flush' or 'always' (got {fsync!r})")
        self.directory = Path(directory)
        self.segment_bytes, self.max_bytes, self.on_full, self.fsync = segment_bytes, max_bytes, on_full, fsync
        self.retain = retain
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._segments: list[_Segment] = []
        self._fd = -1
        self.gaps: list[DroppedRange] = []
        self.dropped_records = self.dropped_bytes = 0
        #: True from a write the disk refused until one succeeds.
        self.disk_full = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._mark = MarkFile(self.directory)
        #: The committed offset the mark file held at open (None: no mark): what the database had confirmed.
        self.marked_committed: int | None = None
        self._recover()

    def _recover(self) -> None:
        for tmp in self.directory.glob("*.seg.tmp"):
            tmp.unlink()
        for path in sorted(p for p in self.directory.glob("*.seg") if len(p.stem) == 20 and p.stem.isdigit()):
            with open(path, "rb") as f:
                magic, first_seq = _SEG.unpack(f.read(SEG_HEADER).ljust(SEG_HEADER, b"\0"))
            if magic != MAGIC:
                raise JournalCorrupt(path, int(path.stem), "bad segment header")
            st = path.stat()
            seg = _Segment(int(path.stem), first_seq, st.st_size, path, st.st_mtime)
            if self._segments and self._segments[-1].end != seg.base:
                raise JournalCorrupt(path, seg.base, f"segment gap: the previous one ends at {self._segments[-1].end}")
            self._segments.append(seg)
        if not self._segments:
            self._segments.append(self._create(0, 0))
        last = self._segments[-1]
        data = last.path.read_bytes()
        with memoryview(data) as view:
            pos, seq, problem, self.last_received_at, burst = _scan(view, SEG_HEADER, last.first_seq, len(data),
                                                                    None, last.base)
        tail = data[burst:pos]
        if self.last_received_at is None and len(self._segments) > 1:  # an empty active segment: look before it
            tail = self._segments[-2].path.read_bytes()
            with memoryview(tail) as view:
                scan = _scan(view, SEG_HEADER, None, len(tail), None, 0)
            self.last_received_at, tail = scan.last_received_at, tail[scan.burst_pos:scan.pos]
        #: The frames of the last burst the journal held at open (its last records sharing one receive time;
        #: empty when it held none, or the mark knew of a later one).
        self.last_burst: list[bytes] = frames_in(tail)
        if pos < len(data):
            log.warning("journal %s: cut %d byte(s) of torn record(s) at offset %d (%s)", last.path,
                        len(data) - pos, last.base + pos, problem)
            os.truncate(last.path, pos)
            last.size = pos
        assert seq is not None
        last.closed_at = None
        self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
        self.end_offset = self.flushed_offset = last.end
        self._next_seq = seq
        self.size_bytes = sum(s.size for s in self._segments)
        self.committed_offset = self._segments[0].base
        mark = self._mark.read()
        self._marked = 0 if mark is None else mark.committed_offset
        if mark is not None:
            self.marked_committed = mark.committed_offset
            if mark.last_received_at is not None and (self.last_received_at is None
                                                      or mark.last_received_at > self.last_received_at):
                self.last_received_at, self.last_burst = mark.last_received_at, []
            if self.committed_offset < mark.committed_offset <= self.end_offset and self._is_boundary(
                    mark.committed_offset):
                self.committed_offset = mark.committed_offset  # the retained records before it are committed
        self._committed_seq, self.oldest_uncommitted_received_at = self._head_at(self.committed_offset)
        #: The receive time of the last record handed to the OS: what the mark may claim (a record still
        #: buffered dies with the process, and must fall inside the next start's "worker down" gap).
        self._written_received_at = self.last_received_at

    def _create(self, base: int, first_seq: int) -> _Segment:
        """A new segment file holding only its header, created atomically (write aside, then rename)."""
        path = self.directory / f"{base:020d}.seg"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_SEG.pack(MAGIC, first_seq))
            f.flush()
            if self.fsync != "never":
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync != "never":
            dirfd = os.open(self.directory, os.O_RDONLY)
            os.fsync(dirfd)
            os.close(dirfd)
        return _Segment(base, first_seq, SEG_HEADER, path)

    def append(self, frame: bytes, received_at: float) -> int:
        """Buffer ``frame`` (received at ``received_at``, wall-clock seconds); return its end offset.

        Never raises for a full disk: the record then stays buffered (in the
        active segment, past ``segment_bytes`` if need be) and ``write_buffered``
        reports the full disk. Raises ValueError above MAX_FRAME, JournalFull
        (block mode, at the cap: ``full``), JournalError if closed or a write fails otherwise.
        """
        return self.append_many((frame,), received_at)[0]

    def append_many(self, frames: Sequence[bytes], received_at: float) -> list[int]:
        """``append`` each of ``frames`` (one burst, received together) under one lock; their end offsets.

        On an error the frames before the one refused are appended (their
        offsets are lost with the exception: ``end_offset`` tells where the
        journal stands).
        """
        ends: list[int] = []
        with self._lock:
            if self._fd < 0:
                raise JournalError(f"journal {self.directory} is closed")
            if self.full:
                self._drop_retained(force=True)  # retained bytes go first
                if self.full:
                    raise JournalFull(f"journal {self.directory} is full ({self.size_bytes} of {self.max_bytes} "
                                      f"bytes, {self.uncommitted_bytes} uncommitted): the database is behind")
            buf = self._buf
            meta_pack, crc_pack, crc32 = _META.pack, _CRC.pack, zlib.crc32
            cap = self.max_bytes if self.max_bytes is not None else float("inf")
            seg_end = self._segments[-1].base + self.segment_bytes
            seq, end, total = self._next_seq, self.end_offset, self.size_bytes
            try:
                for frame in frames:
                    length = len(frame)
                    size = REC_HEADER + length
                    if total + size > cap or end + size > seg_end or length > MAX_FRAME:
                        # Room at the cap, a new segment: the careful path, with the state written back first.
                        self._next_seq, self.end_offset, self.size_bytes = seq, end, total
                        self._room_for(frame, size)
                        seg_end = self._segments[-1].base + self.segment_bytes
                        end, total = self.end_offset, self.size_bytes  # a new segment starts after its header
                    meta = meta_pack(length, seq, received_at)
                    buf += meta
                    buf += crc_pack(crc32(frame, crc32(meta)))
                    buf += frame
                    seq += 1
                    end += size
                    total += size
                    ends.append(end)
            finally:
                self._next_seq, self.end_offset, self.size_bytes = seq, end, total
                if ends:
                    self.last_received_at = received_at
                    if self.oldest_uncommitted_received_at is None:
                        self.oldest_uncommitted_received_at = received_at
            if len(buf) >= _BUFFER or self.fsync == "always":
                with contextlib.suppress(JournalDiskFull):
                    self._write_out(self.fsync == "always")
        return ends

    def _room_for(self, frame: bytes, size: int) -> None:
        """Before appending a record of ``size`` bytes: check it, make room at the cap, roll the segment. Lock held."""
        if len(frame) > MAX_FRAME:
            raise ValueError(f"frame of {len(frame)} bytes exceeds the journal's {MAX_FRAME}-byte limit")
        if self.max_bytes is not None and self.size_bytes + size > self.max_bytes:
            self._make_room(size)
        used = self.end_offset - self._segments[-1].base
        if used > SEG_HEADER and used + size > self.segment_bytes:
            with contextlib.suppress(JournalDiskFull):
                self._roll(self.end_offset)

    def flush(self) -> int:
        """Hand every buffered record to the OS (and fsync unless ``fsync="never"``); return ``flushed_offset``."""
        with self._lock:
            if self._fd >= 0:
                self._write_out(self.fsync != "never")
            return self.flushed_offset

    def write_buffered(self) -> None:
        """Hand every buffered record to the OS (``write(2)``), with an fsync only under ``fsync="always"``.

        Raises JournalDiskFull (the records stay buffered: call again later) or JournalError.
        """
        if self._buf:
            with self._lock:
                if self._fd >= 0:
                    self._write_out(self.fsync == "always")

    def _write_out(self, sync: bool = False) -> None:
        """Write the buffer to the active segment, all or nothing. Lock held."""
        buf, done = self._buf, 0
        try:
            while done < len(buf):
                done += os.write(self._fd, buf if not done else buf[done:])
            if sync:
                os.fsync(self._fd)
        except OSError as exc:
            if done:  # cut a partial write back to whole records: they stay in the buffer
                try:
                    os.ftruncate(self._fd, self.flushed_offset - self._segments[-1].base)
                except OSError:
                    pass
            if exc.errno in DISK_FULL_ERRNOS:
                self.disk_full = True
                raise JournalDiskFull(self.directory, free_bytes(self.directory)) from None
            raise JournalError(f"journal {self.directory}: cannot write: {exc.strerror}") from None
        self.disk_full = False
        del buf[:done]
        self._written_received_at = self.last_received_at
        self.flushed_offset += done
        self._segments[-1].size = self.flushed_offset - self._segments[-1].base

    def _roll(self, base: int) -> None:
        """Start a new segment at ``base`` after the active one; nothing changes if the disk refuses. Lock held."""
        self._write_out(self.fsync != "never")
        seg = self._create_or_raise(base, self._next_seq)
        os.close(self._fd)
        self._segments[-1].closed_at = time.time()
        self._segments.append(seg)
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        self.end_offset = self.flushed_offset = seg.end
        self.size_bytes += SEG_HEADER

    def _create_or_raise(self, base: int, first_seq: int) -> _Segment:
        try:
            return self._create(base, first_seq)
        except OSError as exc:
            self.directory.joinpath(f"{base:020d}.seg.tmp").unlink(missing_ok=True)
            if exc.errno in DISK_FULL_ERRNOS:
                raise JournalDiskFull(self.directory, free_bytes(self.directory)) from None
            raise JournalError(f"journal {self.directory}: cannot create a segment: {exc.strerror}") from None

    def _reclaim(self) -> None:
        """Replace the segment files by one empty segment ending at ``flushed_offset``. Lock held.

        Only when every record on disk is committed. The new segment's header
        takes the place of the last committed bytes, so the offsets of buffered
        records stay valid. The old files go first: on a full disk there may be
        no room for the new one before. A crash in between leaves an empty
        directory, which the worker treats as a replaced journal (all of it was
        committed, so nothing on disk is lost).
        """
        os.close(self._fd)
        self._fd = -1
        for seg in self._segments:
            seg.path.unlink(missing_ok=True)
        seg = self._create_or_raise(self.flushed_offset - SEG_HEADER, self._committed_seq)
        self._segments = [seg]
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        self.size_bytes = SEG_HEADER + len(self._buf)

    def _make_room(self, size: int) -> None:
        """Bring the journal under the cap for ``size`` more bytes: retained segments go first, then (drop_oldest)
        the oldest ones. Block mode refuses whole bursts at the cap (``append_many``), never a record inside one."""
        assert self.max_bytes is not None
        self._drop_retained(force=True)
        if self.size_bytes + size <= self.max_bytes or self.on_full == "block":
            return
        while self.size_bytes + size > self.max_bytes and len(self._segments) > 1:
            seg, after = self._segments[0], self._segments[1]
            lost_from = max(seg.base, self.committed_offset)
            if lost_from < seg.end:
                seq, first_at = self._head_at(lost_from)
                gap = DroppedRange(lost_from, seg.end, after.first_seq - seq, seg.end - lost_from, first_at,
                          self._head_at(after.base)[1])
                self.gaps.append(gap)
                self.dropped_records += gap.records
                self.dropped_bytes += gap.bytes
                log.error("journal %s full: dropped %d uncommitted record(s), offsets %d..%d", self.directory,
                          gap.records, gap.start_offset, gap.end_offset)
            seg.path.unlink()
            self._segments.pop(0)
            self.size_bytes -= seg.size
            if self.committed_offset < after.base:
                self.committed_offset = after.base
                self._committed_seq, self.oldest_uncommitted_received_at = self._head_at(after.base)

    def commit(self, offset: int) -> None:
        """Everything up to ``offset`` (an end offset from ``append``) is in the database.

        Deletes the segments that end at or before it, never the active one.
        An offset at or below ``committed_offset`` is ignored; one past
        ``flushed_offset`` raises ValueError (flush before writing a batch).
        """
        with self._lock:
            if offset > self.flushed_offset:
                raise ValueError(f"commit({offset}) is past the journal's flushed end {self.flushed_offset}: "
                                 f"flush() before handing a batch to the database")
            if offset <= self.committed_offset:
                return
            self.committed_offset = offset
            self._committed_seq, self.oldest_uncommitted_received_at = self._head_at(offset)
            self._drop_retained(force=self.disk_full)
            active = self._segments[-1]
            if self.retain and not self.disk_full:
                if self._fd >= 0 and offset - active.base - SEG_HEADER >= RECLAIM_BYTES:
                    with contextlib.suppress(JournalDiskFull):  # kept for the window, deleted by a later commit
                        self._roll(self.end_offset)
            elif (offset == self.flushed_offset and self._fd >= 0 and active.size > SEG_HEADER
                    and (self.disk_full or active.size - SEG_HEADER >= RECLAIM_BYTES)):
                self._reclaim()
            self._marked = offset
            self._mark.write(Mark(offset, self._written_received_at))

    def _drop_retained(self, *, force: bool) -> None:
        """Delete committed segments past the retention window (all of them with ``force``). Lock held.

        Retained bytes also go while they would leave less than a segment's room under ``max_bytes``.
        """
        limit = None if self.max_bytes is None else self.max_bytes - self.segment_bytes
        expired = time.time() - self.retain
        segs = self._segments
        while len(segs) > 1 and segs[0].end <= self.committed_offset:
            closed_at = segs[0].closed_at
            if not (force or not self.retain or (closed_at is not None and closed_at <= expired)
                    or (limit is not None and self.size_bytes > limit)):
                break
            seg = segs.pop(0)
            self.size_bytes -= seg.size
            seg.path.unlink(missing_ok=True)

    def uncommit(self, offset: int) -> int:
        """The database lost what was committed after ``offset`` (it went back in time): hold it uncommitted again.

        Returns where the journal's records now start being uncommitted: ``offset`` when it still holds
        every record after it, a later offset when the records in between were reclaimed (they are lost).
        """
        with self._lock:
            start = min(max(offset, self._segments[0].base), self.end_offset)
            if start >= self.committed_offset:
                return start
            self.committed_offset = start
            self._committed_seq, self.oldest_uncommitted_received_at = self._head_at(start)
            self._marked = start
            self._mark.write(Mark(start, self._written_received_at))
            return start

    def _is_boundary(self, offset: int) -> bool:
        """True when a segment starts or ends at ``offset``, or an intact record starts there (at open)."""
        for seg in self._segments:
            if offset in (seg.base, seg.end):
                return True
            if seg.base + SEG_HEADER < offset < seg.end:
                with open(seg.path, "rb") as f:
                    f.seek(offset - seg.base)
                    head = f.read(REC_HEADER)
                    if len(head) < REC_HEADER:
                        return False
                    data = head + f.read(min(_REC.unpack(head)[0], MAX_FRAME))
                with memoryview(data) as view:
                    return _scan(view, 0, None, 1, None, 0).pos == len(data)
        return False

    def advance_to(self, offset: int) -> None:
        """Discard every segment and go on at ``offset``: at startup, when the ledger is past ``end_offset``.

        That happens when the directory was emptied or replaced; without this,
        new offsets would be below the ledger's and be taken as committed.
        """
        with self._lock:
            if offset <= self.end_offset:
                raise ValueError(f"advance_to({offset}) is not past the journal end {self.end_offset}")
            for seg in self._segments:  # first: a crash before the new one exists leaves an empty journal
                seg.path.unlink(missing_ok=True)
            self._roll(offset)
            self._segments = self._segments[-1:]
            self.committed_offset, self.size_bytes = offset, SEG_HEADER
            self._committed_seq, self.oldest_uncommitted_received_at = self._next_seq, None

    def _head_at(self, offset: int) -> tuple[int, float | None]:
        """(seq, received_at) of the record starting at ``offset``; (next seq, None) at the end. Lock held."""
        segs = self._segments
        i = max(0, bisect.bisect_right(segs, offset, key=lambda s: s.base) - 1)
        offset = max(offset, segs[i].base + SEG_HEADER)
        if offset >= self.end_offset:
            return self._next_seq, None
        if offset >= self.flushed_offset:
            _, seq, at, _ = _REC.unpack_from(self._buf, offset - self.flushed_offset)
            return seq, at
        if offset >= segs[i].end:
            i += 1
            offset = segs[i].base + SEG_HEADER
        with open(segs[i].path, "rb") as f:
            f.seek(offset - segs[i].base)
            head = f.read(REC_HEADER)
        if len(head) < REC_HEADER:
            raise JournalCorrupt(segs[i].path, offset, "record header past the end of the segment")
        _, seq, at, _ = _REC.unpack(head)
        return seq, at

    def _locate(self, position: int, seq: int | None) -> tuple[_Segment, int, int | None, int]:
        """For a reader at ``position``: (its segment, its position and seq there, flushed bytes left after it).

        A position before the first segment (records dropped) moves on to it,
        logged; one at a segment's end moves on to the next segment.
        """
        with self._lock:
            segs = self._segments
            if position < segs[0].base:
                log.warning("journal %s: offsets %d..%d were dropped before being committed; reading on",
                            self.directory, position, segs[0].base)
                position = segs[0].base
            i = bisect.bisect_right(segs, position, key=lambda s: s.base) - 1
            if position >= segs[i].end and i + 1 < len(segs):
                i += 1
            seg = segs[i]
            if position < seg.base + SEG_HEADER:
                position, seq = seg.base + SEG_HEADER, seg.first_seq
            return seg, position, seq, seg.end - position

    def cursor(self, from_offset: int = 0) -> Cursor:
        """A reader of the flushed records after ``from_offset``, usable from another thread."""
        return Cursor(self._locate, from_offset)

    def read(self, from_offset: int, max_records: int) -> list[Record]:
        """Up to ``max_records`` flushed records after ``from_offset``, in order (empty at the end)."""
        with self.cursor(from_offset) as cursor:
            return cursor.read(max_records)

    def replay(self, from_offset: int = 0) -> Iterator[Record]:
        """Yield every flushed record after ``from_offset``, across segments, in order (JournalCorrupt on damage)."""
        with self.cursor(from_offset) as cursor:
            while batch := cursor.read(4096):
                yield from batch

    def close(self) -> None:
        """Flush (and fsync unless "never") and close; appends then raise JournalError. Idempotent.

        Closes even when the disk is full; then raises JournalDiskFull: the buffered records are lost.
        """
        with self._lock:
            if self._fd >= 0:
                try:
                    self._write_out(self.fsync != "never")
                finally:
                    os.close(self._fd)
                    self._fd = -1
                    self._mark.write(Mark(self._marked, self._written_received_at))
                    self._mark.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def first_offset(self) -> int:
        return self._segments[0].base

    @property
    def uncommitted_bytes(self) -> int:
        return self.end_offset - self.committed_offset

    @property
    def backlog_records(self) -> int:
        return self._next_seq - self._committed_seq

    @property
    def full(self) -> bool:
        return self.on_full == "block" and self.max_bytes is not None and self.size_bytes >= self.max_bytes
