"""A worker process's plumbing: the supervisor's report pipe, the per-shard lock, the liveness stamp.

The lock and the stamp are private files (0600) in the shard's private directory (0700).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

import orjson

from shardctl.errors import ShardctlError
from shardctl.private import private_dir, private_open


class Reporter:
    """JSON lines to the supervisor's pipe; a broken pipe means the supervisor is gone."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self.broken = False

    def send(self, message: dict[str, Any]) -> None:
        if self._fd is None or self.broken:
            return
        try:
            os.write(self._fd, orjson.dumps(message) + b"\n")
        except OSError:
            self.broken = True


class ShardLock:
    """An exclusive lock file per shard: two workers of one shard on a host would fight over its journal."""

    def __init__(self, path: Path) -> None:
        private_dir(path.parent)
        self._file = os.fdopen(private_open(path, os.O_RDWR | os.O_APPEND), "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise ShardctlError(f"another worker (pid {holder}) is already running this shard ({path})") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        self._file.close()


class AliveStamp:
    """A file holding the last wall-clock time the worker was known to be connected and streaming.

    Read at start, it tells how long the shard was down (a gap); the worker
    touches it about once a second while its stream is connected.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_suffix(".tmp")

    def read(self) -> float | None:
        try:
            return float(self.path.read_text())
        except (OSError, ValueError):
            return None

    def touch(self) -> None:
        with os.fdopen(private_open(self._tmp, os.O_WRONLY | os.O_TRUNC), "w") as handle:
            handle.write(f"{time.time():.3f}")
        os.replace(self._tmp, self.path)
