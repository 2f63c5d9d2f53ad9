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
    """An exclusive lock file per shard: two workers of one shard on a host would fight over its journal.

    The file holds the holder's pid, and " stopping" once it stops (``mark_stopping``). A successor
    waits (up to ``wait``) for a holder that is stopping or orphaned (its supervisor is gone, so it
    stops by itself within a second): its journal and last receive time are read only once it is
    done with them. Any other holder is refused at once.
    """

    def __init__(self, path: Path, *, wait: float = 0.0) -> None:
        private_dir(path.parent)
        self._file = os.fdopen(private_open(path, os.O_RDWR | os.O_APPEND), "a+")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                self._file.seek(0)
                holder, _, state = self._file.read().strip().partition(" ")
                if (state == "stopping" or _orphaned(holder)) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                self._file.close()
                raise ShardctlError(f"another worker (pid {holder or '?'}) is already running this shard "
                                    f"({path})") from None
        self._write(str(os.getpid()))

    def _write(self, text: str) -> None:
        try:  # the pid is for people and successors; the lock holds without it (a full disk may refuse the write)
            self._file.seek(0)
            self._file.truncate()
            self._file.write(text)
            self._file.flush()
        except OSError:
            pass

    def mark_stopping(self) -> None:
        """Tell a successor that this worker is stopping: it waits for the lock instead of giving up."""
        self._write(f"{os.getpid()} stopping")

    def release(self) -> None:
        self._file.close()


def _orphaned(pid: str) -> bool:
    """True when process ``pid`` was handed to init (its parent, a supervisor, is gone)."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (ValueError, OSError):
        return False
    return stat.rsplit(")", 1)[-1].split()[1] == "1"
