"""Reading a journal: a cursor over its flushed records, safe beside appends and commits."""

from __future__ import annotations

import os
from typing import Any, Callable

from shardctl.journal.errors import JournalCorrupt
from shardctl.journal.format import _CHUNK, _REC, _SHORT, REC_HEADER, Record, _scan

#: (position, seq) → (the segment to read, position and seq in it, flushed bytes left after the position).
Locate = Callable[[int, "int | None"], "tuple[Any, int, int | None, int]"]


class Cursor:
    """Reads flushed records after ``position``, in order; may run alongside appends and commits.

    A position below ``first_offset`` (records dropped) moves on to the first
    record on disk, logging the skip. A segment deleted while the cursor
    reads it stays readable through the open file.
    """

    def __init__(self, locate: Locate, position: int) -> None:
        self._locate, self.position = locate, position
        self._fd = -1
        self._seg: Any = None  # the journal's segment whose file is open
        self._seq: int | None = None

    def read(self, max_records: int = 1000) -> list[Record]:
        """Up to ``max_records`` records after ``position`` (advancing it); empty when none are flushed yet."""
        out: list[Record] = []
        want = _CHUNK
        while len(out) < max_records:
            seg, self.position, self._seq, left = self._locate(self.position, self._seq)
            if left <= 0:
                break
            if seg is not self._seg:
                self.close()
                self._fd, self._seg = os.open(seg.path, os.O_RDONLY), seg
            data = os.pread(self._fd, min(left, want), self.position - seg.base)
            with memoryview(data) as view:
                pos, self._seq, problem, *_ = _scan(view, 0, self._seq, max_records - len(out), out, self.position)
            self.position += pos
            want = _CHUNK
            if problem == _SHORT and pos == 0 and REC_HEADER <= len(data) < left:
                want = REC_HEADER + _REC.unpack_from(data)[0]  # a record longer than a chunk
            elif problem is not None and (problem != _SHORT or pos == 0):
                raise JournalCorrupt(seg.path, self.position, problem)
        return out

    def close(self) -> None:
        """Close the open segment file (``read`` reopens as needed)."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._seg = -1, None

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
