"""Everyday lifecycle actions lose nothing (issue 17): graceful restarts, reload restarts, an operator's stop and
start of one shard, a supervisor killed with -9 and started again at once while its orphaned workers are still
stopping.

Each worker says goodbye on its websocket (unsubscribe, close frame) and reads what the feed sent before
the feed's answering close: every tick the feed wrote on a connection that a graceful stop closed must be
in the database, tick by tick against the feed's sent log (``faultkit.tally``). The stretches without an
open socket are recorded gaps (one "worker down" per start). Prints one line per scenario, with the
drain's cost in stop time, measured from the workers' own log lines.
"""

from __future__ import annotations

import re
import statistics
import time
from typing import Any

import pytest
from faultkit import CRYPTO, STOCKS, SupervisorRun, TimedFeed, gap_rows, stored_keys, tally
from support import settle, wait_until, write_config

pytestmark = pytest.mark.slow

RESTARTS = 8
RELOADS = 2
SHARDS = {"stocks": STOCKS, "crypto": CRYPTO}
SHARD_OF = {s: name for name, syms in SHARDS.items() for s in syms}.__getitem__
ENV = {"FAULTS_KEY_STOCKS": "key-stocks", "FAULTS_KEY_CRYPTO": "key-crypto"}
DRAIN_LINE = re.compile(r"said goodbye on the websocket: (the server closed|no close from the server[^:]*) "
                        r"in ([0-9.]+)s, (\d+) byte")


def config_for(tmp_path: Any, feed: TimedFeed, dsn: str, crypto_batch: int) -> Any:
    shards = {name: {"symbols": syms, "api_key_env": f"FAULTS_KEY_{name.upper()}"} for name, syms in SHARDS.items()}
    shards["crypto"]["batch_size"] = crypto_batch  # a settings change: reload restarts the shard
    return write_config(tmp_path, feed.url, dsn, shards, defaults={"batch_size": 1000, "flush_interval": "1s"},
                        supervisor={"max_failures": 1000, "failure_window": "60s"})


def new_pid(sup: SupervisorRun, name: str, old: int | None) -> int:
    shard = wait_until(lambda: (s := sup.try_status()) and s[name]["state"] == "RUNNING"
                       and s[name]["pid"] not in (None, old) and s[name], 40, interval=0.05,
                       what=f"a new {name} worker RUNNING")
    return int(shard["pid"])


def test_restarts_reloads_and_a_killed_supervisor_lose_no_tick_sent_before_the_socket_closed(
        tmp_path, schema_dsn) -> None:
    started = time.monotonic()
    runs: list[SupervisorRun] = []
    try:
        with TimedFeed(rate=500, symbols=STOCKS + CRYPTO, seed=171) as feed:
            config = config_for(tmp_path, feed, schema_dsn, 1000)
            sup = SupervisorRun(config, tmp_path / "supervisor.log", env=ENV)
            runs.append(sup)
            sup.wait_running(SHARDS, rows=1)
            pid = int(sup.status()["crypto"]["pid"])
            restart_seconds = []
            for _ in range(RESTARTS):  # graceful restarts of one shard while the other streams
                t0 = time.monotonic()
                sup.client.request("restart", "crypto", timeout=40)
                pid = new_pid(sup, "crypto", pid)
                restart_seconds.append(time.monotonic() - t0)
                time.sleep(0.3)
            for i in range(RELOADS):  # a settings change: reload restarts the shard
                config_for(tmp_path, feed, schema_dsn, 500 + i)
                answer = sup.client.request("reload", timeout=40)
                assert answer.get("restarted") == ["crypto"], answer
                pid = new_pid(sup, "crypto", pid)
                time.sleep(0.3)
            # an operator's stop of one shard, and its start a little later: a stretch on purpose, a gap
            sup.client.request("stop", "crypto", timeout=40)
            wait_until(lambda: sup.status()["crypto"]["state"] == "STOPPED", 40, what="crypto STOPPED")
            time.sleep(0.5)
            sup.client.request("start", "crypto", timeout=40)
            pid = new_pid(sup, "crypto", pid)
            time.sleep(0.3)
            # kill -9 of the supervisor and an immediate new start: the orphans are still stopping
            orphans = {name: int(s["pid"]) for name, s in sup.status().items()}
            sup.proc.kill()
            sup.proc.wait(10)
            again = SupervisorRun(config, tmp_path / "supervisor2.log", env=ENV)
            runs.append(again)
            for name, old in orphans.items():
                new_pid(again, name, old)
            again.wait_running(SHARDS, timeout=60)
            time.sleep(0.5)
            feed.inject("silence", standing=True, seconds=600)

            def current() -> Any:
                return tally("graceful", feed.sent_ticks(), stored_keys(schema_dsn), gap_rows(schema_dsn), SHARD_OF,
                             open_conns=feed.connection_ids())

            settle(lambda: current().open_missing == 0, 30)
            assert again.stop() == 0, again.log()[-3000:]
            result = current()
            gaps = gap_rows(schema_dsn)
    finally:
        for run in runs:
            run.close()
    logs = "".join(run.log() for run in runs)
    drains = [(kind, float(sec), int(nbytes)) for kind, sec, nbytes in DRAIN_LINE.findall(logs)]
    drain_ms = sorted(sec * 1000 for _, sec, _ in drains)
    result.extra.update(
        restarts=RESTARTS, reloads=RELOADS, stops=1, supervisor_kills=1, drains=len(drains),
        drain_ms_median=f"{statistics.median(drain_ms):.1f}" if drain_ms else "-",
        drain_ms_max=f"{max(drain_ms):.1f}" if drain_ms else "-",
        restart_s_median=f"{statistics.median(restart_seconds):.2f}",
        down_gaps=sum(1 for g in gaps.get("crypto", ()) if g[2] == "worker down"),
        runtime=f"{time.monotonic() - started:.1f}s")
    print("\n" + result.line(), flush=True)
    message = result.details() + "\n" + logs[-3000:]
    assert result.duplicated == 0, message
    assert result.lost_outside == 0, message
    # Every connection was closed by a graceful stop (restart, reload, an orphan's own stop, the final stop):
    # nothing the feed sent on one may be missing.
    assert result.lost_in_gaps == 0 and result.open_missing == 0, message
    assert all(kind == "the server closed" for kind, _, _ in drains), message
    # restarts + reloads + the operator's stop + the orphan's stop + the final stop, each of crypto; stocks twice
    assert len(drains) >= RESTARTS + RELOADS + 3 + 2, message
    # every start after the first knows when its predecessor last read, even with its journal reclaimed
    assert result.extra["down_gaps"] >= RESTARTS + RELOADS + 2, message
