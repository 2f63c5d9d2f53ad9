"""The embedded PostgreSQL: start, reuse, outlive the starting process, stop; errors are one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from shardctl.db.embedded import EmbeddedPostgres
from shardctl.errors import EmbeddedServerError


def _select_one(dsn: str) -> int:
    conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.slow
def test_server_outlives_the_process_that_started_it(server_dir: Path) -> None:
    data = server_dir / "pg"
    server = EmbeddedPostgres(data)
    assert not server.running() and server.dsn() is None and server.pid() is None
    code = ("import sys; from pathlib import Path; from shardctl.db.embedded import EmbeddedPostgres; "
            f"dsn, started = EmbeddedPostgres(Path({str(data)!r})).ensure_running(); print(started)")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "True"
        # No atexit handler stopped it: it still runs after that interpreter exited.
        assert server.running() and server.pid()
        dsn, started = server.ensure_running()
        assert started is False and dsn == server.dsn()
        assert _select_one(dsn) == 1
    finally:
        assert server.stop() is True
    assert not server.running() and server.dsn() is None
    assert server.stop() is False


@pytest.mark.slow
def test_long_data_dir_puts_the_socket_elsewhere(server_dir: Path) -> None:
    data = server_dir / ("d" * 60) / ("e" * 60) / "pg"
    server = EmbeddedPostgres(data)
    try:
        dsn, started = server.ensure_running()
        assert started
        assert str(data) not in dsn  # the socket dir is a short one
        assert _select_one(dsn) == 1
    finally:
        server.stop()


def test_start_failure_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(EmbeddedServerError) as err:
        EmbeddedPostgres(blocker / "pg").ensure_running()
    assert "\n" not in str(err.value) and str(blocker) in str(err.value)


def test_cluster_of_another_version_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    data.mkdir()
    (data / "PG_VERSION").write_text("16\n")
    with pytest.raises(EmbeddedServerError, match="PostgreSQL 16 cluster"):
        EmbeddedPostgres(data).ensure_running()
