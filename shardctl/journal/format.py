"""The journal's bytes on disk: segment and record layout, and the scanner that checks records.

Layout (integers little-endian; see ``shardctl.journal`` for what offsets mean)::

    segment = magic b"SHRDJNL1" | first_seq u64                  (16-byte header) then records
    record  = length u32 | seq u64 | received_at f64 | crc32 u32 | frame (length bytes)
              the CRC covers the 20 header bytes before it and the frame
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

MIB = 1 << 20
MAGIC = b"SHRDJNL1"
_SEG = struct.Struct("<8sQ")  # magic, first_seq
_META = struct.Struct("<IQd")  # length, seq, received_at: the CRC'd part of a record header
_REC = struct.Struct("<IQdI")  # ... and the CRC
_CRC = struct.Struct("<I")
SEG_HEADER, REC_HEADER = _SEG.size, _REC.size  # 16, 24
MAX_FRAME = 16 * MIB  #: the largest frame ``append`` takes; a longer length field is damage
_BUFFER = _CHUNK = MIB  # most bytes buffered before a write to the OS; bytes a cursor reads at a time
_SHORT = "truncated record"


class Record(NamedTuple):
    end_offset: int
    frame: bytes
    received_at: float


class Scan(NamedTuple):
    """Where a scan stopped: after the last intact record, the next seq, and why it stopped."""

    pos: int
    seq: int | None
    problem: str | None  #: None at the end of the view or the limit, ``_SHORT`` inside a record, else damage
    last_received_at: float | None  #: of the last intact record scanned (None: no record)
    burst_pos: int  #: where the scanned records' last burst (a run sharing ``last_received_at``) starts


def _scan(view: memoryview, pos: int, seq: int | None, limit: int, out: list[Record] | None,
          base: int) -> Scan:
    """Walk up to ``limit`` intact records from ``pos`` (``seq``: the next one's, None: any) into ``out``.

    ``base``: offset of ``view[0]``. Never raises.
    """
    end, count, last_at, burst = len(view), 0, None, pos
    while count < limit and pos < end:
        if end - pos < REC_HEADER:
            return Scan(pos, seq, _SHORT, last_at, burst)
        length, rseq, at, crc = _REC.unpack_from(view, pos)
        if length > MAX_FRAME:
            return Scan(pos, seq, f"bad record length {length}", last_at, burst)
        stop = pos + REC_HEADER + length
        if stop > end:
            return Scan(pos, seq, _SHORT, last_at, burst)
        if zlib.crc32(view[pos + REC_HEADER:stop], zlib.crc32(view[pos:pos + _META.size])) != crc:
            return Scan(pos, seq, "checksum mismatch", last_at, burst)
        if seq is not None and rseq != seq:
            return Scan(pos, seq, f"record seq {rseq}, expected {seq}", last_at, burst)
        if out is not None:
            out.append(Record(base + stop, bytes(view[pos + REC_HEADER:stop]), at))
        if at != last_at:
            burst = pos
        seq, pos, count, last_at = rseq + 1, stop, count + 1, at
    return Scan(pos, seq, None, last_at, burst)


def frames_in(data: bytes) -> list[bytes]:
    """The frames of the intact records at the start of ``data`` (a run of whole records)."""
    out: list[Record] = []
    with memoryview(data) as view:
        _scan(view, 0, None, len(data), out, 0)
    return [record.frame for record in out]
