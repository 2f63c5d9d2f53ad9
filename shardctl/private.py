"""Private files: what shardctl keeps under its state directory is for its owner only.

Directories are 0700 and files 0600, whatever the umask of whoever started
the process. The processes that write there (the worker, the supervisor) set
``os.umask(PRIVATE_UMASK)`` first thing; the helpers here give the places
that create files and directories an explicit mode as well, and narrow
ones an older version left wider.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

#: The umask of every process that writes under the state directory: no bits for group or others.
PRIVATE_UMASK = 0o077


def private_dir(path: Path, *, narrow: bool = True) -> Path:
    """Return ``path`` after making sure it is a directory: missing ones (and missing parents) are created 0700.

    With ``narrow``, an existing ``path`` that group or others may use is
    changed to 0700 (parents are left as they are; a directory owned by
    someone else is left alone).
    """
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(PermissionError):
            os.chmod(directory, 0o700)  # mkdir's mode passes through the umask; chmod does not
    if narrow:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            with contextlib.suppress(PermissionError):
                os.chmod(path, 0o700)
    return path


def private_open(path: Path, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)`` with mode 0600; an existing file others may read is narrowed to 0600."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, 0o600)
    return fd
