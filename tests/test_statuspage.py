"""The status page end to end: a real supervisor, the local feed, the real database, a real browser.

HTTP tests talk to the supervisor's metrics port with urllib and raw
sockets. The browser test drives headless Chromium over the DevTools
protocol (websocket-client); when Chromium is missing it is installed with
apt-get (root, bounded by timeouts) or the test is skipped with the reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, Iterator

import psycopg2
import pytest
import websocket
from support import terminate_all, wait_until
from test_supervisor import CRYPTO, STOCKS, Supervisor, free_port, write_config

from shardctl.config import check_config
from shardctl.config.model import TablesConfig
from shardctl.db import candles
from shardctl.feed.server import FeedServer

TOKEN_ENV = "SHARDCTL_TEST_STATUS_TOKEN"
#: Chromium flags for a quiet, sandbox-less (root) headless run that talks to nothing but 127.0.0.1.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900", "--remote-debugging-port=0")
#: Upper bounds for installing Chromium with apt (the whole attempt, and one apt-get run).
APT_BUDGET = 300.0
APT_STEP = 200.0


# ------------------------------------------------------------------ fixtures and helpers

@pytest.fixture
def feed() -> Iterator[FeedServer]:
    with FeedServer(rate=50, symbols=STOCKS + CRYPTO, seed=11) as server:
        yield server


@pytest.fixture
def launch(tmp_path: Path, schema_dsn: str, feed: FeedServer) -> Iterator[Any]:
    """``launch(**supervisor_keys) -> (Supervisor, port)``: a real ``shardctl start`` with the status page on."""
    started: list[Supervisor] = []

    def run(**keys: Any) -> tuple[Supervisor, int]:
        port = free_port()
        config = write_config(tmp_path, feed.url, schema_dsn, metrics_port=port, **keys)
        sup = Supervisor(config, tmp_path / "supervisor.log")
        started.append(sup)
        sup.wait_states("RUNNING")
        return sup, port

    yield run
    terminate_all([sup.proc for sup in started])
    for sup in started:
        sup.close()


def http(port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
         data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def http_json(port: int, path: str, **kwargs: Any) -> tuple[int, Any]:
    code, headers, body = http(port, path, **kwargs)
    assert headers["Content-Type"] == "application/json", (path, headers)
    return code, json.loads(body)


def raw(port: int, data: bytes) -> bytes:
    """Send raw bytes, return the whole answer (the server closes every connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def insert_candle_ticks(dsn: str, symbol: str) -> tuple[datetime, list[dict[str, Any]]]:
    """Ticks in three minutes two hours ago, their candles refreshed; returns (first bucket, expected candles)."""
    base = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(second=0, microsecond=0)
    minutes = [[(5, 100.0), (20, 105.0), (40, 98.0), (55, 101.0)], [(1, 101.0), (30, 110.0), (59, 108.0)],
               [(7, 107.0)]]
    rows = [(base + timedelta(minutes=m, seconds=s), symbol, price, 1000 + 10 * m + s)
            for m, ticks in enumerate(minutes) for s, price in ticks]
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO crypto_ticks (time, symbol, price, day_volume) VALUES (%s, %s, %s, %s)",
                            rows)
        candles.refresh_range(conn, TablesConfig(), base, base + timedelta(minutes=3))
    finally:
        conn.close()
    expected = [{"bucket": (base + timedelta(minutes=m)).isoformat(), "open": ticks[0][1],
                 "high": max(p for _, p in ticks), "low": min(p for _, p in ticks), "close": ticks[-1][1]}
                for m, ticks in enumerate(minutes)]
    return base, expected


def candle_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"bucket": b, "open": o, "high": h, "low": lo, "close": c}
            for b, o, h, lo, c in zip(data["bucket"], data["open"], data["high"], data["low"], data["close"])]


# ------------------------------------------------------------------ config

def test_status_token_env_is_checked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    base = ('[source]\nurl = "ws://127.0.0.1:8765/v1/quotes/price"\n[supervisor]\nmetrics_port = 9108\n{line}\n'
            '[shards.a]\nsymbols = ["X"]\n')
    path = tmp_path / "shardctl.toml"
    path.write_text(base.format(line='status_token_env = "not a name"'))
    config, problems, _ = check_config(path)
    assert config is None and [str(p) for p in problems] == [
        f"{path}: supervisor.status_token_env: 'not a name' is not an environment variable name (letters, digits, _)"]
    path.write_text(base.format(line=f'status_token_env = "{TOKEN_ENV}"'))
    config, problems, warnings = check_config(path)  # `validate`: a warning; `start`: an error
    assert config is not None and config.supervisor.status_token_env == TOKEN_ENV and not problems
    assert [w.key for w in warnings] == ["supervisor.status_token_env"]
    _, problems, _ = check_config(path, require_env=True)
    assert [p.key for p in problems] == ["supervisor.status_token_env"] and TOKEN_ENV in problems[0].message
    monkeypatch.setenv(TOKEN_ENV, "x" * 20)
    assert check_config(path, require_env=True)[1] == []
    path.write_text(base.format(line=""))
    assert check_config(path)[0].supervisor.status_token_env is None  # a generated token


# ------------------------------------------------------------------ HTTP

@pytest.mark.slow
def test_status_candles_and_bad_requests(launch, schema_dsn: str) -> None:
    sup, port = launch()
    token_file = sup.config.state_dir / "run" / "status-token"
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) >= 32
    assert token not in sup.log() and str(token_file) in sup.log()

    code, status = http_json(port, "/api/status")
    assert code == 200
    assert {s["name"]: s["state"] for s in status["shards"]} == {"stocks": "RUNNING", "crypto": "RUNNING"}
    assert status["symbols"] == {"stocks": list(STOCKS), "crypto": list(CRYPTO)}
    assert status["intervals"] == ["1m", "1h", "1d"] and status["supervisor"]["pid"] == sup.proc.pid

    base, expected = insert_candle_ticks(schema_dsn, "BTC/USD")
    code, data = http_json(port, "/api/candles?symbol=BTC%2FUSD&interval=1m&since=6h")
    assert code == 200 and data["table"] == "one_minute_candle" and data["since"] == 6 * 3600
    got = candle_rows(data)
    first = [row["bucket"] for row in got].index(base.isoformat())
    assert got[first:first + 3] == expected
    assert data["volume"][first:first + 3] == [1055, 1069, 1027]  # day_volume of each minute's last tick
    code, hourly = http_json(port, "/api/candles?symbol=BTC/USD&interval=1h&since=1d")
    assert code == 200 and base.replace(minute=0).isoformat() in hourly["bucket"]

    for path, want, fragment in [
            ("/api/candles?symbol=BTC/USD&interval=5m", 400, "unknown interval '5m'; configured: 1m, 1h, 1d"),
            ("/api/candles?interval=1m", 400, "symbol"),
            ("/api/candles?symbol=DOGE/USD&interval=1m", 404, "no shard streams 'DOGE/USD'"),
            ("/api/candles?symbol=BTC/USD&interval=1m&since=soon", 400, "since: expected a duration"),
            ("/api/nothing", 404, "no such page"),
            ("/api/shards/crypto/explode", 404, "unknown action")]:
        method = "POST" if "shards" in path else "GET"
        code, body = http_json(port, path, method=method, headers={"X-Shardctl-Token": token})
        assert (code, body["error"].find(fragment) >= 0) == (want, True), (path, code, body)

    code, headers, body = http(port, "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html") and b'id="shards"' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    code, headers, body = http(port, "/static/plotly.min.js")
    assert code == 200 and len(body) > 1_000_000 and b"plotly" in body[:2000].lower()
    assert http(port, "/static/statuspage.js")[0] == 200 and http(port, "/static/nope.js")[0] == 404
    assert http(port, "/nope")[0] == 404 and http(port, "/healthz")[0] == 200
    code, headers, _ = http(port, "/api/status", method="POST", data=b"")
    assert code == 405 and headers["Allow"] == "GET"
    code, headers, _ = http(port, "/api/shards/crypto/restart")
    assert code == 405 and headers["Allow"] == "POST"
    assert raw(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
    assert raw(port, b"POST /api/shards/crypto/restart HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n"
               ).startswith(b"HTTP/1.1 413 ")
    assert sup.proc.poll() is None and http(port, "/api/status")[0] == 200
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(30) == 0
    assert not token_file.exists()  # a generated token lives as long as its supervisor


@pytest.mark.slow
def test_restart_needs_the_token_and_goes_through_the_control_path(launch, monkeypatch) -> None:
    token = "a-status-token-from-the-environment"
    monkeypatch.setenv(TOKEN_ENV, token)
    sup, port = launch(status_token_env=TOKEN_ENV)
    assert not (sup.config.state_dir / "run" / "status-token").exists()
    before = sup.status()

    code, body = http_json(port, "/api/shards/crypto/restart", method="POST", data=b"")
    assert code == 403 and body["code"] == "forbidden"
    assert body["error"] == (f"this needs the status token in the X-Shardctl-Token header (it is the value of "
                             f"${TOKEN_ENV})")
    code, body = http_json(port, "/api/shards/crypto/restart", method="POST", headers={"X-Shardctl-Token": "x"})
    assert code == 403 and body["error"].startswith("wrong status token")
    code, body = http_json(port, "/api/shards/crypto/restart", method="POST", data=b"token=nope",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 403
    assert sup.status()["crypto"]["pid"] == before["crypto"]["pid"] and sup.status()["crypto"]["restarts"] == 0
    assert token not in sup.log() and "restart refused from 127.0.0.1: wrong status token" in sup.log()

    code, body = http_json(port, "/api/shards/nope/restart", method="POST", headers={"X-Shardctl-Token": token})
    assert (code, body["code"]) == (404, "no_such_shard")
    assert "no shard named 'nope' (known: stocks, crypto)" in body["error"]

    code, body = http_json(port, "/api/shards/crypto/restart", method="POST", headers={"X-Shardctl-Token": token})
    assert code == 200 and body["ok"] is True and body["shard"]["state"] == "RUNNING"
    after = sup.status()
    assert after["crypto"]["pid"] == body["shard"]["pid"] != before["crypto"]["pid"]
    assert after["crypto"]["restarts"] == 1 and after["crypto"]["reason"] == "worker reported ready"
    assert after["stocks"]["pid"] == before["stocks"]["pid"]
    # The control socket's code path: one lock held across stop and start, with the operator's reasons.
    assert f"[crypto] RUNNING -> STOPPING (pid {before['crypto']['pid']}): restarting by operator" in sup.log()
    assert "[crypto] STOPPED -> STARTING: restarted by operator" in sup.log()

    code, body = http_json(port, "/api/shards/stocks/stop", method="POST", data=f"token={token}".encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 200 and body["shard"]["state"] == "STOPPED"
    code, body = http_json(port, "/api/shards/stocks/stop", method="POST", headers={"X-Shardctl-Token": token})
    assert (code, body["code"]) == (409, "not_running")


# ------------------------------------------------------------------ Host and Origin (DNS rebinding, CSRF)

def send(port: int, path: str, host: str, *, method: str = "GET",
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One real request to 127.0.0.1:port with exactly this Host header; returns (status, body)."""
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def one_line_error(body: bytes) -> str:
    error = json.loads(body)["error"]
    assert error and "\n" not in error
    return error


@pytest.mark.slow
def test_a_foreign_host_or_origin_is_refused(launch) -> None:
    sup, port = launch()
    token = (sup.config.state_dir / "run" / "status-token").read_text().strip()
    before = sup.status()

    # DNS rebinding: a page on attacker.example resolved to 127.0.0.1 sends its own name as Host.
    for path in ("/", "/api/status", "/api/candles?symbol=BTC/USD&interval=1m", "/static/statuspage.js", "/nope"):
        code, body = send(port, path, f"attacker.example:{port}")
        assert code == 421, (path, code, body[:200])
        assert one_line_error(body) == ("host 'attacker.example' is not served here; add it to "
                                        "supervisor.allowed_hosts if it names this supervisor")
    assert send(port, "/api/status", "127.0.0.1.attacker.example")[0] == 421
    code, body = send(port, "/api/status", "localhost:http")
    assert code == 421 and "(malformed)" in one_line_error(body)
    assert raw(port, b"GET /api/status HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 400 ")  # no Host at all
    code, body = send(port, "/api/shards/crypto/restart", "attacker.example", method="POST",
                      headers={"X-Shardctl-Token": token})
    assert code == 421
    # Probes and Prometheus use the pod IP or a service name: /metrics and /healthz answer any Host.
    assert send(port, "/healthz", "10.1.2.3:9108") == (200, b"ok\n")
    code, body = send(port, "/metrics", "shardctl-metrics.monitoring.svc")
    assert code == 200 and b"shardctl_rows_written_total" in body

    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "[::1]",
                 "localhost:8080"):  # an ssh tunnel may use another local port
        code, body = send(port, "/api/status", host)
        assert code == 200 and json.loads(body)["supervisor"]["pid"] == sup.proc.pid, host

    # CSRF: a state change from another origin is refused even with the right token.
    for origin in ("http://attacker.example", f"http://attacker.example:{port}", "null", "file://"):
        code, body = send(port, "/api/shards/crypto/stop", f"127.0.0.1:{port}", method="POST",
                          headers={"X-Shardctl-Token": token, "Origin": origin})
        assert code == 403, (origin, code, body)
        assert one_line_error(body).startswith(f"origin {origin!r} may not change shards here"), body
    assert sup.status()["crypto"]["pid"] == before["crypto"]["pid"] and sup.status()["crypto"]["state"] == "RUNNING"
    assert "stop refused from 127.0.0.1: foreign origin" in sup.log()

    # The page itself (same origin) and curl (no Origin) act with the token.
    code, body = send(port, "/api/shards/crypto/stop", f"127.0.0.1:{port}", method="POST",
                      headers={"X-Shardctl-Token": token, "Origin": f"http://127.0.0.1:{port}"})
    assert code == 200 and json.loads(body)["shard"]["state"] == "STOPPED"
    code, body = send(port, "/api/shards/crypto/start", f"127.0.0.1:{port}", method="POST",
                      headers={"X-Shardctl-Token": token})
    assert code == 200 and json.loads(body)["shard"]["state"] in ("STARTING", "RUNNING")


@pytest.mark.slow
def test_configured_allowed_hosts_are_served(launch) -> None:
    sup, port = launch(allowed_hosts=["shardctl.internal"])
    token = (sup.config.state_dir / "run" / "status-token").read_text().strip()
    for host in ("shardctl.internal", f"shardctl.internal:{port}", "Shardctl.Internal"):
        code, body = send(port, "/api/status", host)
        assert code == 200 and json.loads(body)["supervisor"]["pid"] == sup.proc.pid, host
    assert send(port, "/", "other.internal")[0] == 421
    code, body = send(port, "/api/shards/stocks/stop", "shardctl.internal", method="POST",
                      headers={"X-Shardctl-Token": token, "Origin": "https://shardctl.internal"})
    assert code == 200 and json.loads(body)["shard"]["state"] == "STOPPED"
    code, body = send(port, "/api/shards/stocks/start", "shardctl.internal", method="POST",
                      headers={"X-Shardctl-Token": token, "Origin": "http://other.internal"})
    assert code == 403


# ------------------------------------------------------------------ the browser

def _install_chromium() -> str:
    """Try apt-get (bounded by APT_BUDGET); return why Chromium is still missing, or "" on success."""
    if os.geteuid() != 0:
        return "not running as root, so `apt-get install chromium` is not possible here"
    apt = shutil.which("apt-get")
    if apt is None:
        return "no apt-get on this machine; install Chromium as `chromium` on PATH"
    deadline = time.monotonic() + APT_BUDGET
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ("-o", "DPkg::Lock::Timeout=60")
    install = [apt, *lock, "install", "-y", "-q", "--no-install-recommends", "chromium", "fonts-liberation"]
    why = ""
    for argv in (install, [apt, *lock, "update", "-q"], install):
        left = deadline - time.monotonic()
        if left <= 5:
            return f"apt-get took longer than {APT_BUDGET:g}s ({why or 'timeout'})"
        remaining = min(APT_STEP, left)
        try:
            result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=remaining,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(argv[3:])}` did not finish in {remaining:.0f}s"
        lines = (result.stderr or result.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit code {result.returncode}"
        if argv is not install or result.returncode != 0:
            continue
        if shutil.which("chromium"):
            return ""
    return f"`apt-get install chromium` failed: {why}"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a working Chromium, installing it with apt-get when missing; skips with the reason if impossible."""
    found = shutil.which("chromium")
    if found is None:
        why = _install_chromium()
        found = shutil.which("chromium")
        if found is None:
            pytest.skip(f"headless Chromium is not available: {why}")
    try:
        subprocess.run([found, "--version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"{found} does not run: {exc}")
    return found


class Browser:
    """Headless Chromium in its own process group, one page driven over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.log = open(profile.parent / "chromium.log", "wb")
        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.ws: websocket.WebSocket | None = None
        self._id = 0
        self.events: list[dict[str, Any]] = []
        try:
            self._connect(profile / "DevToolsActivePort")
        except BaseException:
            self.close()
            raise

    def _connect(self, active: Path) -> None:
        text = wait_until(lambda: active.exists() and len(active.read_text().split()) >= 2 and active.read_text(),
                          20, what="Chromium's DevToolsActivePort")
        port = int(text.split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=20, suppress_origin=True)
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def eval(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 20.0) -> Any:
        return wait_until(lambda: self.eval(expression), timeout, interval=0.2, what=expression)

    def errors(self) -> list[str]:
        """Console and log errors other than failed HTTP requests (a refused POST is one, on purpose)."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                found.append(str(params["exceptionDetails"].get("text")))
            entry = params.get("entry", {})
            if event.get("method") == "Log.entryAdded" and entry.get("level") == "error" \
                    and entry.get("source") != "network":
                found.append(entry.get("text", ""))
        return found

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this test started (start_new_session)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


ROW = "document.querySelector('#shards tr[data-shard=\"{name}\"] {sel}')"


@pytest.mark.slow
@pytest.mark.timeout(APT_BUDGET + 120)  # a first run may install Chromium
def test_page_in_headless_chromium(launch, schema_dsn: str, chromium: str, tmp_path: Path) -> None:
    sup, port = launch()
    token = (sup.config.state_dir / "run" / "status-token").read_text().strip()
    insert_candle_ticks(schema_dsn, "BTC/USD")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    browser = Browser(chromium, profile)
    try:
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/?symbol=BTC/USD&interval=1m&since=6h")
        before = sup.status()
        # The table: one row per shard, live states and pids.
        browser.wait("document.querySelectorAll('#shards tbody tr').length === 2")
        browser.wait(f"{ROW.format(name='crypto', sel='.col-pid')}.textContent === '{before['crypto']['pid']}'")
        table = browser.eval("[...document.querySelectorAll('#shards tbody tr')].map(tr => "
                             "[tr.dataset.shard, tr.querySelector('.col-state').textContent, "
                             "tr.querySelector('.col-pid').textContent])")
        assert table == [[n, "RUNNING", str(before[n]["pid"])] for n in ("stocks", "crypto")]
        # The chart: plotly draws each candle as a box path in a candlestick trace.
        browser.wait("document.querySelectorAll('#chart.js-plotly-plot g.trace.boxes path.box').length >= 3")
        assert browser.eval("document.getElementById('symbol').value") == "BTC/USD"
        assert browser.eval("document.getElementById('chart').data[0].type") == "candlestick"

        # Restart without a token: refused, the server's message shown, nothing restarted.
        browser.eval(f"{ROW.format(name='crypto', sel='button.restart')}.click()")
        message = browser.wait("(m => !m.hidden && m.classList.contains('error') && m.textContent)"
                               "(document.getElementById('message'))")
        assert message.startswith("restart crypto refused (403): this needs the status token"), message
        assert sup.status()["crypto"]["pid"] == before["crypto"]["pid"]

        # With the token (typed once, kept in sessionStorage): the shard restarts; the table shows the new pid.
        browser.eval(f"document.getElementById('token').value = {json.dumps(token)}; "
                     "document.querySelector('#token-form button[type=submit]').click()")
        assert browser.eval("sessionStorage.getItem('shardctl.statusToken')") == token
        browser.eval(f"{ROW.format(name='crypto', sel='button.restart')}.click()")
        browser.wait("document.getElementById('message').textContent.startsWith('crypto: RUNNING (pid ')", 30)
        after = sup.status()["crypto"]
        assert after["pid"] != before["crypto"]["pid"] and after["state"] == "RUNNING"
        browser.wait(f"{ROW.format(name='crypto', sel='.col-pid')}.textContent === '{after['pid']}'")
        assert browser.eval(f"{ROW.format(name='stocks', sel='.col-pid')}.textContent") == \
            str(before["stocks"]["pid"])
        assert not browser.errors(), browser.errors()

        shot = tmp_path / "statuspage.png"
        shot.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
        print(f"status page screenshot: {shot}")
    finally:
        browser.close()
