"""The supervisor end to end: real supervisor and worker processes, the local feed, the real database.

No mocks: every test runs ``python -m shardctl start`` as a subprocess and
talks to it over its control socket, its CLI, its HTTP port and signals.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import query, sent_ticks, stored_ticks, wait_until, with_schema

from shardctl.config import load_config
from shardctl.errors import ControlError
from shardctl.feed.server import FeedServer
from shardctl.supervisor.control import ControlClient

#: real supervisors with worker processes: seconds each; `pytest -m "not slow"` leaves them out of the quick loop.
pytestmark = pytest.mark.slow

STOCKS = ("AAPL", "MSFT")
CRYPTO = ("BTC/USD", "ETH/USD")

SHARDCTL = [sys.executable, "-m", "shardctl"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path: Path, url: str, dsn: str, *, shards: dict[str, tuple[str, ...]] | None = None,
                 metrics_port: int = 0, shard_settings: dict[str, dict[str, Any]] | None = None,
                 **supervisor: Any) -> Path:
    sup = {"start_grace": "3s", "heartbeat_timeout": "5s", "restart_initial": "200ms", "restart_max": "1s",
           "healthy_after": "30s", "max_failures": 3, "failure_window": "60s", "stop_timeout": "10s",
           "metrics_port": metrics_port, **supervisor}
    lines = [f'state_dir = "{tmp_path / "state"}"',
             "[database]", f"dsn = {json.dumps(dsn)}",
             "[source]", f'url = "{url}"',
             "[defaults]", "batch_size = 50", 'flush_interval = "200ms"', 'reconnect_initial = "100ms"',
             'reconnect_max = "1s"', 'stop_timeout = "5s"',
             "[supervisor]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in sup.items()]
    for name, symbols in (shards or {"stocks": STOCKS, "crypto": CRYPTO}).items():
        lines += [f"[shards.{name}]", f"symbols = {json.dumps(list(symbols))}"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in (shard_settings or {}).get(name, {}).items()]
    path = tmp_path / "shardctl.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHARDCTL, *args], capture_output=True, text=True, timeout=timeout)


class Supervisor:
    """``shardctl start CONFIG`` as a subprocess, its output in a log file."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config_path = config
        self.config = load_config(config)
        self.log_path = log_path
        self._log = open(log_path, "ab")
        env = {k: v for k, v in os.environ.items() if k != "SHARDCTL_DSN"}
        self.proc = subprocess.Popen([*SHARDCTL, "start", str(config)], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)
        self.client = ControlClient(self.config.supervisor.control_socket, config)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in self.client.request("status")["shards"]}

    def wait_states(self, want: dict[str, str] | str, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        def check() -> dict[str, dict[str, Any]] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited ({self.proc.returncode}):\n{self.log()}")
            try:
                shards = self.status()
            except ControlError:
                return None
            wanted = want if isinstance(want, dict) else {name: want for name in shards}
            return shards if all(shards[n]["state"] == st for n, st in wanted.items()) else None

        return wait_until(check, timeout, what=f"states {want}")

    def wait_rows(self, shard: str, more_than: int, timeout: float = 20.0) -> dict[str, Any]:
        return wait_until(lambda: (s := self.status()[shard])["rows_written"] > more_than and s, timeout,
                          what=f"{shard} rows_written > {more_than}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    with FeedServer(rate=100, symbols=STOCKS + CRYPTO, seed=7) as server:
        yield server


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for sup in started:
        sup.close()
        for child in _orphans(sup):
            child.kill()


def _orphans(sup: Supervisor) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "shardctl.worker" in cmdline and str(sup.config_path) in cmdline:
            found.append(proc)
    return found


def start(supervisors: list[Supervisor], tmp_path: Path, config: Path) -> Supervisor:
    sup = Supervisor(config, tmp_path / f"supervisor{len(supervisors)}.log")
    supervisors.append(sup)
    return sup


def db_rows(dsn: str, symbols: tuple[str, ...]) -> int:
    return query(dsn, "SELECT count(*) FROM crypto_ticks WHERE symbol = ANY(%s)", (list(symbols),))[0][0]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ tests

def test_status_without_a_supervisor_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path, "ws://127.0.0.1:9/v1/quotes/price", "dbname=unused")
    result = run_cli("status", str(config))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"shardctl: error: no supervisor is running for {config} (socket {tmp_path / 'state/run/control.sock'}); "
        f"start one with `shardctl start {config}`"]


def test_restart_one_shard_leaves_the_other_alone_and_loses_nothing(tmp_path, schema_dsn, feed, supervisors):
    sup = start(supervisors, tmp_path, write_config(tmp_path, feed.url, schema_dsn))
    before = sup.wait_states("RUNNING")
    sup.wait_rows("crypto", 50)
    stocks_rows = sup.wait_rows("stocks", 50)["rows_written"]

    result = run_cli("restart", str(sup.config_path), "crypto")
    assert result.returncode == 0, result.stderr
    after = sup.status()
    assert after["crypto"]["state"] == "RUNNING"
    assert after["crypto"]["pid"] != before["crypto"]["pid"]
    assert f"crypto: RUNNING (pid {after['crypto']['pid']}; was {before['crypto']['pid']})" in result.stdout
    assert after["stocks"]["pid"] == before["stocks"]["pid"] and after["stocks"]["restarts"] == 0
    assert after["crypto"]["restarts"] == 1
    sup.wait_rows("stocks", max(stocks_rows, after["stocks"]["rows_written"]))  # stocks kept flowing
    sup.wait_rows("crypto", after["crypto"]["rows_written"])                   # the new crypto worker writes

    # Stop crypto alone: its totals (both workers) are final; every tick it received is in the database.
    stopped = run_cli("stop", str(sup.config_path), "crypto")
    assert stopped.returncode == 0 and "crypto: STOPPED" in stopped.stdout
    crypto = sup.status()["crypto"]
    assert crypto["ticks_received"] == crypto["rows_written"] == db_rows(schema_dsn, CRYPTO) > 0
    assert sup.status()["stocks"]["state"] == "RUNNING"
    stored, sent = stored_ticks(schema_dsn), sent_ticks(feed.sent_events())
    assert not stored - sent, "the database holds ticks the feed never sent"


def test_killed_worker_backs_off_then_runs_again(tmp_path, schema_dsn, feed, supervisors) -> None:
    sup = start(supervisors, tmp_path, write_config(tmp_path, feed.url, schema_dsn))
    before = sup.wait_states("RUNNING")
    os.kill(before["crypto"]["pid"], signal.SIGKILL)
    after = wait_until(lambda: (s := sup.status())["crypto"]["state"] == "RUNNING"
                       and s["crypto"]["pid"] != before["crypto"]["pid"] and s, 20, what="crypto back")
    assert after["crypto"]["restarts"] == 1
    assert "[crypto] RUNNING -> BACKOFF: killed by SIGKILL; restarting in" in sup.log()
    assert after["stocks"]["pid"] == before["stocks"]["pid"]


def test_always_crashing_worker_goes_fatal_and_start_brings_it_back(tmp_path, schema_dsn, feed,
                                                                    supervisors) -> None:
    config = write_config(tmp_path, feed.url, schema_dsn, metrics_port=free_port())
    loaded = load_config(config)
    # Hold crypto's worker lock, as a stray worker would: every crypto worker exits 1 at once.
    lock_path = loaded.shard_dir("crypto") / "worker.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    holder = open(lock_path, "a+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        sup = start(supervisors, tmp_path, config)
        shards = sup.wait_states({"crypto": "FATAL", "stocks": "RUNNING"})
        assert "3 failures" in shards["crypto"]["reason"]
        assert shards["crypto"]["restarts"] == 2
        code, body = http_get(loaded.supervisor.metrics_port, "/healthz")
        assert code == 503 and body.startswith("crypto: FATAL")
        with pytest.raises(ControlError) as info:  # still locked: start reports why it did not come up
            sup.client.request("start", "crypto", timeout=30)
        assert info.value.code == "not_running" and "FATAL" in str(info.value)
    finally:
        holder.close()
    result = run_cli("shard", "start", str(config), "crypto")
    assert result.returncode == 0, result.stderr
    assert sup.status()["crypto"]["state"] == "RUNNING"
    assert http_get(loaded.supervisor.metrics_port, "/healthz") == (200, "ok\n")


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_match_the_database_and_bad_requests_do_no_harm(tmp_path, schema_dsn, feed, supervisors) -> None:
    port = free_port()
    sup = start(supervisors, tmp_path, write_config(tmp_path, feed.url, schema_dsn, metrics_port=port))
    sup.wait_states("RUNNING")
    sup.wait_rows("stocks", 30)

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(sup.config.supervisor.control_socket))
        sock.sendall(b'{"cmd": "status"\n{"cmd": "self-destruct"}\n{"cmd": "restart", "shard": "nope"}\n'
                     b'[]\n{"cmd": "stop"}\n')
        sock.shutdown(socket.SHUT_WR)
        answers = [json.loads(line) for line in sock.makefile("rb").read().splitlines()]
    assert [a["code"] for a in answers] == ["bad_request", "unknown_command", "no_such_shard", "bad_request",
                                            "bad_request"]
    assert all(a["ok"] is False and "\n" not in a["error"] for a in answers)

    for name in ("stocks", "crypto"):  # stop both: counters final, then compare with the database
        assert sup.client.request("stop", name)["shard"]["state"] == "STOPPED"
    code, text = http_get(port, "/metrics")
    assert code == 200
    samples = {(s.name, s.labels.get("shard"), s.labels.get("state")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    for name, symbols in (("stocks", STOCKS), ("crypto", CRYPTO)):
        rows = db_rows(schema_dsn, symbols)
        assert rows > 0
        assert samples[("shardctl_rows_written_total", name, None)] == rows
        assert samples[("shardctl_ticks_received_total", name, None)] == rows
        assert samples[("shardctl_batch_seconds_count", name, None)] >= 1
        assert samples[("shardctl_dead_letters_dropped_total", name, None)] == 0
        assert samples[("shardctl_shard_state", name, "STOPPED")] == 1
    assert http_get(port, "/healthz") == (200, "ok\n")  # stopped by the operator is not unhealthy
    assert sup.proc.poll() is None


@pytest.mark.parametrize("how", ["cli", "sigterm"])
def test_stop_flushes_every_worker_and_cleans_up(tmp_path, schema_dsn, feed, supervisors, how: str) -> None:
    sup = start(supervisors, tmp_path, write_config(tmp_path, feed.url, schema_dsn))
    pids = [s["pid"] for s in sup.wait_states("RUNNING").values()]
    sup.wait_rows("crypto", 20)
    sup_conf = sup.config.supervisor
    assert sup_conf.pidfile.read_text().strip() == str(sup.proc.pid)
    if how == "cli":
        result = run_cli("stop", str(sup.config_path))
        assert result.returncode == 0, result.stderr
        summary = result.stdout
        assert "2 shard(s) stopped cleanly" in summary
    else:
        sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(30) == 0
    if how == "sigterm":
        summary = sup.log()
        assert "supervisor stopped cleanly" in summary
    ticks, rows = parse_totals(summary)
    assert ticks == rows == db_rows(schema_dsn, STOCKS + CRYPTO) > 0
    assert all(gone(pid) for pid in pids)
    assert not sup_conf.pidfile.exists() and not sup_conf.control_socket.exists()


def parse_totals(text: str) -> tuple[int, int]:
    import re

    match = re.findall(r"(\d+) tick\(s\) received, (\d+) row\(s\) written\s*$", text, re.MULTILINE)
    assert match, text
    return int(match[-1][0]), int(match[-1][1])


def test_supervisor_sigkill_workers_flush_and_exit_then_a_new_one_starts(tmp_path, schema_dsn, feed,
                                                                         supervisors) -> None:
    config = write_config(tmp_path, feed.url, schema_dsn)
    sup = start(supervisors, tmp_path, config)
    shards = sup.wait_states("RUNNING")
    received = sup.wait_rows("stocks", 20)["ticks_received"]
    sup.proc.kill()
    sup.proc.wait(10)
    for shard in shards.values():
        wait_until(lambda: gone(shard["pid"]), 20, what=f"worker {shard['pid']} to exit by itself")
    assert db_rows(schema_dsn, STOCKS) >= received
    assert not stored_ticks(schema_dsn) - sent_ticks(feed.sent_events())
    # The pidfile and socket are stale now; a new supervisor takes over.
    second = start(supervisors, tmp_path, config)
    second.wait_states("RUNNING")
    again = run_cli("start", str(config), timeout=30)  # a third one is refused: the second is alive
    assert again.returncode == 1 and "already running" in again.stderr


def test_sighup_reload_restarts_changed_shards_only(tmp_path, schema_dsn, feed, supervisors) -> None:
    config = write_config(tmp_path, feed.url, schema_dsn)
    sup = start(supervisors, tmp_path, config)
    before = sup.wait_states("RUNNING")
    write_config(tmp_path, feed.url, schema_dsn, shards={"stocks": STOCKS, "crypto": ("BTC/USD",),
                                                        "forex": ("EUR/USD",)},
                 shard_settings={"crypto": {"batch_size": 20}})  # more than its symbols: a restart
    sup.proc.send_signal(signal.SIGHUP)
    after = wait_until(lambda: (s := sup.status()).get("forex", {}).get("state") == "RUNNING"
                       and s["crypto"]["state"] == "RUNNING" and s["crypto"]["pid"] != before["crypto"]["pid"]
                       and s, 30, what="reload applied")
    assert after["stocks"]["pid"] == before["stocks"]["pid"]


def test_stuck_worker_loses_heartbeat_is_killed_and_replaced(tmp_path, schema_dsn, feed, supervisors) -> None:
    sup = start(supervisors, tmp_path, write_config(tmp_path, feed.url, schema_dsn, heartbeat_timeout="1500ms",
                                                    stop_timeout="1s"))
    before = sup.wait_states("RUNNING")
    os.kill(before["crypto"]["pid"], signal.SIGSTOP)  # frozen: no heartbeats, deaf to SIGTERM
    after = wait_until(lambda: (s := sup.status())["crypto"]["state"] == "RUNNING"
                       and s["crypto"]["pid"] != before["crypto"]["pid"] and s, 30, what="crypto replaced")
    log = sup.log()
    assert "[crypto] RUNNING -> STOPPING" in log and "no heartbeat for" in log
    assert "did not stop within the deadline; killing it (SIGKILL)" in log
    assert "[crypto] STOPPING -> BACKOFF: heartbeats stopped" in log
    assert gone(before["crypto"]["pid"]) and after["stocks"]["pid"] == before["stocks"]["pid"]


def test_second_signal_kills_stragglers_at_once(tmp_path, schema_dsn, feed, supervisors) -> None:
    sup = start(supervisors, tmp_path, write_config(tmp_path, feed.url, schema_dsn, stop_timeout="60s",
                                                    heartbeat_timeout="60s"))
    shards = sup.wait_states("RUNNING")
    os.kill(shards["crypto"]["pid"], signal.SIGSTOP)  # will not stop on SIGTERM
    sup.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "[stocks] STOPPING -> STOPPED" in sup.log(), 20, what="stocks stopped")
    sup.proc.send_signal(signal.SIGINT)  # a second signal: do not wait the 60 s
    assert sup.proc.wait(20) == 1        # not clean: one worker had to be killed
    log = sup.log()
    assert "again: stopping stragglers now" in log
    assert "ERROR   [crypto] worker (pid" in log and "killing it (SIGKILL)" in log
    assert gone(shards["crypto"]["pid"])
    assert not sup.config.supervisor.pidfile.exists()


def test_concurrent_commands_on_one_shard_are_busy_and_status_prints_a_table(tmp_path, schema_dsn, feed,
                                                                             supervisors) -> None:
    import threading

    sup = start(supervisors, tmp_path, write_config(tmp_path, feed.url, schema_dsn))
    sup.wait_states("RUNNING")
    outcomes: list[str] = []

    def restart() -> None:
        try:
            sup.client.request("restart", "crypto", timeout=30)
            outcomes.append("ok")
        except ControlError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=restart) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert sorted(outcomes) == ["busy", "busy", "ok"]
    assert sup.status()["crypto"]["restarts"] == 1
    with pytest.raises(ControlError) as info:
        sup.client.request("start", "stocks")
    assert info.value.code == "already_running"
    table = run_cli("status", str(sup.config_path))
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["SHARD", "STATE", "PID", "UPTIME"] and "LAST ERROR" in header
    assert "DEAD LETTERS" in header
    assert sorted(r.split()[:2] for r in rows) == [["crypto", "RUNNING"], ["stocks", "RUNNING"]]
    one = json.loads(run_cli("status", str(sup.config_path), "stocks", "--json").stdout)
    assert [s["name"] for s in one["shards"]] == ["stocks"]
    assert one["shards"][0]["dead_letters_dropped"] == 0


def test_startup_failures_are_one_line_and_leave_nothing_behind(tmp_path, schema_dsn) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, "ws://127.0.0.1:9/v1/quotes/price", schema_dsn, metrics_port=port)
        result = run_cli("start", str(config))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"shardctl: error: metrics port 127.0.0.1:{port} is already in use; choose another "
        "supervisor.metrics_port (0 turns metrics off)")
    refused = write_config(tmp_path, "ws://127.0.0.1:9/v1/quotes/price", "postgresql://127.0.0.1:1/none")
    result = run_cli("start", str(refused))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("shardctl: error: ")
    supervisor = load_config(refused).supervisor
    assert not supervisor.pidfile.exists() and not supervisor.control_socket.exists()


def test_single_shard_mode_runs_the_worker_in_the_foreground(tmp_path, schema_dsn, feed) -> None:
    config = write_config(tmp_path, feed.url, schema_dsn)
    log_path = tmp_path / "single.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*SHARDCTL, "start", str(config), "--shard", "crypto"], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: db_rows(schema_dsn, CRYPTO) >= 20, 30, what="crypto rows")
        assert psutil.Process(proc.pid).cmdline()[1:3] == ["-m", "shardctl.worker"]  # exec'd: same pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert db_rows(schema_dsn, STOCKS) == 0
    assert not load_config(config).supervisor.control_socket.exists()


def test_feed_section_runs_the_local_feed_as_a_child(tmp_path, schema_dsn, supervisors) -> None:
    port = free_port()
    config = write_config(tmp_path, f"ws://127.0.0.1:{port}/v1/quotes/price", schema_dsn)
    config.write_text(config.read_text() + f"[feed]\nport = {port}\nrate = 200\n")
    sup = start(supervisors, tmp_path, config)
    sup.wait_states("RUNNING")
    sup.wait_rows("stocks", 10)
    sup.wait_rows("crypto", 10)
    feed_pid = sup.client.request("status")["supervisor"]["feed_pid"]
    assert feed_pid and psutil.Process(feed_pid).cmdline()[1:4] == ["-m", "shardctl", "--log-format"]
    result = run_cli("stop", str(config))
    assert result.returncode == 0, result.stderr
    assert sup.proc.wait(20) == 0
    ticks, rows = parse_totals(result.stdout)
    assert ticks == rows == db_rows(schema_dsn, STOCKS + CRYPTO)
    assert gone(feed_pid)


def test_maintenance_pass_refreshes_candles(tmp_path, schema_dsn, flavour) -> None:
    import psycopg2

    from shardctl.config.model import TablesConfig

    with psycopg2.connect(schema_dsn) as conn, conn.cursor() as cur:  # commits on leaving the block
        cur.execute("INSERT INTO crypto_ticks (time, symbol, price, day_volume) "
                    "VALUES (now(), 'BTC/USD', 10, 1), (now(), 'BTC/USD', 12, 2)")
    conn.close()
    config = write_config(tmp_path, "ws://127.0.0.1:9/v1/quotes/price", schema_dsn)
    # Today's bucket is still open: only real-time candles show it before the day ends.
    config.write_text(config.read_text() + "\n[tables]\nrealtime_candles = true\n")
    if flavour == "timescaledb":  # as the supervisor does at start: real-time aggregates (materialized_only off)
        with_schema(schema_dsn, TablesConfig(realtime_candles=True))
    result = subprocess.run([sys.executable, "-m", "shardctl.supervisor.sidecars", "maintain", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "maintenance:" in result.stderr
    assert query(schema_dsn, "SELECT symbol, high, low FROM one_day_candle") == [("BTC/USD", 12, 10)]


def test_reload_changes_symbols_on_the_open_connection(tmp_path, schema_dsn, feed, supervisors) -> None:
    """An added symbol streams and a removed one stops, with no restart, no reconnect and no gap."""
    config = write_config(tmp_path, feed.url, schema_dsn, shards={"stocks": STOCKS, "crypto": ("BTC/USD",)})
    sup = start(supervisors, tmp_path, config)
    before = sup.wait_states("RUNNING")
    wait_until(lambda: db_rows(schema_dsn, ("BTC/USD",)) > 0, 20, what="BTC/USD rows")
    connections = len(feed.stats().per_connection)

    write_config(tmp_path, feed.url, schema_dsn, shards={"stocks": STOCKS, "crypto": (*CRYPTO, "NOPE/XYZ")})
    reloaded_at = time.monotonic()
    added = run_cli("reload", str(config))
    assert added.returncode == 0 and "re-subscribed ['crypto']" in added.stdout, added.stdout + added.stderr
    wait_until(lambda: db_rows(schema_dsn, ("ETH/USD",)) > 0, 20, what="the added symbol's rows")
    print(f"\nlive symbol change: the added symbol's first row committed {time.monotonic() - reloaded_at:.2f}s "
          "after `shardctl reload` (flush_interval 200ms)")
    # The server refuses a symbol it does not know ("fails"): logged once, shown, the others unaffected.
    refused = wait_until(lambda: (s := sup.status()["crypto"])["failed_symbols"] and s, 20, what="the refusal")
    assert refused["failed_symbols"] == ["NOPE/XYZ"] and refused["pid"] == before["crypto"]["pid"]
    assert sup.log().count("Twelve Data refused symbol NOPE/XYZ") == 1
    eth = db_rows(schema_dsn, ("ETH/USD",))
    wait_until(lambda: db_rows(schema_dsn, ("ETH/USD",)) > eth, 20, what="ETH/USD still streaming")

    write_config(tmp_path, feed.url, schema_dsn, shards={"stocks": STOCKS, "crypto": ("ETH/USD",)})
    removed = run_cli("reload", str(config))
    assert removed.returncode == 0 and "re-subscribed ['crypto']" in removed.stdout
    wait_until(lambda: "unsubscribed from 1 symbol(s)" in sup.log(), 20, what="the server's unsubscribe answer")
    assert sup.status()["crypto"]["failed_symbols"] == [], "a removed symbol is no longer a refused one"
    eth = db_rows(schema_dsn, ("ETH/USD",))
    wait_until(lambda: db_rows(schema_dsn, ("ETH/USD",)) > eth + 20, 20, what="ETH/USD rows after it")
    btc = db_rows(schema_dsn, ("BTC/USD",))  # every BTC/USD tick the server sent is committed by now
    wait_until(lambda: db_rows(schema_dsn, ("ETH/USD",)) > eth + 60, 20, what="more ETH/USD rows")
    assert db_rows(schema_dsn, ("BTC/USD",)) == btc, "the removed symbol stopped"

    after = sup.status()
    assert after["crypto"]["pid"] == before["crypto"]["pid"] and after["crypto"]["restarts"] == 0
    assert after["crypto"]["symbols"] == 1 and after["crypto"]["reconnects"] == 0
    assert len(feed.stats().per_connection) == connections, "no new connection"
    assert query(schema_dsn, "SELECT count(*) FROM shardctl_gaps WHERE shard = 'crypto'")[0][0] == 0
