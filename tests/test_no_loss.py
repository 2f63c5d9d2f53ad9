"""Never lose a tick: database outages, kill -9, crashes inside a commit, a torn journal, the journal cap.

Every scenario compares the feed's sent-log with the database, tick by tick:
what a worker stores from one connection must be exactly a prefix of what
the feed sent on it (a hole means a received tick was lost; a surplus means a
duplicate). What follows the prefix was in flight when the worker died.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Iterator

import orjson
import pytest
from support import query, row_count, small_tmpfs, terminate_all, wait_until
from test_worker import start_worker, write_config

from shardctl.feed.server import FeedServer

#: real workers killed, crashed and starved: seconds each; `pytest -m "not slow"` leaves them out of the quick loop.
pytestmark = pytest.mark.slow

#: Stocks and crypto carry a day_volume that grows with every tick, which makes each tick unique.
SYMBOLS = ("AAPL", "MSFT", "BTC/USD", "ETH/USD")


def tick_key(event: dict) -> tuple:
    return (event["symbol"], event["timestamp"], event["price"], event["day_volume"])


def stored_keys(dsn: str) -> Counter:
    return Counter((s, int(t), p, int(v)) for s, t, p, v in query(
        dsn, "SELECT symbol, extract(epoch FROM time)::bigint, price, day_volume FROM crypto_ticks"))


def assert_prefixes(feed: FeedServer, dsn: str) -> dict[int, int]:
    """Stored ticks are, per feed connection, exactly a prefix of what it sent; returns each prefix length."""
    remaining = stored_keys(dsn)
    total = sum(remaining.values())
    prefixes: dict[int, int] = {}
    for conn in sorted(feed.stats().per_connection):
        taken = 0
        for event in feed.sent_events(conn):
            key = tick_key(event)
            if remaining[key] <= 0:
                break
            remaining[key] -= 1
            taken += 1
        prefixes[conn] = taken
    leftover = +remaining
    assert not leftover, f"{sum(leftover.values())} stored tick(s) are not in any connection's sent prefix " \
                         f"(lost ticks before them, or duplicates): {list(leftover)[:5]}"
    assert sum(prefixes.values()) == total
    sent = feed.stats().sent
    print(f"\n[no-loss] connections {len(prefixes)}: sent {sent}, stored {total} (each a prefix of its "
          f"connection: lost 0, duplicated 0), sent but never read (in flight at a kill/close) {sent - total}")
    return prefixes


def ledger_rows(dsn: str) -> int:
    return query(dsn, "SELECT coalesce(sum(rows_total), 0) FROM shardctl_ledger")[0][0]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_database_outage_of_30s_loses_and_duplicates_nothing(tmp_path, pg_server, schema_dsn, workers) -> None:
    if not pg_server.embedded:
        pytest.skip("stops and starts the database server: needs the embedded test server")
    with FeedServer(rate=2500, symbols=SYMBOLS, seed=21, keep_sent=1_000_000) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, symbols=SYMBOLS, batch_size=1000, max_pending_rows=5000)
        worker = start_worker(workers, tmp_path, config)
        wait_until(lambda: row_count(schema_dsn) >= 5000, what="rows before the outage")
        rss_before = rss_kb(worker.pid)
        pg_server.stop()
        try:
            outage_end = time.monotonic() + 30
            worker.wait_log(r"reading into the journal only", timeout=30)
            peak = rss_before
            while time.monotonic() < outage_end:  # the outage lasts 30 s by definition; sample memory meanwhile
                peak = max(peak, rss_kb(worker.pid))
                time.sleep(0.5)
            sent_during = feed.stats().sent
        finally:
            pg_server.start()
        wait_until(lambda: row_count(schema_dsn) >= sent_during, timeout=90, what="the backlog to drain")
        worker.wait_log(r"caught up with the journal", timeout=60)
        assert worker.terminate() == 0
        prefixes = assert_prefixes(feed, schema_dsn)
    log = worker.log()
    assert log.count("worker started:") == 1 and worker.proc.returncode == 0, "the worker was never restarted"
    assert len(prefixes) == 1, "one connection throughout: the outage did not touch the stream"
    assert sum(prefixes.values()) >= sent_during >= 2500 * 30
    assert ledger_rows(schema_dsn) == row_count(schema_dsn), "no batch was committed twice"
    # 75,000+ ticks arrived during the outage; held in memory they would take tens of MB.
    assert peak - rss_before < 20_000, f"worker memory grew {peak - rss_before} kB during the outage"


def test_kill_9_at_random_moments_loses_nothing_and_records_gaps(tmp_path, schema_dsn, workers) -> None:
    rng = random.Random(1234)
    kills: list[float] = []
    with FeedServer(rate=1500, symbols=SYMBOLS, seed=22, keep_sent=1_000_000) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, symbols=SYMBOLS, batch_size=200, flush_interval="100ms")
        for _ in range(10):
            worker = start_worker(workers, tmp_path, config)
            worker.wait_log(r"subscribed to")
            time.sleep(rng.uniform(0.2, 1.2))  # a random moment is the point of this test
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait(10)
            kills.append(time.time())
        final = start_worker(workers, tmp_path, config)
        final.wait_log(r"subscribed to")
        before = row_count(schema_dsn)
        wait_until(lambda: row_count(schema_dsn) >= before + 500, what="rows after the last restart")
        wait_until(lambda: len(gap_rows(schema_dsn)) >= 10, what="ten worker-down gaps")
        assert final.terminate() == 0
        prefixes = assert_prefixes(feed, schema_dsn)
    assert len(prefixes) == 11 and all(n > 0 for n in prefixes.values())
    assert ledger_rows(schema_dsn) == row_count(schema_dsn)
    gaps = gap_rows(schema_dsn)
    for killed_at in kills:
        assert any(start <= killed_at <= end for start, end in gaps), f"no gap covers the kill at {killed_at}"


def gap_rows(dsn: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in query(
        dsn, "SELECT extract(epoch FROM gap_from), extract(epoch FROM gap_to) FROM shardctl_gaps "
             "WHERE reason = 'worker down' ORDER BY gap_from")]


@pytest.mark.parametrize("point, committed", [("after_copy", 200), ("after_commit", 300)])
def test_crash_inside_a_commit_loses_and_duplicates_nothing(tmp_path, schema_dsn, workers, point,
                                                            committed) -> None:
    with FeedServer(rate=1000, count=2000, symbols=SYMBOLS, seed=23, keep_sent=100_000) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, symbols=SYMBOLS, batch_size=100, flush_interval="5s")
        crashing = start_worker(workers, tmp_path, config, env={"SHARDCTL_CRASH_AT": f"{point}:3"})
        assert crashing.proc.wait(30) == -signal.SIGKILL
        assert row_count(schema_dsn) == committed, "the third batch commits only if the crash came after COPY+commit"
        survivor = start_worker(workers, tmp_path, config)
        feed.wait_for(lambda s: s.per_connection.get(max(s.per_connection), 0) >= 2000 and s.accepted == 2,
                      timeout=30)
        wait_until(lambda: row_count(schema_dsn) >= 300 + 2000, what="the replay and the new stream")
        assert survivor.terminate() == 0
        prefixes = assert_prefixes(feed, schema_dsn)
    first, second = (prefixes[c] for c in sorted(prefixes))
    assert first >= 300, "every tick journaled before the crash was replayed"
    assert second == 2000
    assert ledger_rows(schema_dsn) == row_count(schema_dsn)
    # The replay starts right after the ledger's offset, so no batch is even offered twice.
    assert "already committed" not in survivor.log()


def test_torn_journal_tail_is_cut_and_the_worker_goes_on(tmp_path, schema_dsn, workers) -> None:
    with FeedServer(rate=1000, symbols=SYMBOLS, seed=24, keep_sent=200_000) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, symbols=SYMBOLS, batch_size=100, flush_interval="5s")
        crashing = start_worker(workers, tmp_path, config, env={"SHARDCTL_CRASH_AT": "after_copy:4"})
        assert crashing.proc.wait(30) == -signal.SIGKILL
        segments = sorted((tmp_path / "state" / "shards" / "s1" / "journal").glob("*.seg"))
        last = segments[-1]
        size = last.stat().st_size
        with open(last, "r+b") as handle:
            handle.truncate(size - 7)  # a record torn mid-write
        survivor = start_worker(workers, tmp_path, config)
        survivor.wait_log(r"cut \d+ byte")
        before = row_count(schema_dsn)
        wait_until(lambda: row_count(schema_dsn) >= before + 500, what="rows after the cut")
        assert survivor.terminate() == 0
        prefixes = assert_prefixes(feed, schema_dsn)
    assert min(prefixes.values()) >= 300
    assert ledger_rows(schema_dsn) == row_count(schema_dsn)


# ------------------------------------------------------------------ the journal cap, under the supervisor

@pytest.fixture
def supervisor_run(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    terminate_all(procs)


def status_json(config: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "shardctl", "status", str(config), "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["shards"][0]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("action", ["block", "drop_oldest"])
def test_journal_cap_with_the_database_down(tmp_path, pg_server, schema_dsn, supervisor_run, action) -> None:
    if not pg_server.embedded:
        pytest.skip("stops and starts the database server: needs the embedded test server")
    port = free_port()
    with FeedServer(rate=3000, symbols=SYMBOLS, seed=25, keep_sent=500_000) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, symbols=SYMBOLS, batch_size=500, max_pending_rows=1000,
                              journal_segment_bytes="64KiB", journal_max_bytes="256KiB", journal_on_full=action)
        config.write_text(config.read_text().replace("[defaults]", f"[supervisor]\nmetrics_port = {port}\n"
                                                     f"start_grace = \"1s\"\nheartbeat_timeout = \"30s\"\n[defaults]"))
        log = open(tmp_path / "supervisor.log", "wb")
        env = {k: v for k, v in os.environ.items() if k != "SHARDCTL_DSN"}
        supervisor_run.append(subprocess.Popen([sys.executable, "-m", "shardctl", "start", str(config)],
                                               stdout=log, stderr=subprocess.STDOUT, env=env))
        wait_until(lambda: row_count(schema_dsn) >= 1000, timeout=30, what="rows before the outage")
        pg_server.stop()
        try:
            if action == "block":
                shard = wait_until(lambda: (s := status_json(config))["journal_full"] and s, timeout=30,
                                   what="status to show the journal full")
                assert "FULL" in subprocess.run([sys.executable, "-m", "shardctl", "status", str(config)],
                                                capture_output=True, text=True, timeout=30).stdout
                metric = "shardctl_journal_full"
            else:
                shard = wait_until(lambda: (s := status_json(config))["journal_dropped"] > 0 and s, timeout=30,
                                   what="status to show dropped frames")
                metric = "shardctl_journal_dropped_frames_total"
            assert shard["state"] == "RUNNING" and shard["journal_bytes"] <= 256 * 1024 + 65536
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            value = [line for line in metrics.splitlines() if line.startswith(metric + "{")]
            assert value and float(value[0].split()[-1]) > 0, value
        finally:
            pg_server.start()
        wait_until(lambda: (s := status_json(config)) and not s["catching_up"] and not s["journal_full"]
                   and s["seconds_behind"] < 5, timeout=60, what="the backlog to drain")
        proc = supervisor_run[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        prefixes = assert_prefixes(feed, schema_dsn) if action == "block" else None
    if action == "block":
        assert prefixes is not None and sum(prefixes.values()) == row_count(schema_dsn)
    else:
        reasons = [r for (r,) in query(schema_dsn, "SELECT reason FROM shardctl_gaps")]
        assert any(r.startswith("journal cap: dropped") for r in reasons), reasons
    assert ledger_rows(schema_dsn) == row_count(schema_dsn)


def _tcp_queues(port: int) -> list[tuple[int, int, int, int]]:
    """(local port, remote port, tx_queue, rx_queue) of every IPv4 TCP socket on 127.0.0.1 touching ``port``."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        lport, rport = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if port in (lport, rport) and fields[3] == "01":  # ESTABLISHED
            tx, rx = (int(q, 16) for q in queues.split(":"))
            found.append((lport, rport, tx, rx))
    return found


def _everything_sent_was_read(feed_port: int) -> bool:
    """The feed's kernel has sent every byte and the worker's kernel holds none unread: the worker read it all."""
    queues = _tcp_queues(feed_port)
    return bool(queues) and all(tx == 0 and rx == 0 for _, _, tx, rx in queues)


def test_kill_9_right_after_a_burst_was_read_loses_none_of_it(tmp_path, schema_dsn, workers) -> None:
    """What the worker pulled off its socket is in the OS before it reads again, even with nothing flushed."""
    with FeedServer(rate=2000, count=300, symbols=SYMBOLS, seed=31, keep_sent=10_000) as feed:
        # No batch reaches the database before the kill: everything rests on the journal.
        config = write_config(tmp_path, feed.url, schema_dsn, symbols=SYMBOLS, batch_size=100_000,
                              max_pending_rows=100_000, flush_interval="1h")
        worker = start_worker(workers, tmp_path, config)
        feed.wait_sent(300, timeout=30)
        port = int(feed.url.split(":")[2].split("/")[0])
        wait_until(lambda: _everything_sent_was_read(port), timeout=10, interval=0.001,
                   what="the worker to read every byte the feed sent")
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)
        assert row_count(schema_dsn) == 0
        from shardctl.journal.journal import Journal

        journal = Journal(tmp_path / "state" / "shards" / "s1" / "journal", fsync="never")
        last_read_at = journal.last_received_at
        events = [orjson.loads(frame) for frame in journal.last_burst]
        journal.close()
        assert last_read_at is not None
        # What the worker never read was sent after the last frame it read, and no event is sent before it happens.
        stamps = [e["timestamp"] for e in events if e.get("event") == "price"]
        read_until = min(last_read_at, max(stamps)) if stamps else last_read_at
        final = start_worker(workers, tmp_path, write_config(tmp_path, feed.url, schema_dsn, symbols=SYMBOLS))
        wait_until(lambda: row_count(schema_dsn) >= 300, what="the journal replayed")
        wait_until(lambda: gap_rows(schema_dsn), what="the worker-down gap")
        assert final.terminate() == 0
        prefixes = assert_prefixes(feed, schema_dsn)
    assert prefixes[min(prefixes)] == 300, "every tick the killed worker had read is stored"
    (gap_from, _), = gap_rows(schema_dsn)
    assert gap_from == pytest.approx(read_until, abs=1e-5), \
        "the worker-down gap starts at the last frame the journal holds, or at the latest event time it read"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs for a state directory (needs root, as in CI); skipped elsewhere with the reason."""
    with small_tmpfs(tmp_path / "state", "6m") as mount:
        yield mount


def test_a_full_disk_is_a_state_not_a_crash(tmp_path, pg_server, schema_dsn, workers, small_disk) -> None:
    """Disk full with the database down: stop reading, show it, drain when the database returns, read again."""
    if not pg_server.embedded:
        pytest.skip("stops and starts the database server: needs the embedded test server")
    with FeedServer(rate=3000, symbols=SYMBOLS, seed=33, keep_sent=1_000_000) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, symbols=SYMBOLS, batch_size=1000,
                              max_pending_rows=5000, watchdog_timeout="30s")
        worker = start_worker(workers, tmp_path, config)
        wait_until(lambda: row_count(schema_dsn) >= 1000, what="rows before the outage")
        pg_server.stop()
        try:
            line = worker.wait_log(r"disk full: \S+ \([\d,]+ bytes free\): not reading the socket", timeout=60)
            assert str(small_disk) in line
            assert worker.proc.poll() is None, "a full disk is not a crash"
        finally:
            pg_server.start()
        worker.wait_log(r"the disk has room again", timeout=60)
        worker.wait_log(r"caught up with the journal", timeout=60)
        before = row_count(schema_dsn)
        wait_until(lambda: row_count(schema_dsn) >= before + 3000, what="live rows after the disk had room")
        assert worker.terminate() == 0
        prefixes = assert_prefixes(feed, schema_dsn)
    assert worker.log().count("worker started:") == 1, "the worker was never restarted"
    assert len(prefixes) == 1, "the connection stayed open while the worker did not read"
    reasons = [r for (r,) in query(schema_dsn, "SELECT reason FROM shardctl_gaps")]
    assert "disk full: not reading" in reasons
    assert ledger_rows(schema_dsn) == row_count(schema_dsn), "no batch was committed twice"
