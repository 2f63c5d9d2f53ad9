"""A real PostgreSQL primary with an asynchronous streaming standby, from the machine's PostgreSQL 15.

``PgPair`` runs two clusters on 127.0.0.1 (``initdb``, ``pg_basebackup -R``), each on a free TCP port,
as the ``postgres`` system user when the tests run as root (PostgreSQL refuses to run as root; the
embedded server does the same with its own user). It can stop the standby (it falls behind while the
primary commits), kill the primary (``pg_ctl stop -m immediate``: no checkpoint, clients cut), promote
the standby, take a base backup and start it in the primary's place (a restore). ``dsn`` names both
hosts with ``target_session_attrs=read-write``, as a Patroni pair is reached. Everything lives in one
directory under /tmp, removed at ``close``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

import psycopg2
from faultkit import free_port
from support import wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TIMESCALEDB_CONTROL = Path("/usr/share/postgresql/15/extension/timescaledb.control")
DBNAME = "shardctl_pair"


def available() -> str | None:
    """None when a pair can run here; else why not."""
    if not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL 15 in {PG_BIN}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    return None


def timescaledb_installed() -> bool:
    return TIMESCALEDB_CONTROL.exists()


class PgPair:
    """A primary and its asynchronous standby (see the module doc); ``timescaledb`` preloads the extension."""

    def __init__(self, *, timescaledb: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="shardctl-pair-", dir="/tmp"))
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.primary, self.standby = self.root / "primary", self.root / "standby"
        self.primary_port, self.standby_port = free_port(), free_port()
        self._run("initdb", "-D", str(self.primary), "-A", "trust", "-U", "postgres", "--no-sync")
        settings = ["listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{self.root}'",
                    "wal_level = replica", "max_wal_senders = 5", "hot_standby = on", "wal_keep_size = '512MB'",
                    "fsync = off", "synchronous_commit = off", "full_page_writes = off", "max_connections = 50"]
        if timescaledb:
            settings += ["shared_preload_libraries = 'timescaledb'", "timescaledb.telemetry_level = off"]
        with open(self.primary / "postgresql.conf", "a") as conf:
            conf.write("\n".join(settings) + "\n")
        self.start("primary")
        with closing(self.connect(self.primary_port, "postgres")) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {DBNAME}")
        self.base_backup(self.standby, standby=True)
        self.start("standby")

    # ------------------------------------------------------------ plumbing

    def _run(self, tool: str, *args: str, timeout: float = 60) -> str:
        command = [str(PG_BIN / tool), *args]
        if self._user:
            command = ["runuser", "-u", self._user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def _data(self, which: str) -> tuple[Path, int]:
        return (self.primary, self.primary_port) if which == "primary" else (self.standby, self.standby_port)

    def connect(self, port: int, dbname: str = DBNAME) -> psycopg2.extensions.connection:
        return psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname, connect_timeout=5)

    @property
    def dsn(self) -> str:
        """Both hosts; libpq picks the one that takes writes."""
        return (f"host=127.0.0.1,127.0.0.1 port={self.primary_port},{self.standby_port} user=postgres "
                f"dbname={DBNAME} target_session_attrs=read-write connect_timeout=3")

    def primary_dsn(self, port: int | None = None) -> str:
        return f"host=127.0.0.1 port={port or self.primary_port} user=postgres dbname={DBNAME}"

    # ------------------------------------------------------------ actions

    def start(self, which: str) -> None:
        data, port = self._data(which)
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / f"{which}.log"), "-o", f"-p {port}", "-w",
                  "-t", "60", "start", timeout=70)

    def stop(self, which: str, mode: str = "fast") -> None:
        data, _ = self._data(which)
        self._run("pg_ctl", "-D", str(data), "-m", mode, "-w", "-t", "60", "stop", timeout=70)

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.standby), "-w", "-t", "60", "promote", timeout=70)

    def base_backup(self, target: Path, *, standby: bool = False) -> None:
        """``pg_basebackup`` of the running primary into ``target`` (``-R``: as its streaming standby)."""
        self._run("pg_basebackup", "-D", str(target), "-h", "127.0.0.1", "-p", str(self.primary_port),
                  "-U", "postgres", "-X", "stream", "--no-sync", "--checkpoint=fast", *(["-R"] if standby else []),
                  timeout=120)

    def restore(self, backup: Path) -> None:
        """The primary's data directory replaced by ``backup`` (the primary must be stopped), then started."""
        shutil.rmtree(self.primary)
        shutil.copytree(backup, self.primary, symlinks=True)
        if self._user:
            subprocess.run(["chown", "-R", f"{self._user}:", str(self.primary)], check=True, timeout=60)
        self.start("primary")

    def lag_bytes(self) -> int:
        """WAL bytes the primary wrote that its standby has not replayed (0 when in step)."""
        with closing(self.connect(self.primary_port, "postgres")) as conn, conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), -1) "
                        "FROM pg_stat_replication")
            return int(cur.fetchone()[0])

    def wait_in_step(self) -> None:
        wait_until(lambda: self.lag_bytes() == 0, 30, interval=0.1, what="the standby to catch up")

    def close(self) -> None:
        for which in ("primary", "standby"):
            data, _ = self._data(which)
            if (data / "postmaster.pid").exists():
                try:
                    self.stop(which, "immediate")
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
        shutil.rmtree(self.root, ignore_errors=True)
