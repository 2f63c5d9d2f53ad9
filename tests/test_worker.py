"""One worker process against the local feed and the real database, over real sockets."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import pytest
import support
from support import (
    WorkerProcess,
    query,
    row_count,
    sent_ticks,
    stored_ticks,
    wait_until,
)
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from shardctl.feed.server import FeedServer

#: real worker processes against the local feed: seconds each; `pytest -m "not slow"` leaves them out of the quick loop.
pytestmark = pytest.mark.slow

SYMBOLS = ("AAPL", "BTC/USD", "EUR/USD")


def write_config(tmp_path: Path, url: str, dsn: str, *, symbols: tuple[str, ...] = SYMBOLS,
                 key_env: str = "SHARDCTL_TEST_KEY", **settings: object) -> Path:
    """A one-shard (``s1``) config for a worker run alone."""
    return support.write_config(tmp_path, url, dsn, {"s1": {"symbols": symbols, "api_key_env": key_env}},
                                defaults={"batch_size": 100, "watchdog_timeout": "5s", **settings},
                                with_supervisor=False)


def start_worker(workers: list[WorkerProcess], tmp_path: Path, config: Path, **kw: object) -> WorkerProcess:
    worker = WorkerProcess(config, "s1", tmp_path / f"worker{len(workers)}.log", **kw)  # type: ignore[arg-type]
    workers.append(worker)
    return worker


def test_n_ticks_at_a_steady_rate_become_exactly_n_rows(tmp_path, schema_dsn, workers) -> None:
    with FeedServer(rate=400, count=600, symbols=SYMBOLS, seed=1) as feed:
        worker = start_worker(workers, tmp_path, write_config(tmp_path, feed.url, schema_dsn))
        feed.wait_sent(600, timeout=30)
        wait_until(lambda: row_count(schema_dsn) >= 600, what="600 rows")
        assert worker.terminate() == 0
        sent = sent_ticks(feed.sent_events())
    assert sum(sent.values()) == 600
    assert "not in the database yet" not in worker.log(), "trailing heartbeats are committed too: no backlog"
    assert stored_ticks(schema_dsn) == sent
    assert {s for s, _, _ in sent} == set(SYMBOLS)


def test_slow_feed_rows_appear_within_flush_interval(tmp_path, schema_dsn, workers) -> None:
    with FeedServer(rate=4, symbols=SYMBOLS, seed=2) as feed:
        start_worker(workers, tmp_path, write_config(tmp_path, feed.url, schema_dsn, batch_size=1000,
                                                     flush_interval="500ms"))
        feed.wait_sent(1, timeout=30)
        first_sent = time.monotonic()
        wait_until(lambda: row_count(schema_dsn) >= 1, timeout=10, what="the first row")
        waited = time.monotonic() - first_sent
        assert row_count(schema_dsn) < 1000, "rows were flushed by age, not by a full batch"
    # flush_interval 0.5 s plus generous slack for a loaded CI machine
    assert waited < 3.0


def test_sigterm_mid_stream_commits_every_received_tick(tmp_path, schema_dsn, workers) -> None:
    with FeedServer(rate=3000, symbols=SYMBOLS, seed=3) as feed:
        worker = start_worker(workers, tmp_path, write_config(tmp_path, feed.url, schema_dsn, batch_size=5000,
                                                              flush_interval="10s"))
        feed.wait_sent(2000, timeout=30)
        assert row_count(schema_dsn) == 0, "nothing flushed yet: batch not full, flush_interval not reached"
        assert worker.terminate() == 0
        sent = sent_ticks(feed.sent_events())
    log = worker.log()
    received = int(__import__("re").search(r"stopped: (\d+) tick\(s\) received, (\d+) row", log).group(1))
    stored = stored_ticks(schema_dsn)
    assert received >= 2000
    assert sum(stored.values()) == received
    assert not stored - sent, "every stored tick was sent by the feed"
    assert max(stored.values()) == 1 or stored <= sent


@pytest.mark.parametrize("fault", ["close", "abort", "garbage"])
def test_worker_reconnects_after_faults_and_keeps_writing(tmp_path, schema_dsn, workers, fault) -> None:
    with FeedServer(rate=200, symbols=SYMBOLS, seed=4) as feed:
        worker = start_worker(workers, tmp_path, write_config(tmp_path, feed.url, schema_dsn))
        wait_until(lambda: row_count(schema_dsn) >= 50, what="rows before the fault")
        feed.inject(fault)
        if fault == "garbage":
            deadletters = tmp_path / "state" / "shards" / "s1" / "deadletters.jsonl"
            # the file is created before its first line is written: wait for a whole line
            wait_until(lambda: deadletters.exists() and b"\n" in deadletters.read_bytes(),
                       what="the first dead letter")
            entry = json.loads(deadletters.read_text().splitlines()[0])
            assert "not JSON" in entry["reason"] and entry["frame"]
        else:
            worker.wait_log(r"subscribing 3 symbol", count=2)
        before = row_count(schema_dsn)
        wait_until(lambda: row_count(schema_dsn) >= before + 100, what="rows after the fault")
        log_while_streaming = worker.log()
        feed.stop()  # no tick in flight when the worker stops: what was sent can all be read
        sent = sent_ticks(feed.sent_events())
        if fault != "abort":
            wait_until(lambda: row_count(schema_dsn) >= sum(sent.values()), what="every sent tick stored")
        assert worker.terminate() == 0
    stored = stored_ticks(schema_dsn)
    assert not stored - sent, "no row that the feed did not send"
    assert max(stored.values()) == max(sent.values()) or all(stored[k] <= sent[k] for k in stored)
    if fault != "abort":
        # nothing in flight can be lost on a clean close or a garbage frame
        assert stored == sent
    if fault == "garbage":
        assert "reconnecting" not in log_while_streaming, "a garbage frame must not drop the connection"
        shown = subprocess.run([sys.executable, "-m", "shardctl", "deadletters", str(tmp_path / "shardctl.toml")],
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        assert "s1: 1 dead letter(s)" in shown.stdout
        assert "not JSON" in shown.stdout and "garbage" in shown.stdout


def test_silent_feed_trips_the_watchdog(tmp_path, schema_dsn, workers) -> None:
    with FeedServer(rate=100, symbols=SYMBOLS, seed=5) as feed:
        worker = start_worker(workers, tmp_path, write_config(tmp_path, feed.url, schema_dsn,
                                                              watchdog_timeout="1s", heartbeat_interval="5s"))
        wait_until(lambda: row_count(schema_dsn) >= 20, what="rows before the silence")
        feed.inject("silence", seconds=30)
        worker.wait_log(r"watchdog")
        worker.wait_log(r"subscribing 3 symbol", count=2)
        feed.clear("silence")
        before = row_count(schema_dsn)
        wait_until(lambda: row_count(schema_dsn) >= before + 50, what="rows after the reconnect")
        assert worker.terminate() == 0


def test_bad_key_is_reported_once_and_does_not_spin(tmp_path, schema_dsn, workers) -> None:
    with FeedServer(rate=10, symbols=SYMBOLS, api_key="the-right-key") as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, bad_key_backoff="300ms")
        worker = start_worker(workers, tmp_path, config, env={"SHARDCTL_TEST_KEY": "a-wrong-key-1234"})
        wait_until(lambda: feed.stats().rejected >= 3, what="three refused handshakes")
        refused = feed.stats().rejected
        wait_until(lambda: feed.stats().rejected >= refused + 1, interval=0.01, what="the next attempt")
        started = time.monotonic()
        wait_until(lambda: feed.stats().rejected >= refused + 3, interval=0.01, what="two more attempts")
        spacing = (time.monotonic() - started) / 2
        log = worker.log()
        assert worker.terminate() == 0
    assert log.count("refused the API key") == 1
    assert "a-wrong-key-1234" not in log
    assert spacing >= 0.2, "attempts are spaced by bad_key_backoff, not a busy loop"
    assert row_count(schema_dsn) == 0


def test_unknown_symbol_is_logged_and_others_keep_streaming(tmp_path, schema_dsn, workers) -> None:
    with FeedServer(rate=100, symbols=SYMBOLS) as feed:
        worker = start_worker(workers, tmp_path, write_config(tmp_path, feed.url, schema_dsn,
                                                              symbols=("AAPL", "NOSUCH")))
        worker.wait_log(r"refused symbol NOSUCH")
        wait_until(lambda: row_count(schema_dsn) >= 30, what="AAPL rows")
        assert worker.terminate() == 0
    assert {s for s, _, _ in stored_ticks(schema_dsn)} == {"AAPL"}


def test_worker_stops_by_itself_when_its_parent_dies(tmp_path, schema_dsn) -> None:
    with FeedServer(rate=200, symbols=SYMBOLS) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, batch_size=100000, flush_interval="1m")
        log = tmp_path / "orphan.log"
        parent = subprocess.Popen([sys.executable, "-c", (
            "import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-m', 'shardctl.worker', '--config', {str(config)!r},"
            f" '--shard', 's1'], stdout=open({str(log)!r}, 'wb'), stderr=subprocess.STDOUT)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(600)\n")], stdout=subprocess.PIPE)
        try:
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
            wait_until(lambda: "subscribed to" in log.read_text(), what="the worker to subscribe")
            feed.wait_sent(100, timeout=20)
            parent.send_signal(signal.SIGKILL)
            parent.wait()
            wait_until(lambda: "stopped:" in log.read_text(), what="the orphaned worker to stop")
            wait_until(lambda: not Path(f"/proc/{child}").exists()
                       or "zombie" in Path(f"/proc/{child}/status").read_text(), what="the worker to exit")
        finally:
            if parent.poll() is None:
                parent.kill()
    text = log.read_text()
    assert "parent process went away" in text
    received = int(__import__("re").search(r"stopped: (\d+) tick", text).group(1))
    assert received >= 100 and row_count(schema_dsn) == received


def test_a_second_worker_of_one_shard_on_another_host_is_refused(tmp_path, schema_dsn, workers) -> None:
    with FeedServer(rate=50, symbols=SYMBOLS) as feed:
        first = start_worker(workers, tmp_path, write_config(tmp_path, feed.url, schema_dsn))
        first.wait_log(r"subscribed to")
        other_host = tmp_path / "other-host"
        other_host.mkdir()
        second = start_worker(workers, other_host, write_config(other_host, feed.url, schema_dsn))
        assert second.proc.wait(30) == 1
        assert "already being written to this database by another worker" in second.log()
        assert first.proc.poll() is None, "the first worker keeps streaming"
        before = row_count(schema_dsn)
        wait_until(lambda: row_count(schema_dsn) > before, what="the first worker's rows")
        assert first.terminate() == 0


# ---------------------------------------------------------------- frames Twelve Data never sends


@dataclass(frozen=True)
class TextBytes:
    """A text frame carrying exactly these bytes (which need not be valid UTF-8)."""

    data: bytes


#: str → one text frame, bytes → one binary frame, TextBytes → one text frame of raw bytes,
#: list → one message fragmented into a frame per item (str items: text, bytes items: binary).
ScriptItem = Union[str, bytes, TextBytes, list]


class ScriptedFeed:
    """A websockets server on 127.0.0.1 with just enough of the Twelve Data protocol.

    It confirms every subscribe, sends ``script`` once (on the first connection,
    right after the first subscribe-status) and answers heartbeats.
    """

    def __init__(self, script: list[ScriptItem]) -> None:
        self.script = script
        self.url = ""
        self.connections = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> ScriptedFeed:
        self._thread.start()
        assert self._ready.wait(10), "the scripted feed did not start listening"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
            self.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/quotes/price"
            self._ready.set()
            await self._stop.wait()

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        script = self.script if self.connections == 1 else []
        try:
            async for message in ws:
                action = json.loads(message).get("action")
                if action == "heartbeat":
                    await ws.send(json.dumps({"event": "heartbeat", "status": "ok"}))
                elif action == "subscribe":
                    symbols = json.loads(message)["params"]["symbols"].split(",")
                    await ws.send(json.dumps({"event": "subscribe-status", "status": "ok",
                                              "success": [{"symbol": s} for s in symbols], "fails": []}))
                    for item in script:
                        if isinstance(item, TextBytes):
                            await ws.send(item.data, text=True)
                        else:
                            await ws.send(item)
                    script = []
        except ConnectionClosed:
            pass  # a killed worker, or the server stopping under a running one


def price(symbol: str, ts: int, value: float) -> str:
    return json.dumps({"event": "price", "symbol": symbol, "timestamp": ts, "price": value})


def script_with_frames_twelve_data_never_sends() -> tuple[list[ScriptItem], Counter, str]:
    """(script, the ticks that must become rows, the sentinel's price JSON): good text ticks among binary
    frames holding valid price JSON, a fragmented binary message, a text frame that is not UTF-8."""
    script: list[ScriptItem] = []
    good: Counter = Counter()
    for i in range(30):
        symbol, ts = SYMBOLS[i % 3], 1700000000 + i
        script.append(price(symbol, ts, 100.0 + i))
        good[(symbol, ts, 100.0 + i)] += 1
        if i % 10 == 5:
            script.append(price(symbol, ts, 9000.0 + i).encode())  # binary: never a row
    fragmented = price("AAPL", 1700000100, 555.5)
    script.append([fragmented[:20], fragmented[20:]])              # fragmented text: a row
    good[("AAPL", 1700000100, 555.5)] += 1
    binary = price("AAPL", 1700000101, 9999.0).encode()
    script.append([binary[:20], binary[20:]])                      # fragmented binary: never a row
    script.append(TextBytes(price("AAPL", 1700000102, 9998.0).encode().replace(b"AAPL", b"AA\xffPL")))  # not UTF-8
    sentinel = price("EUR/USD", 1700000200, 1.25)
    script.append(sentinel)
    good[("EUR/USD", 1700000200, 1.25)] += 1
    return script, good, sentinel


def dead_letters(tmp_path: Path) -> list[dict]:
    path = tmp_path / "state" / "shards" / "s1" / "deadletters.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sentinel_stored(dsn: str) -> bool:
    return bool(query(dsn, "SELECT 1 FROM crypto_ticks WHERE symbol = 'EUR/USD' AND price = 1.25"))


def test_binary_and_non_utf8_frames_are_dead_letters_never_rows(tmp_path, schema_dsn, workers) -> None:
    script, good, _ = script_with_frames_twelve_data_never_sends()
    with ScriptedFeed(script) as feed:
        worker = start_worker(workers, tmp_path, write_config(tmp_path, feed.url, schema_dsn,
                                                              heartbeat_interval="1s"))
        pid = worker.pid
        # Rows commit in frame order, so once the last frame's row is in, every frame was processed.
        wait_until(lambda: sentinel_stored(schema_dsn), what="the last tick's row")
        assert stored_ticks(schema_dsn) == good, "every text tick is a row, no binary or non-UTF-8 one is"
        letters = dead_letters(tmp_path)
        assert worker.proc.poll() is None and worker.pid == pid, "the worker stays alive"
        assert feed.connections == 1
        assert worker.terminate() == 0
    reasons = [entry["reason"] for entry in letters]
    assert reasons[:4] == ["binary websocket frame (opcode 2), Twelve Data sends text"] * 4
    assert letters[0]["frame"] == price("EUR/USD", 1700000005, 9005.0), "the payload as sent, without the mark"
    assert '"price": 9999.0' in letters[3]["frame"], "a fragmented binary message is one dead letter"
    assert len(letters) == 5 and "not valid UTF-8" in reasons[4]
    assert "reconnecting" not in worker.log(), "a binary frame does not drop the connection"


def test_binary_frames_replayed_from_the_journal_are_still_dead_letters(tmp_path, schema_dsn, workers) -> None:
    script, good, sentinel = script_with_frames_twelve_data_never_sends()
    with ScriptedFeed(script) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, heartbeat_interval="1s",
                              batch_size=100000, flush_interval="1m")
        first = start_worker(workers, tmp_path, config)
        journal = tmp_path / "state" / "shards" / "s1" / "journal"
        wait_until(lambda: any(sentinel.encode() in seg.read_bytes() for seg in journal.glob("*.seg")),
                   what="the last frame in the journal")
        first.proc.kill()  # nothing committed: every frame is replayed from the journal
        assert first.proc.wait(10) == -signal.SIGKILL
        assert row_count(schema_dsn) == 0
        second = start_worker(workers, tmp_path, config)
        second.wait_log(r"caught up with the journal")
        assert second.terminate() == 0
    assert stored_ticks(schema_dsn) == good
    assert "replaying" in second.log()
