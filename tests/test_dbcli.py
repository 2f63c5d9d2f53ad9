"""``shardctl db`` through real subprocesses, and the DSN helpers behind it (shardctl.database)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest

from shardctl.config import load_config
from shardctl.db.connection import (
    connect,
    dsn_to_uri,
    mask_dsn,
    resolve_dsn,
    resolve_target,
)
from shardctl.db.embedded import EmbeddedPostgres
from shardctl.db.schema import SCHEMA_VERSION
from shardctl.db.writer import Writer
from shardctl.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    EmbeddedServerError,
)
from shardctl.rows import Tick

PSQL = "/usr/bin/psql"
SHARDS = """
[source]
url = "ws://127.0.0.1:8765/v1/quotes/price"

[shards.crypto]
symbols = ["BTC/USD"]
"""


def _env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SHARDCTL_DSN", "SHARDCTL_TEST_DSN")}
    env["SHARDCTL_STATE_DIR"] = str(state_dir)
    return env


def _db(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardctl", "db", *args], capture_output=True, text=True,
                          env=env, timeout=60)


# ------------------------------------------------------------ shardctl.database

@pytest.mark.parametrize("dsn, masked", [
    ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:p@ss@h:5432/db?sslmode=require", "postgresql://u:***@h:5432/db?sslmode=require"),
])
def test_mask_dsn_hides_passwords_with_slashes_and_ats(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked


def test_mask_dsn_hides_passwords() -> None:
    assert mask_dsn("postgresql://bob:s3cret@db.example.com:5432/ticks?sslmode=require") == (
        "postgresql://bob:***@db.example.com:5432/ticks?sslmode=require")
    assert mask_dsn("postgres://bob@h/db?password=s3cret&sslmode=require") == (
        "postgres://bob@h/db?password=***&sslmode=require")
    assert mask_dsn("host=h user=bob password=s3cret dbname=d") == "host=h user=bob password=*** dbname=d"
    assert mask_dsn("host=h password='s3 cr\\'et' dbname=d") == "host=h password=*** dbname=d"
    assert mask_dsn("postgresql://bob@h/db") == "postgresql://bob@h/db"


def test_dsn_to_uri() -> None:
    assert dsn_to_uri("host=/tmp/pg port=5432 user=postgres dbname=postgres") == (
        "postgresql://postgres@/postgres?host=/tmp/pg&port=5432")
    assert dsn_to_uri("host=h user=bob password=p@ss dbname=d sslmode=require") == (
        "postgresql://bob@h/d?sslmode=require")
    assert dsn_to_uri("host=h user=bob password=p@ss dbname=d", show_password=True) == "postgresql://bob:p%40ss@h/d"


def test_unreachable_database_is_one_masked_line() -> None:
    for dsn in ("host=127.0.0.1 port=1 user=bob password=hunter2 dbname=x",
                "postgresql://bob:hunter2@127.0.0.1:1/x"):
        with pytest.raises(DatabaseUnavailable) as err:
            connect(dsn)
        text = str(err.value)
        assert "hunter2" not in text and "\n" not in text and "127.0.0.1" in text and "refused" in text


def test_refusal_is_not_retryable(pg_server) -> None:
    import psycopg2.extensions

    with pytest.raises(DatabaseError) as err:
        connect(psycopg2.extensions.make_dsn(pg_server.dsn, dbname="no_such_db_here"))
    assert not isinstance(err.value, DatabaseUnavailable)
    assert "no_such_db_here" in str(err.value) and "\n" not in str(err.value)


def test_resolve_order(tmp_path: Path, write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDCTL_DSN", raising=False)
    monkeypatch.setenv("SHARDCTL_STATE_DIR", str(tmp_path / "state"))
    literal = load_config(write_config(tmp_path, SHARDS + '[database]\ndsn = "host=h1 dbname=d"\n', "a.toml"))
    from_env = load_config(write_config(tmp_path, SHARDS + '[database]\ndsn_env = "MY_TEST_DSN"\n', "b.toml"))
    embedded = load_config(write_config(tmp_path, SHARDS, "c.toml"))
    assert resolve_dsn(literal) == "host=h1 dbname=d"
    monkeypatch.delenv("MY_TEST_DSN", raising=False)
    with pytest.raises(ConfigError, match=r"b\.toml: database\.dsn_env: environment variable MY_TEST_DSN"):
        resolve_dsn(from_env)
    monkeypatch.setenv("MY_TEST_DSN", "host=h2")
    assert resolve_dsn(from_env) == "host=h2"
    with pytest.raises(EmbeddedServerError, match="not running"):
        resolve_dsn(embedded, start_embedded=False)
    monkeypatch.setenv("SHARDCTL_DSN", "host=h0")
    assert resolve_dsn(literal) == resolve_dsn(embedded) == "host=h0"
    assert resolve_target(embedded).source == "$SHARDCTL_DSN"


# ------------------------------------------------------------ shardctl db (subprocesses)

@pytest.mark.slow
def test_embedded_lifecycle(tmp_path: Path, server_dir: Path, write_config: Callable[..., Path]) -> None:
    state = server_dir / "st"
    config = write_config(tmp_path, SHARDS)
    env = _env(state)
    server = EmbeddedPostgres(state / "postgres")
    try:
        status = _db(env, "status", str(config))
        assert status.returncode == 1 and "is not running" in status.stderr and not server.running()

        init = _db(env, "init", str(config))
        assert init.returncode == 0, init.stderr
        assert f"embedded PostgreSQL started in {state / 'postgres'}" in init.stderr
        assert f"shardctl db stop {config}" in init.stderr
        assert "flavour postgresql" in init.stdout and "crypto_ticks" in init.stdout and server.running()

        again = _db(env, "init", str(config))
        assert again.returncode == 0 and "started" not in again.stderr

        url = _db(env, "url", str(config))
        assert url.returncode == 0 and url.stdout.startswith("postgresql://")
        psql = subprocess.run([PSQL, url.stdout.strip(), "-Atc", "SELECT version FROM shardctl_schema"],
                              capture_output=True, text=True, timeout=30)
        assert psql.returncode == 0, psql.stderr
        assert psql.stdout.strip() == str(SCHEMA_VERSION)

        status = _db(env, "status", str(config))
        assert status.returncode == 0, status.stderr
        assert f"embedded PostgreSQL in {state / 'postgres'} (pid {server.pid()})" in status.stdout
        assert f"flavour: postgresql, schema version {SCHEMA_VERSION}" in status.stdout

        stop = _db(env, "stop", str(config))
        assert stop.returncode == 0 and "stopped" in stop.stdout and not server.running()
        stop = _db(env, "stop", str(config))
        assert stop.returncode == 0 and "is not running" in stop.stdout
    finally:
        server.stop()


def test_status_of_an_external_database(tmp_path: Path, write_config: Callable[..., Path], schema_dsn: str) -> None:
    config = write_config(tmp_path, SHARDS + f"[database]\ndsn = {schema_dsn!r}\n")
    env = _env(tmp_path / "state")
    with Writer(schema_dsn, load_config(config).tables, "crypto") as writer:
        writer.write(7, [Tick(datetime.now(timezone.utc), "BTC/USD", 1.0, 2, None, None)] * 3, journal_offset=99)
    status = _db(env, "status", str(config))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("server: ") and "(from database.dsn)" in lines[0]
    assert "crypto_ticks: 3 rows" in lines and "crypto_assets: 0 rows" in lines and "one_day_candle: 0 rows" in lines
    assert any(ln.startswith("shardctl_ledger: shard crypto: last_seq 7, rows 3, journal_offset 99") for ln in lines)

    stop = _db(env, "stop", str(config))
    assert stop.returncode == 1 and "external database" in stop.stderr
    assert stop.stderr.count("\n") == 1


@pytest.mark.slow
def test_status_before_init_and_unreachable(tmp_path: Path, write_config: Callable[..., Path],
                                            fresh_dsn: str) -> None:
    env = _env(tmp_path / "state")
    fresh = write_config(tmp_path, SHARDS + f"[database]\ndsn = {fresh_dsn!r}\n", "fresh.toml")
    status = _db(env, "status", str(fresh))
    assert status.returncode == 1 and "not initialised" in status.stdout

    down = write_config(tmp_path, SHARDS + '[database]\ndsn_env = "DOWN_DSN"\n', "down.toml")
    env["DOWN_DSN"] = "postgresql://bob:hunter2@127.0.0.1:1/x"
    result = _db(env, "init", str(down))
    assert result.returncode == 1
    assert result.stderr.startswith("shardctl: error: cannot reach the database") and "hunter2" not in result.stderr
    assert result.stderr.count("\n") == 1

    url = _db(env, "url", str(down))
    assert url.returncode == 0 and url.stdout.strip() == "postgresql://bob@127.0.0.1:1/x"
    assert "--show-password" in url.stderr
    url = _db(env, "url", "--show-password", str(down))
    assert url.stdout.strip() == "postgresql://bob:hunter2@127.0.0.1:1/x"

    del env["DOWN_DSN"]
    result = _db(env, "init", str(down))
    assert result.returncode == 2 and "database.dsn_env" in result.stderr and "DOWN_DSN" in result.stderr
