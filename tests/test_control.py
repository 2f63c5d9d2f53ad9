"""The control protocol, pidfile and metrics rendering: real unix sockets, real HTTP, no supervisor."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardctl.errors import ControlError, ShardctlError, SupervisorNotRunning
from shardctl.report import ShardState, ShardStatus
from shardctl.supervisor.control import (
    ControlClient,
    ControlServer,
    Reply,
    Request,
    ShardReply,
    StatusReply,
    SupervisorInfo,
    parse_request,
)
from shardctl.supervisor.http.metrics import MetricsServer, health, render
from shardctl.supervisor.pidfile import Pidfile, SupervisorAlreadyRunning

# ------------------------------------------------------------------ protocol

@pytest.mark.parametrize("line,code", [
    (b"not json", "bad_request"),
    (b"[1, 2]", "bad_request"),
    (b'{"shard": "x"}', "bad_request"),
    (b'{"cmd": "explode"}', "unknown_command"),
    (b'{"cmd": "restart"}', "bad_request"),
    (b'{"cmd": "status", "shard": 3}', "bad_request"),
    (b'{"cmd": "start", "shard": "a", "timeout": -1}', "bad_request"),
    (b"\xff\xfe", "bad_request"),
])
def test_bad_requests_are_refused_with_a_code(line: bytes, code: str) -> None:
    with pytest.raises(ControlError) as info:
        parse_request(line)
    assert info.value.code == code


def test_good_request() -> None:
    assert parse_request(b'{"cmd": "restart", "shard": "crypto", "timeout": 5}\n') == \
        Request("restart", "crypto", 5.0)
    assert parse_request('{"cmd": "status", "shard": null}') == Request("status")


# ------------------------------------------------------------------ server + client over a real socket

class LoopThread:
    """An asyncio loop in a thread hosting a ControlServer, so the blocking client can talk to it."""

    def __init__(self, path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, self.handler)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start())

    async def handler(self, request: Request) -> Reply:
        if request.cmd == "status":
            return StatusReply((), SupervisorInfo(pid=1, config=request.shard or "", shutting_down=False,
                                                  metrics_port=None, feed_pid=None, host_id=None))
        if request.cmd == "start" and request.shard == "crash":
            raise RuntimeError("boom")
        if request.shard != "known":
            raise ControlError("no_such_shard", f"no shard named {request.shard!r}")
        return ShardReply(ShardStatus(name="known", state=ShardState.STOPPED), killed=False)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[LoopThread, Path]]:
    path = tmp_path / "run" / "ctl.sock"
    hosted = LoopThread(path)
    yield hosted, path
    hosted.close()


def raw_exchange(path: Path, payload: bytes) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = sock.makefile("rb").read()
    return [json.loads(line) for line in data.splitlines()]


def test_socket_and_directory_permissions(server: tuple[LoopThread, Path]) -> None:
    _, path = server
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_client_round_trip_and_refusals(server: tuple[LoopThread, Path]) -> None:
    _, path = server
    client = ControlClient(path, "cfg.toml")
    assert client.request("status", "x") == {"shards": [], "supervisor": {
        "pid": 1, "config": "x", "shutting_down": False, "metrics_port": None, "feed_pid": None, "host_id": None}}
    stopped = client.request("stop", "known")
    assert (stopped["shard"]["name"], stopped["shard"]["state"], stopped["killed"]) == ("known", "STOPPED", False)
    with pytest.raises(ControlError) as info:
        client.request("stop", "other")
    assert info.value.code == "no_such_shard" and "other" in str(info.value)


def test_garbage_does_not_harm_the_server(server: tuple[LoopThread, Path]) -> None:
    _, path = server
    answers = raw_exchange(path, b'garbage\n{"cmd":"nope"}\n{"cmd":"start","shard":"crash"}\n'
                                 b'{"cmd":"status"}')  # last line has no newline: still answered
    assert [a.get("code") for a in answers] == ["bad_request", "unknown_command", "internal", None]
    assert answers[-1]["ok"] is True
    too_long = raw_exchange(path, b"x" * 70_000 + b"\n")
    assert too_long[0]["code"] == "bad_request"
    assert ControlClient(path, "c").request("status")["shards"] == []


def test_forbidden_peer_uid() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another uid")
    python = "/usr/bin/python3"  # the venv's python may not be readable by uid 65534
    if not os.access(python, os.X_OK):
        pytest.skip("needs a system python3 that another uid can run")
    base = Path(tempfile.mkdtemp(prefix="shardctl-ctl-", dir="/tmp"))
    hosted = LoopThread(base / "run" / "ctl.sock")
    try:
        path = base / "run" / "ctl.sock"
        for directory in (base, path.parent):  # let the other user reach the socket: the uid check must refuse
            os.chmod(directory, 0o755)
        os.chmod(path, 0o666)
        code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "s.sendall(b'{\"cmd\":\"status\"}\\n'); print(s.makefile().readline())")
        out = subprocess.run([python, "-c", code, str(path)], user=65534, cwd="/", capture_output=True,
                             text=True, timeout=20)
        assert out.stdout.strip(), out.stderr
        assert json.loads(out.stdout)["code"] == "forbidden"
    finally:
        hosted.close()
        shutil.rmtree(base, ignore_errors=True)


def test_no_supervisor_says_so(tmp_path: Path) -> None:
    client = ControlClient(tmp_path / "absent.sock", "prod.toml")
    with pytest.raises(SupervisorNotRunning) as info:
        client.request("status")
    assert "no supervisor is running for prod.toml" in str(info.value)
    assert "shardctl start prod.toml" in str(info.value)
    # a stale socket file nobody listens on: ECONNREFUSED, same answer
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(stale))
    sock.close()
    with pytest.raises(SupervisorNotRunning):
        ControlClient(stale, "prod.toml").request("status")


def test_second_server_on_a_live_socket_is_refused(server: tuple[LoopThread, Path]) -> None:
    _, path = server
    with pytest.raises(ShardctlError, match="another supervisor"):
        asyncio.run(ControlServer(path, server[0].handler).start())


def test_stale_socket_file_is_replaced_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    hosted = LoopThread(path)
    assert ControlClient(path, "c").request("status")["shards"] == []
    hosted.close()
    assert not path.exists()


# ------------------------------------------------------------------ pidfile

def test_pidfile_refuses_a_live_supervisor_and_replaces_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "run" / "shardctl.pid"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # shardctl"])
    try:
        path.parent.mkdir()
        path.write_text(f"{live.pid}\n")
        with pytest.raises(SupervisorAlreadyRunning) as info:
            Pidfile(path, config_path="demo.toml").create()
        assert f"pid {live.pid}" in str(info.value) and "shardctl stop demo.toml" in str(info.value)
    finally:
        live.kill()
        live.wait()
    pidfile = Pidfile(path)
    pidfile.create()  # the owner is dead now: stale, replaced
    assert path.read_text().strip() == str(os.getpid())
    pidfile.unlink()
    assert not path.exists()


def test_pidfile_ignores_a_reused_pid_of_another_program(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        path = tmp_path / "p.pid"
        path.write_text(str(other.pid))
        Pidfile(path).create()
        assert path.read_text().strip() == str(os.getpid())
    finally:
        other.kill()
        other.wait()


def test_pidfile_unlink_leaves_someone_elses_file(tmp_path: Path) -> None:
    path = tmp_path / "p.pid"
    pidfile = Pidfile(path)
    pidfile.create()
    path.write_text("999999\n")
    pidfile.unlink()
    assert path.exists()


# ------------------------------------------------------------------ metrics

#: Flat JSON as ``status --json`` prints it, read back through the typed status.
SHARDS = [ShardStatus.from_json(shard) for shard in [
    {"name": "crypto", "state": "RUNNING", "wanted": True, "ticks_received": 10, "rows_written": 8, "batches": 2,
     "batch_seconds_sum": 0.5, "batch_seconds_max": 0.3, "reconnects": 1, "dead_letters": 0, "parse_errors": 0,
     "restarts": 3, "pending_rows": 2, "connected": True, "last_tick_at": 1000.0, "last_event_ts": 999},
    {"name": "stocks", "state": "BACKOFF", "reason": "exit code 1; restarting in 1.0s", "wanted": True,
     "ticks_received": 0, "rows_written": 0, "batches": 0, "restarts": 1, "last_tick_at": None},
    {"name": "forex", "state": "STOPPED", "wanted": False},
]]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_render_parses() -> None:
    got = samples(render(lambda: SHARDS).decode())
    assert got[("shardctl_rows_written_total", (("shard", "crypto"),))] == 8
    assert got[("shardctl_restarts_total", (("shard", "crypto"),))] == 3
    assert got[("shardctl_batch_seconds_count", (("shard", "crypto"),))] == 2
    assert got[("shardctl_batch_seconds_sum", (("shard", "crypto"),))] == 0.5
    assert got[("shardctl_shard_state", (("shard", "stocks"), ("state", "BACKOFF")))] == 1
    assert got[("shardctl_shard_state", (("shard", "stocks"), ("state", "RUNNING")))] == 0
    assert got[("shardctl_shard_up", (("shard", "crypto"),))] == 1
    assert ("shardctl_last_tick_age_seconds", (("shard", "stocks"),)) not in got


def test_health() -> None:
    ok, problems = health(SHARDS)
    assert not ok and problems == ["stocks: BACKOFF (exit code 1; restarting in 1.0s)"]
    assert health([SHARDS[0], SHARDS[2]]) == (True, [])


def test_metrics_http_server_and_port_in_use() -> None:
    async def scenario() -> None:
        server = MetricsServer("127.0.0.1", 0, lambda: SHARDS)
        await server.start()
        try:
            loop = asyncio.get_running_loop()
            url = f"http://127.0.0.1:{server.port}"

            def fetch(path: str) -> tuple[int, str]:
                try:
                    with urllib.request.urlopen(url + path, timeout=5) as response:
                        return response.status, response.read().decode()
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read().decode()

            status, body = await loop.run_in_executor(None, fetch, "/metrics")
            assert status == 200 and "shardctl_ticks_received_total" in body
            status, body = await loop.run_in_executor(None, fetch, "/healthz")
            assert status == 503 and "stocks: BACKOFF" in body
            assert (await loop.run_in_executor(None, fetch, "/nope"))[0] == 404
            clash = MetricsServer("127.0.0.1", server.port, lambda: [])
            with pytest.raises(ShardctlError, match="already in use"):
                await clash.start()
        finally:
            await server.close()

    asyncio.run(scenario())
