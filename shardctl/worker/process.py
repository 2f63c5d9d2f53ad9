"""A worker process's plumbing: the supervisor's report pipe and the per-shard lock."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from shardctl.errors import ShardctlError
from shardctl.private import private_dir, private_open
from shardctl.report import ReadyReport, WorkerReport, encode_report


class Reporter:
    """Report lines to the supervisor's pipe; a broken pipe means the supervisor is gone."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self.broken = False

    def send(self, report: ReadyReport | WorkerReport) -> None:
        if self._fd is None or self.broken:
            return
        try:
            os.write(self._fd, encode_report(report))
        except OSError:
            self.broken = True


class ShardLock:
    """An exclusive lock file per shard: two workers of one shard on a host would fight over its journal."""

    def __init__(self, path: Path, *, wait: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait`` seconds for a predecessor that is still stopping."""
        private_dir(path.parent)
        self._file = os.fdopen(private_open(path, os.O_RDWR | os.O_APPEND), "a+")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                self._file.seek(0)
                holder = self._file.read().strip() or "?"
                self._file.close()
                raise ShardctlError(f"another worker (pid {holder}) is already running this shard ({path})") from None
        try:  # the pid is for people; the lock holds without it (a full disk may refuse the write)
            self._file.seek(0)
            self._file.truncate()
            self._file.write(str(os.getpid()))
            self._file.flush()
        except OSError:
            pass

    def release(self) -> None:
        self._file.close()
