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
_BUFFER = _CHUNK = MIB  # bytes buffered before a write to the OS; bytes a cursor reads at a time
_SHORT = "truncated record"


class Record(NamedTuple):
    end_offset: int
    frame: bytes
    received_at: float


def _scan(view: memoryview, pos: int, seq: int | None, limit: int, out: list[Record] | None,
          base: int) -> tuple[int, int | None, str | None]:
    """Walk up to ``limit`` intact records from ``pos`` (``seq``: the next one's, None: any) into ``out``.

    Returns (position after the last intact record, next seq, problem): None
    at the end of ``view`` or ``limit``, ``_SHORT`` if ``view`` ends inside a
    record, else what is wrong. ``base``: offset of ``view[0]``. Never raises.
    """
    end, count = len(view), 0
    while count < limit and pos < end:
        if end - pos < REC_HEADER:
            return pos, seq, _SHORT
        length, rseq, at, crc = _REC.unpack_from(view, pos)
        if length > MAX_FRAME:
            return pos, seq, f"bad record length {length}"
        stop = pos + REC_HEADER + length
        if stop > end:
            return pos, seq, _SHORT
        if zlib.crc32(view[pos + REC_HEADER:stop], zlib.crc32(view[pos:pos + _META.size])) != crc:
            return pos, seq, "checksum mismatch"
        if seq is not None and rseq != seq:
            return pos, seq, f"record seq {rseq}, expected {seq}"
        if out is not None:
            out.append(Record(base + stop, bytes(view[pos + REC_HEADER:stop]), at))
        seq, pos, count = rseq + 1, stop, count + 1
    return pos, seq, None
