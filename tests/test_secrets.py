"""Secrets stay out of logs, reports and files; the state directory is private whatever the umask.

Real worker and supervisor processes, real sockets, the real database. The
"Twelve Data" that echoes the key back is a tiny websockets server below: the
local feed never puts the key in its text.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import psycopg2.extensions
import pytest
import support
from support import WorkerProcess, row_count, wait_until
from websockets.asyncio.server import ServerConnection, serve

from shardctl import logs
from shardctl.feed.server import FeedServer
from shardctl.supervisor.control import ControlClient

SYMBOLS = ("AAPL", "BTC/USD")
KEY_ENV = "SHARDCTL_TEST_SECRET_KEY"


def write_config(tmp_path: Path, url: str, dsn: str, **settings: object) -> Path:
    return support.write_config(tmp_path, url, dsn, {"s1": {"symbols": SYMBOLS, "api_key_env": KEY_ENV}},
                                defaults={"batch_size": 50, "flush_interval": "200ms", **settings},
                                with_supervisor=False)


def new_key() -> str:
    return "sk_live_" + secrets.token_hex(16)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """Run the test (and the processes it starts) under the common umask 022."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if not p.is_dir())


def wider_than_private(directory: Path) -> list[str]:
    """Every directory (itself included) not 0700 and every file or socket not 0600, as "path mode"."""
    found = []
    for path in [directory, *sorted(directory.rglob("*"))]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            found.append(f"{path.relative_to(directory.parent)} {mode:o}")
    return found


# ------------------------------------------------------------------ a server that says the key back

class EchoKeyServer:
    """Accepts any handshake; answers a subscribe with the key in a status error, a junk frame and a close reason."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/quotes/price"

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        async for message in ws:
            if json.loads(message).get("action") != "subscribe":
                continue
            text = f"Invalid API key {self.key}: not authorised"
            await ws.send(json.dumps({"event": "subscribe-status", "status": "error", "messages": [text]}))
            await ws.send(text)  # not JSON: a dead letter
            await ws.close(4001, text)
            return

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, ping_interval=None, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stopped.wait()

    def __enter__(self) -> EchoKeyServer:
        self._thread.start()
        assert self._ready.wait(10), "the echo server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stopped is not None
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)


@pytest.mark.slow
def test_server_text_with_the_key_is_masked_in_logs_reports_and_dead_letters(tmp_path, schema_dsn) -> None:
    key = new_key()
    with EchoKeyServer(key) as server:
        config = write_config(tmp_path, server.url, schema_dsn, reconnect_initial="3s", reconnect_max="3s")
        worker = WorkerProcess(config, "s1", tmp_path / "worker.log", env={KEY_ENV: key}, report=True)
        try:
            worker.wait_log(r"server closed the connection")
            report = wait_until(lambda: next((r for r in worker.reports()
                                              if "server closed" in str(r.get("last_error"))), None),
                                what="a stats report with the close reason")
            assert worker.terminate() == 0
            reports = worker.reports()
        finally:
            worker.close()
    log = worker.log()
    assert key not in log
    assert f"Invalid API key {logs.MASK}: not authorised" in log, "the line is kept, the key masked"
    assert "subscribe failed" in log and "set aside 1 malformed frame" in log
    assert report["last_error"] == f"server closed the connection (code 4001, Invalid API key {logs.MASK}: " \
                                   "not authorised)"
    assert key not in json.dumps(reports)
    shard_dir = tmp_path / "state" / "shards" / "s1"
    dead = [json.loads(line) for line in (shard_dir / "deadletters.jsonl").read_text().splitlines()]
    assert [entry["frame"] for entry in dead] == [f"Invalid API key {logs.MASK}: not authorised"]
    # The journal keeps every frame verbatim (it is what the worker replays); it is private (0600) and
    # its segments are deleted once committed. Every other file under the state dir is free of the key.
    others = [p for p in files_under(tmp_path / "state") if "journal" not in p.parts]
    assert shard_dir / "deadletters.jsonl" in others
    assert [p for p in others if key.encode() in p.read_bytes()] == []


# ------------------------------------------------------------------ modes

@pytest.mark.slow
def test_a_worker_under_umask_022_leaves_only_private_files(tmp_path, schema_dsn, umask_022) -> None:
    with FeedServer(rate=200, symbols=SYMBOLS, seed=21) as feed:
        worker = WorkerProcess(write_config(tmp_path, feed.url, schema_dsn), "s1", tmp_path / "worker.log")
        try:
            wait_until(lambda: row_count(schema_dsn) >= 50, what="rows")
            feed.inject("garbage")
            shard_dir = tmp_path / "state" / "shards" / "s1"
            wait_until((shard_dir / "deadletters.jsonl").exists, what="a dead letter")
            assert worker.terminate() == 0
        finally:
            worker.close()
    names = {p.name for p in files_under(tmp_path / "state")}
    assert {"worker.lock", "deadletters.jsonl"} <= names and any(n.endswith(".seg") for n in names)
    assert wider_than_private(tmp_path / "state") == []


@pytest.mark.slow
def test_an_existing_wide_shard_dir_is_narrowed(tmp_path, schema_dsn, umask_022) -> None:
    shard_dir = tmp_path / "state" / "shards" / "s1"
    shard_dir.mkdir(parents=True, mode=0o755)
    os.chmod(shard_dir, 0o755)
    with FeedServer(rate=100, symbols=SYMBOLS, seed=22) as feed:
        worker = WorkerProcess(write_config(tmp_path, feed.url, schema_dsn), "s1", tmp_path / "worker.log")
        try:
            worker.wait_log(r"subscribed to")
            assert worker.terminate() == 0
        finally:
            worker.close()
    assert stat.S_IMODE(shard_dir.stat().st_mode) == 0o700


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_start_warns_about_a_dsn_password_and_the_supervisor_keeps_its_files_private(
        tmp_path, schema_dsn, umask_022) -> None:
    password = "pw-" + secrets.token_hex(8)
    dsn = psycopg2.extensions.make_dsn(schema_dsn, password=password)  # the test server trusts: it is ignored
    with FeedServer(rate=50, symbols=SYMBOLS, seed=23) as feed:
        config = write_config(tmp_path, feed.url, dsn)
        with open(config, "a") as handle:
            handle.write(f"[supervisor]\nmetrics_port = {free_port()}\n")
        log_path = tmp_path / "supervisor.log"
        env = {k: v for k, v in os.environ.items() if k != "SHARDCTL_DSN"}
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "shardctl", "start", str(config)], stdout=out,
                                    stderr=subprocess.STDOUT, env=env)
        try:
            client = ControlClient(tmp_path / "state" / "run" / "control.sock", config)

            def running() -> bool:
                assert proc.poll() is None, log_path.read_text()
                try:
                    return client.request("status")["shards"][0]["state"] == "RUNNING"
                except Exception:
                    return False

            wait_until(running, 30, what="the shard to run")
            run = tmp_path / "state" / "run"
            assert {p.name for p in run.iterdir()} >= {"shardctl.pid", "control.sock", "status-token"}
            wide = wider_than_private(tmp_path / "state")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    log = log_path.read_text()
    warnings = [line for line in log.splitlines() if "database.dsn" in line and "holds a password" in line]
    assert len(warnings) == 1, log
    assert password not in log
    assert wide == []


# ------------------------------------------------------------------ the formatter and the registry

@pytest.fixture
def registered() -> Iterator[None]:
    """Restore the process's registered secrets and root handlers after the test."""
    saved = logs.registered_secrets()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    logs.forget_secrets()
    logs.register_secrets(saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_part_of_a_log_line_is_masked(registered, fmt: str) -> None:
    key, password = new_key(), "pa$$-" + secrets.token_hex(4)
    logs.register_secrets([key, password, "", "ab"])
    stream = io.StringIO()
    logs.configure("masking", fmt=fmt)
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    log = logging.getLogger("shardctl.test")
    log.warning(f"server said: Invalid API key {key}: not authorised")
    log.warning("args: %s and %r", key, {"password": password})
    try:
        raise RuntimeError(f"boom {key} / {password}")
    except RuntimeError:
        log.exception("failed")
    log.warning("values shorter than %d characters are not masked: ab", logs.MIN_SECRET_LENGTH)
    text = stream.getvalue()
    assert key not in text and password not in text
    assert text.count(logs.MASK) == 5
    assert "are not masked: ab" in text
    if fmt == "json":
        assert [json.loads(line)["msg"] for line in text.splitlines() if line.startswith("{")][0] == \
            f"server said: Invalid API key {logs.MASK}: not authorised"


def test_loading_a_config_registers_its_keys_but_not_the_local_feed_key(registered, tmp_path, monkeypatch) -> None:
    from shardctl.config import load_config

    key, token = new_key(), secrets.token_hex(12)
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv("SHARDCTL_TEST_TOKEN", token)
    monkeypatch.delenv("TWELVEDATA_API_KEY", raising=False)
    config = write_config(tmp_path, "ws://127.0.0.1:9/v1/quotes/price", "dbname=x")
    with open(config, "a") as handle:
        handle.write('[shards.s2]\nsymbols = ["MSFT"]\napi_key_env = "TWELVEDATA_API_KEY"\n'
                     '[supervisor]\nmetrics_port = 9\nstatus_token_env = "SHARDCTL_TEST_TOKEN"\n')
    logs.forget_secrets()
    load_config(config)
    assert set(logs.registered_secrets()) == {key, token}, "s2 uses the local feed's public key: not a secret"
    assert logs.mask_secrets(f"config/demo.toml {key} {token}") == f"config/demo.toml {logs.MASK} {logs.MASK}"


def test_status_table_masks_errors_and_shows_dead_letters(registered) -> None:
    from shardctl.report import ShardStatus
    from shardctl.supervisor.cli import format_status

    key = new_key()
    logs.register_secrets([key])
    table = format_status([ShardStatus.from_json(shard) for shard in [
        {"name": "a", "state": "RUNNING", "pid": 1, "restarts": 0, "last_error": None, "dead_letters": 1500,
         "dead_letters_dropped": 1120},
        {"name": "b", "state": "BACKOFF", "pid": None, "restarts": 2, "reason": f"Invalid API key {key}: no"},
    ]], now=0.0)
    header, a, b = table.splitlines()
    assert "DEAD LETTERS" in header
    assert a.endswith("1,500 (1,120 dropped)  -")
    assert b.endswith(f"Invalid API key {logs.MASK}: no") and key not in table
