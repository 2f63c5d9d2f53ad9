"""What a journal remembers past its records: the offset last committed, and the last frame's receive time.

``DIR/committed.mark`` holds one fixed-size record, rewritten in place
(``pwrite`` at 0: 20 bytes, within one disk sector)::

    committed_offset i64 | last_received_at f64 (NaN: none) | crc32 u32 of the 16 bytes before

It survives the reclaiming of every segment, so a worker started after a clean
stop still knows when its predecessor last read the socket (its "worker down"
gap starts there), and how far the database had committed (a ledger behind it
means the database went back in time). It is written after the database
committed, so it never claims more than was committed; a torn or missing file
reads as "nothing known".
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

MARK_NAME = "committed.mark"
_MARK = struct.Struct("<qd")
_CRC = struct.Struct("<I")


class Mark(NamedTuple):
    committed_offset: int
    last_received_at: float | None


def encode_mark(mark: Mark) -> bytes:
    """The file's bytes for ``mark``."""
    body = _MARK.pack(mark.committed_offset, math.nan if mark.last_received_at is None else mark.last_received_at)
    return body + _CRC.pack(zlib.crc32(body))


def decode_mark(data: bytes) -> Mark | None:
    """The mark in ``data``; None when it is short or its checksum does not match."""
    if len(data) < _MARK.size + _CRC.size:
        return None
    body = data[:_MARK.size]
    if _CRC.unpack_from(data, _MARK.size)[0] != zlib.crc32(body):
        return None
    offset, at = _MARK.unpack(body)
    return Mark(offset, None if math.isnan(at) else at)


class MarkFile:
    """The open mark file of a journal directory; ``read`` at open, ``write`` after every commit."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / MARK_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def read(self) -> Mark | None:
        return decode_mark(os.pread(self._fd, _MARK.size + _CRC.size, 0))

    def write(self, mark: Mark) -> None:
        """Overwrite the mark; an OSError (a full disk) leaves the previous one, which only knows less."""
        try:
            os.pwrite(self._fd, encode_mark(mark), 0)
        except OSError:
            pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
