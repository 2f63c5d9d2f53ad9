"""Shared fixtures: a real PostgreSQL for the whole session, a fresh database per test.

``pg_server`` (session): an embedded PostgreSQL in a temporary directory,
started once and stopped at session end; or, when ``SHARDCTL_TEST_DSN`` is
set, that server (never stopped). ``fresh_dsn``: a new empty database,
dropped after the test. ``schema_dsn``: the same with shardctl's schema.
``write_config``: writes a TOML config file for a test. ``workers``: the
worker processes a test started, killed after it.

``flavour`` (session): "timescaledb" or "postgresql", the flavour shardctl's
schema takes on the session's server; a test of a mechanism that differs by
flavour asserts that flavour's equivalent (``support.postgresql_only`` skips,
with the reason, what cannot exist on TimescaleDB). Tests marked ``@pytest.mark.timescaledb`` are skipped when
the server lacks the TimescaleDB extension.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import psycopg2
import psycopg2.extensions
import pytest
from support import WorkerProcess, with_schema

from shardctl.config.model import TablesConfig
from shardctl.db.embedded import EmbeddedPostgres

TIMESCALEDB_SKIP = "needs TimescaleDB: point SHARDCTL_TEST_DSN at a server with the extension"


class PgServer:
    """The session's PostgreSQL: ``dsn`` (admin DSN), ``embedded``, and ``stop()``/``start()`` when embedded."""

    def __init__(self, dsn: str, server: EmbeddedPostgres | None) -> None:
        self.dsn = dsn
        self.server = server
        self.embedded = server is not None
        self._timescaledb: bool | None = None

    @property
    def data_dir(self) -> Path | None:
        return self.server.data_dir if self.server else None

    def stop(self) -> None:
        """Stop the embedded server (for outage tests); the admin DSN stays the same after ``start()``."""
        if self.server is None:
            pytest.skip("cannot stop an external test server (SHARDCTL_TEST_DSN)")
        self.server.stop()

    def start(self) -> None:
        """Start the embedded server again after ``stop()``."""
        if self.server is None:
            return
        self.dsn, _ = self.server.ensure_running()

    def connect(self, dbname: str | None = None) -> psycopg2.extensions.connection:
        dsn = self.dsn if dbname is None else psycopg2.extensions.make_dsn(self.dsn, dbname=dbname)
        return psycopg2.connect(dsn, connect_timeout=5)

    def has_timescaledb(self) -> bool:
        """True if the server can run TimescaleDB (extension available and preloaded)."""
        if self._timescaledb is None:
            conn = self.connect()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') "
                                "AND current_setting('shared_preload_libraries') ~ 'timescaledb'")
                    self._timescaledb = bool(cur.fetchone()[0])
            finally:
                conn.close()
        return self._timescaledb


def _server_dir() -> Path:
    """A short private directory under the system temp dir for a server's data (and socket).

    Not under pytest's basetemp: when tests run as root the server runs as the
    user ``pgserver``, and every pytest session that starts meanwhile resets
    /tmp/pytest-of-root to mode 0700, cutting a live server off its data.
    """
    return Path(tempfile.mkdtemp(prefix="shardctl-"))


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A fresh short directory for a test's own embedded server / state dir; removed afterwards.

    The test must stop any server it started there (EmbeddedPostgres(path).stop()).
    """
    path = _server_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _fast_and_unsafe(dsn: str) -> None:
    """Trade durability for speed on the throwaway test server (CREATE DATABASE, commits)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            cur.execute(f"ALTER SYSTEM SET {setting} = off")
        cur.execute("SELECT pg_reload_conf()")
    conn.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("SHARDCTL_TEST_DSN")
    if external:
        yield PgServer(external, None)
        return
    base = _server_dir()
    server = EmbeddedPostgres(base / "data")
    try:
        dsn, _ = server.ensure_running()
        _fast_and_unsafe(dsn)
        yield PgServer(dsn, server)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def flavour(pg_server: PgServer) -> str:
    """"timescaledb" when the test server can run TimescaleDB (shardctl then makes hypertables), else "postgresql"."""
    return "timescaledb" if pg_server.has_timescaledb() else "postgresql"


@pytest.fixture
def fresh_dsn(pg_server: PgServer) -> Iterator[str]:
    """DSN of a brand-new empty database, dropped (WITH FORCE) after the test."""
    name = f"t_{secrets.token_hex(6)}"
    admin = pg_server.connect()
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    yield psycopg2.extensions.make_dsn(pg_server.dsn, dbname=name)
    try:
        pg_server.start()  # a test may have stopped the embedded server
        admin = pg_server.connect()
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    except psycopg2.Error:
        pass


@pytest.fixture
def tables() -> TablesConfig:
    return TablesConfig()


@pytest.fixture
def schema_dsn(fresh_dsn: str, tables: TablesConfig) -> str:
    """A fresh database with shardctl's schema (default table names) applied."""
    with_schema(fresh_dsn, tables)
    return fresh_dsn


def write_config_file(directory: Path, text: str, name: str = "shardctl.toml") -> Path:
    """Write ``text`` (dedented) as a TOML config in ``directory`` and return its path."""
    path = Path(directory) / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def write_config() -> Callable[..., Path]:
    """``write_config(tmp_path, text, name="shardctl.toml") -> Path``: write a TOML config for a test."""
    return write_config_file


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker processes a test started (``start_worker`` in test_worker.py appends them); killed afterwards."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.close()


@pytest.fixture(autouse=True)
def _timescaledb_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("timescaledb") is None:
        return
    server: PgServer = request.getfixturevalue("pg_server")
    if not server.has_timescaledb():
        pytest.skip(TIMESCALEDB_SKIP)
