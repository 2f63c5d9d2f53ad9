"""What the journal raises: all ``ShardctlError``s, each one line for a user."""

from __future__ import annotations

import errno
from pathlib import Path

from shardctl.errors import ShardctlError

#: The errnos that mean "no room on the disk" (a state the worker waits out, not a crash).
DISK_FULL_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT))


class JournalError(ShardctlError):
    """The journal cannot do what was asked (closed, or the disk refused a write)."""


class JournalCorrupt(JournalError):
    """Damage that is not a torn tail: ``path`` and ``offset`` say where."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        self.path, self.offset = path, offset
        super().__init__(f"journal corrupt: {path} at offset {offset}: {reason}; move the directory aside "
                         f"to start an empty journal (its uncommitted frames are then lost)")


class JournalFull(JournalError):
    """``on_full="block"`` and the journal is at ``max_bytes``: commit (or stop reading) first."""


class JournalDiskFull(JournalError):
    """The filesystem refused a write for lack of space; nothing was lost, the records stay buffered."""

    def __init__(self, directory: Path, free_bytes: int | None) -> None:
        self.directory, self.free_bytes = directory, free_bytes
        free = "unknown" if free_bytes is None else f"{free_bytes:,}"
        super().__init__(f"disk full: {directory} ({free} bytes free)")
