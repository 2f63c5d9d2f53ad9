"""The supervisor's pidfile (after gunicorn's ``pidfile.py``).

``Pidfile.create`` refuses to start when a live shardctl supervisor owns
the file, replaces a stale one (dead pid, or a pid reused by an unrelated
program), and writes the new pid exclusively so two supervisors racing for
one file cannot both win. ``unlink`` removes the file only while it still
holds our pid.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from shardctl.errors import ShardctlError


class SupervisorAlreadyRunning(ShardctlError):
    """A live supervisor owns the pidfile."""

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        self.pid = pid


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (even one we may not signal)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _is_shardctl(pid: int) -> bool:
    """Best effort: does ``pid`` run shardctl? (False for a pid the OS reused for something else.)"""
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.AccessDenied:
        return True  # cannot tell: assume the worst, refuse to clobber it
    except psutil.Error:
        return False
    return "shardctl" in cmdline


class Pidfile:
    """One pidfile path; ``create`` → ``unlink`` around the supervisor's life."""

    def __init__(self, path: Path, *, config_path: str = "CONFIG") -> None:
        self.path = Path(path)
        self.config_path = config_path
        self.pid: int | None = None

    def read(self) -> int | None:
        """The pid in the file, or None when it is missing or unreadable."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def owner(self) -> int | None:
        """The pid of the live supervisor that owns the file, or None when it is absent or stale."""
        pid = self.read()
        if pid is None or pid == os.getpid() or not pid_alive(pid) or not _is_shardctl(pid):
            return None
        return pid

    def create(self, pid: int | None = None) -> None:
        """Write ``pid`` (default: ours) or raise SupervisorAlreadyRunning naming the owner.

        The file is 0600; the parent directory is created (0700) when missing.
        """
        pid = os.getpid() if pid is None else pid
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for _ in range(3):
            owner = self.owner()
            if owner is not None:
                raise SupervisorAlreadyRunning(
                    f"a supervisor is already running for {self.config_path} (pid {owner}, pidfile "
                    f"{self.path}); stop it with `shardctl stop {self.config_path}`", owner)
            try:
                self.path.unlink()  # stale, empty or ours: replace it
            except FileNotFoundError:
                pass
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue  # another starter won the race: look at its pid again
            except OSError as exc:
                raise ShardctlError(f"cannot write the pidfile {self.path}: {exc.strerror}") from None
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(f"{pid}\n")
            self.pid = pid
            return
        raise ShardctlError(f"cannot take the pidfile {self.path}: another process keeps rewriting it")

    def unlink(self) -> None:
        """Remove the file if it still holds the pid we wrote; never raises."""
        if self.pid is None:
            return
        try:
            if self.read() == self.pid:
                self.path.unlink()
        except OSError:
            pass  # already gone, or the directory went away: nothing left to clean
        self.pid = None
