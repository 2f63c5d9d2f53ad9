"""Fault injection (issue 10): real processes, the real feed, the real PostgreSQL, things breaking.

Every scenario compares what was sent with what the database holds, tick by
tick (a tick is (symbol, timestamp, price, day_volume): day_volume grows with
every tick, so the key is unique), and prints one line::

    [faults:NAME] sent S, stored N, lost inside gaps I, lost outside gaps O, duplicated D,
                  lost after the worker read them R, gaps recorded G, ...

The promises checked (README "Never losing a tick", DESIGN.md):

* duplicated == 0;
* every lost tick lies inside a gap recorded in ``shardctl_gaps`` for its
  shard. A lost tick was never received, so its receive time is the feed's
  send time plus nothing: the test holds the send time (recorded by the feed
  to the microsecond, this machine's clock, like the worker's gap stamps)
  against [gap_from, gap_to], with 50 ms of slack (``faultkit.tally``);
* nothing the worker had read is lost (``lost after the worker read them``):
  "read" means pulled off the socket, measured at the instant of each kill
  (``faultkit.freeze_then_kill``), less one socket read (16 KiB) for the
  instant between a read and its journal write; the journal files hold a
  subset of what was read. Where nothing is killed, the journal segments are
  read while the database is down and every tick in them must reach it.

How the scenarios end: the feed is silenced (no more ticks on any connection)
and the test waits until every tick on the open connections is stored, so a
graceful stop loses nothing in flight and the comparison is exact.

Run with ``-s`` to see the lines; they are also in every assertion message.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import psycopg2.extensions
import pytest
from faultkit import (
    CRYPTO,
    ONE_READ,
    STOCKS,
    Frozen,
    ScriptedConn,
    ScriptedServer,
    SentTick,
    SupervisorRun,
    TimedFeed,
    assert_no_loss,
    freeze_then_kill,
    gap_lines,
    gap_rows,
    grep_files,
    journal_ticks,
    ledger_rows,
    loose_modes,
    pg_kill_hard,
    price_event,
    settled,
    stored_keys,
    tally,
)
from support import TmpfsMount, WorkerProcess, query, row_count, settle, wait_until, write_config

from shardctl.config import load_config
from shardctl.config.model import ShardSettings

#: Fault injection with real processes, seconds to tens of seconds each: not in the quick loop
#: (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow


@pytest.fixture
def supervisors():
    started: list[SupervisorRun] = []
    yield started
    for sup in started:
        sup.close()


@pytest.fixture
def workers():
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.close()


def report(t: Any) -> str:
    print("\n" + t.line(), flush=True)
    return t.details()


# ------------------------------------------------------------------ 1. kill -9 storm under the supervisor

KILLS = 12


@pytest.mark.slow
def test_kill_storm_loses_nothing_read_and_every_loss_is_in_a_gap(tmp_path, schema_dsn, supervisors) -> None:
    """kill -9 of worker pids at random moments (seeded); the supervisor restarts them; 2 shards, ~1,500 ticks/s."""
    started = time.monotonic()
    rng = random.Random(1010)
    shards = {"stocks": STOCKS, "crypto": CRYPTO}
    shard_of = {s: name for name, syms in shards.items() for s in syms}.__getitem__
    frozen: dict[int, Frozen] = {}
    kills: list[tuple[str, int, float]] = []
    with TimedFeed(rate=750, symbols=STOCKS + CRYPTO, seed=101) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, {
            name: {"symbols": syms, "api_key_env": f"FAULTS_KEY_{name.upper()}"} for name, syms in shards.items()},
            # the product's default batching (README): batch_size 1000, flush_interval 1s
            defaults={"batch_size": 1000, "flush_interval": "1s"},
            supervisor={"max_failures": 1000, "failure_window": "60s"})
        env = {"FAULTS_KEY_STOCKS": "key-stocks", "FAULTS_KEY_CRYPTO": "key-crypto"}  # one feed connection each
        sup = SupervisorRun(config, tmp_path / "supervisor.log", env=env)
        supervisors.append(sup)
        sup.wait_running(shards, rows=1)
        for _ in range(KILLS):
            name = rng.choice(list(shards))
            previous = next((pid for shard_name, pid, _ in reversed(kills) if shard_name == name), None)
            shard = wait_until(lambda: (s := sup.try_status()) and s[name]["pid"] not in (None, previous)
                               and s[name], 30, interval=0.05, what=f"a new {name} worker")
            time.sleep(rng.uniform(0.05, 1.2))  # a random moment in the new worker's life is the point
            pid = shard["pid"]
            kills.append((name, pid, time.time()))
            measured = freeze_then_kill(pid, feed)
            if measured is not None:
                frozen[measured.conn] = measured
        sup.wait_running(shards, timeout=60)
        feed.inject("silence", standing=True, seconds=600)  # no more ticks: what was sent can all be accounted for

        def current() -> Any:
            journaled = sum((journal_ticks(tmp_path / "state" / "shards" / name / "journal") for name in shards),
                            Counter())
            return tally("kill-storm", feed.sent_ticks(), stored_keys(schema_dsn), gap_rows(schema_dsn), shard_of,
                         frozen=frozen, open_conns=feed.connection_ids(), journaled=journaled, read_slack=ONE_READ)

        settle(lambda: current().open_missing == 0, 30)   # the live connections drained (replays come first)
        settle(lambda: current().lost_outside == 0, 5)    # the last restarts' gaps are written
        restarts = sum(s["restarts"] for s in sup.status().values())
        assert sup.stop() == 0, sup.log()[-3000:]
        result = current()
    result.extra.update(kills=len(kills), measured_kills=len(frozen), restarts=restarts,
                        runtime=f"{time.monotonic() - started:.1f}s")
    message = report(result)
    assert len(kills) >= 10 and restarts >= len(kills), "the storm did not happen as planned\n" + message
    assert_no_loss(result, message, read_hint="journal appends must reach the OS before the next socket read, "
                                              "not wait in an in-process buffer")
    assert ledger_rows(schema_dsn) == result.stored, "no batch committed twice\n" + message


# ------------------------------------------------------------------ 1b. kill -9 of a worker that stopped reading

#: How long the blocked worker stays blocked before its kill: past a liveness stamp written each second.
BLOCKED_FOR = 2.0


@pytest.mark.slow
def test_kill_9_while_blocked_at_the_journal_cap_the_gap_starts_at_the_last_journal_record(
        tmp_path, pg_server, schema_dsn, supervisors) -> None:
    """A worker that stopped reading (journal full, database down) is killed; its gap must start where its
    journal ends, not at the last moment it was merely alive: the ticks waiting in the socket meanwhile are lost.
    """
    if not pg_server.embedded:
        pytest.skip("stops the database server: needs the embedded test server (not SHARDCTL_TEST_DSN)")
    started = time.monotonic()
    symbols = STOCKS + CRYPTO
    frozen: dict[int, Frozen] = {}
    with TimedFeed(rate=2000, symbols=symbols, seed=111) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, {"s1": {"symbols": symbols}}, defaults={
            "batch_size": 500, "max_pending_rows": 1000, "journal_segment_bytes": "64KiB",
            "journal_max_bytes": "256KiB", "journal_on_full": "block"})
        sup = SupervisorRun(config, tmp_path / "supervisor.log")
        supervisors.append(sup)
        pid = sup.wait_running(["s1"], rows=500)["s1"]["pid"]
        pg_server.stop()
        try:
            wait_until(lambda: (s := sup.try_status()) and s["s1"]["journal_full"], 30, what="the journal full")
            feed.wait_sent(feed.stats().sent + 500, timeout=30)  # ticks now wait in the socket, unread
            time.sleep(BLOCKED_FOR)  # the blocked stretch is a duration by definition
            measured = freeze_then_kill(pid, feed)
            if measured is not None:
                frozen[measured.conn] = measured
        finally:
            pg_server.start()
        sup.wait_running(["s1"], timeout=60)
        feed.inject("silence", standing=True, seconds=600)

        def current() -> Any:
            return tally("kill-while-blocked", feed.sent_ticks(), stored_keys(schema_dsn), gap_rows(schema_dsn),
                         lambda _: "s1", frozen=frozen, open_conns=feed.connection_ids())

        settle(lambda: current().open_missing == 0, 60)
        settle(lambda: current().lost_outside == 0, 5)
        assert sup.stop() == 0, sup.log()[-3000:]
        result = current()
    gaps = gap_lines(schema_dsn, "s1")
    result.extra.update(measured_kill=bool(frozen), runtime=f"{time.monotonic() - started:.1f}s")
    message = report(result) + f"\ngaps: {gaps}"
    assert frozen, "the blocked worker had no feed connection to measure\n" + message
    assert_no_loss(result, message, outside_hint="the ticks waited in the socket while the worker was blocked; "
                                                 "its gap must start at the journal's last record, not at a liveness "
                                                 "stamp the blocked worker kept writing")


# ------------------------------------------------------------------ 1c. kill -9 of a worker behind its socket

#: How long the worker stands still: past one socket read's worth (256 KiB) of the feed at ~750 ticks/s.
STALL = 3.0
#: Stalls tried until one leaves, at its kill, ticks sent before the worker read again and never read.
STALLS = 4


def journal_bytes(directory: Path) -> int:
    with os.scandir(directory) as entries:
        return sum(e.stat().st_size for e in entries if e.name.endswith(".seg"))


def test_kill_9_of_a_worker_behind_its_socket_starts_the_gap_before_what_it_never_read(
        tmp_path, schema_dsn, workers) -> None:
    """A worker stands still (a VM pause, a starved CPU, a stuck disk: SIGSTOP here) while the feed streams,
    reads one burst when it moves again and is killed right after: at its last receive time it had read
    frames sent seconds before, and what it left unread was sent before that receive time too. The gap
    must start before the first of them, not at the last receive time."""
    started = time.monotonic()
    frozen: dict[int, Frozen] = {}
    behind: list[SentTick] = []
    with TimedFeed(rate=750, symbols=STOCKS, seed=121) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, {"stocks": {"symbols": STOCKS}},
                              defaults={"batch_size": 1000, "flush_interval": "1s"})
        journal = tmp_path / "state" / "shards" / "stocks" / "journal"
        for attempt in range(STALLS):
            worker = WorkerProcess(config, "stocks", tmp_path / f"worker{attempt}.log")
            workers.append(worker)
            rows = row_count(schema_dsn)
            wait_until(lambda: row_count(schema_dsn) > rows + 100, 30, what="the worker streaming")
            os.kill(worker.pid, signal.SIGSTOP)
            time.sleep(STALL)  # the stall is a duration by definition
            before, resumed_at = journal_bytes(journal), time.time()
            os.kill(worker.pid, signal.SIGCONT)
            deadline = time.monotonic() + 10
            while journal_bytes(journal) == before and time.monotonic() < deadline:
                pass  # the first burst after the stall reaches the journal: kill within that burst's work
            measured = freeze_then_kill(worker.pid, feed)
            worker.close()
            if measured is None:
                continue
            frozen[measured.conn] = measured
            behind = [t for t in feed.sent_ticks()
                      if t.conn == measured.conn and t.end > measured.read_to and t.sent_at < resumed_at]
            if behind:
                break
        workers.append(WorkerProcess(config, "stocks", tmp_path / "worker-last.log"))
        wait_until(lambda: feed.connection_ids() and row_count(schema_dsn) > rows, 30, what="the last worker")
        feed.inject("silence", standing=True, seconds=600)

        def current() -> Any:
            return tally("kill-behind-the-socket", feed.sent_ticks(), stored_keys(schema_dsn), gap_rows(schema_dsn),
                         lambda _: "stocks", frozen=frozen, open_conns=feed.connection_ids(),
                         read_slack=ONE_READ)  # a worker behind its socket reads whole chunks

        result = settled(current)
    gaps = gap_lines(schema_dsn, "stocks")
    result.extra.update(stalls=attempt + 1, left_unread=len(behind), runtime=f"{time.monotonic() - started:.1f}s")
    message = report(result) + f"\ngaps: {gaps}"
    assert behind, f"no stall left ticks sent before the worker read again unread at its kill\n{message}"
    assert_no_loss(result, message, outside_hint="a worker behind its socket had read, at its last receive time, "
                                                 "frames sent long before; its gap must start at their event time")


# ------------------------------------------------------------------ 1d. a server that drops a worker behind its socket

#: Bytes the feed holds for a stalled worker's connection before it drops it.
HELD = 256 * 1024

def test_a_dropped_connection_of_a_worker_behind_its_socket_starts_its_gap_before_what_never_came(
        tmp_path, schema_dsn, workers) -> None:
    """A worker stands still while the feed streams; the feed, holding what the worker's socket could not
    take, drops the connection (as a server drops a slow consumer). The worker moves again, reads what had
    reached its socket (at that late receive time) and finds the connection gone: the ticks the feed
    dropped were sent before that receive time, and the "disconnected" gap must start before them."""
    started = time.monotonic()
    with TimedFeed(rate=3000, symbols=STOCKS, seed=141) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, {"stocks": {"symbols": STOCKS}},
                              defaults={"batch_size": 1000, "flush_interval": "1s"})
        workers.append(worker := WorkerProcess(config, "stocks", tmp_path / "worker.log"))
        wait_until(lambda: row_count(schema_dsn) > 100, 30, what="the worker streaming")
        (conn,) = feed.connection_ids()
        os.kill(worker.pid, signal.SIGSTOP)
        # Until both sockets' buffers are full and the feed holds ticks itself:
        wait_until(lambda: feed.unsent_bytes(conn)[1] > HELD, 60, interval=0.1, what="the feed holding ticks back")
        buffered = feed.unsent_bytes(conn)[1]
        feed.drop(conn)
        wait_until(lambda: conn not in feed.connection_ids(), 30, what="the feed dropping the connection")
        os.kill(worker.pid, signal.SIGCONT)
        worker.wait_log(r"connection lost|server closed", timeout=30)
        wait_until(lambda: len(feed.connection_ids()) == 1, 30, what="the worker back on a new connection")
        feed.inject("silence", standing=True, seconds=600)

        def current() -> Any:
            return tally("dropped-behind-the-socket", feed.sent_ticks(), stored_keys(schema_dsn),
                         gap_rows(schema_dsn), lambda _: "stocks", open_conns=feed.connection_ids())

        result = settled(current)
    gaps = gap_lines(schema_dsn, "stocks")
    result.extra.update(held_by_the_feed=buffered, runtime=f"{time.monotonic() - started:.1f}s")
    message = report(result) + f"\ngaps: {gaps}"
    assert buffered > 0 and result.lost_in_gaps + result.lost_outside > 0, \
        "the feed held nothing back for the stalled worker: the scenario did not happen\n" + message
    assert_no_loss(result, message, outside_hint="what the server dropped was sent before the worker's last "
                                                 "receive time; the disconnection's gap must start at the "
                                                 "event time it had read up to")


# ------------------------------------------------------------------ 1e. killed before its "worker down" gap is recorded

def test_a_worker_killed_before_its_down_gap_was_recorded_leaves_it_to_the_next(tmp_path, schema_dsn, workers) -> None:
    """Worker A is killed. B starts, connects and reads, but the database holds B's "worker down" gap back
    until B is killed too (a test session locks shardctl_gaps against writes). C must record a gap from A's
    last read: the ticks A never read lie in it, though B read frames sent after them."""
    started = time.monotonic()
    frozen: dict[int, Frozen] = {}

    def kill(worker: WorkerProcess) -> None:
        measured = freeze_then_kill(worker.pid, feed)
        worker.close()
        assert measured is not None, "the worker had no feed connection to measure"
        frozen[measured.conn] = measured

    with TimedFeed(rate=500, symbols=STOCKS, seed=131) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, {"stocks": {"symbols": STOCKS}},
                              defaults={"batch_size": 100, "flush_interval": "100ms"})
        workers.append(a := WorkerProcess(config, "stocks", tmp_path / "a.log"))
        wait_until(lambda: row_count(schema_dsn) > 100, 30, what="worker A streaming")
        os.kill(a.pid, signal.SIGSTOP)
        feed.wait_sent(feed.stats().sent + 50, timeout=30)  # ticks A will never read
        kill(a)
        locker = psycopg2.connect(schema_dsn)
        try:
            with locker.cursor() as cur:
                cur.execute("LOCK TABLE shardctl_gaps IN SHARE MODE")  # reads pass, writes wait for the rollback
            workers.append(b := WorkerProcess(config, "stocks", tmp_path / "b.log"))
            wait_until(lambda: query(schema_dsn, "SELECT count(*) FROM pg_locks WHERE NOT granted AND "
                                                 "relation = 'shardctl_gaps'::regclass")[0][0], 30,
                       what="worker B's gap waiting on the lock")
            sent = feed.stats().sent
            feed.wait_sent(sent + 200, timeout=30)  # B reads (and journals) ticks sent after A's last read
            kill(b)
        finally:
            locker.rollback()
            locker.close()
        assert not gap_rows(schema_dsn), "B's gap never reached the database"
        workers.append(WorkerProcess(config, "stocks", tmp_path / "c.log"))
        wait_until(lambda: gap_rows(schema_dsn), 30, what="worker C's gap")
        feed.inject("silence", standing=True, seconds=600)

        def current() -> Any:
            return tally("killed-owing-its-gap", feed.sent_ticks(), stored_keys(schema_dsn), gap_rows(schema_dsn),
                         lambda _: "stocks", frozen=frozen, open_conns=feed.connection_ids())

        result = settled(current)
    gaps = gap_lines(schema_dsn, "stocks")
    result.extra.update(runtime=f"{time.monotonic() - started:.1f}s")
    message = report(result) + f"\ngaps: {gaps}"
    assert result.lost_in_gaps, "A's kill lost nothing: the scenario did not happen\n" + message
    assert_no_loss(result, message, outside_hint="a worker killed before the database had its worker-down gap "
                                                 "must leave it to the next one")


# ------------------------------------------------------------------ 2. the database killed hard, three times

OUTAGES = 3
#: Generous: each outage lasts about 2 s (kill, 1,000 ticks, crash recovery); with a retry backoff that
#: starts again from its initial delay after every recovery, writes resume within about that long. The
#: known bug (the committer's backoff never resets between outages, so the first retry of the second
#: outage waits about 4-8 s and of the third about 16 s, 30 s at the cap) makes it 10-30 s.
RESUME_DEADLINE = 10.0


def durable_commits(pg_server: Any, dsn: str) -> None:
    """PostgreSQL's default ``synchronous_commit = on`` for this test's database (new sessions).

    The session's server runs with it off for speed; then a hard kill loses commits the server had
    already acknowledged, which no client can prevent. (The worker trusts an acknowledged batch and
    never writes it again: with the setting off, those rows are simply gone.)
    """
    name = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    admin = pg_server.connect()
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
    admin.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_database_killed_hard_three_times_writes_resume_soon_and_nothing_is_lost(tmp_path, pg_server, schema_dsn,
                                                                                 workers) -> None:
    if not pg_server.embedded:
        pytest.skip("kills the database server: needs the embedded test server (not SHARDCTL_TEST_DSN)")
    started = time.monotonic()
    durable_commits(pg_server, schema_dsn)
    symbols = STOCKS + CRYPTO
    resumes: list[float | None] = []
    journaled: Counter = Counter()
    with TimedFeed(rate=1000, symbols=symbols, seed=202) as feed:
        config = write_config(tmp_path, feed.url, schema_dsn, {"s1": {"symbols": symbols}},
                              defaults={"max_pending_rows": 5000})
        journal_dir = load_config(config).shard_dir("s1") / "journal"
        worker = WorkerProcess(config, "s1", tmp_path / "worker.log")
        workers.append(worker)
        wait_until(lambda: row_count(schema_dsn) >= 500, 30, what="rows before the first outage")
        try:
            for _ in range(OUTAGES):
                pg_kill_hard(pg_server)
                # The outage lasts 1,000 more ticks (~1 s): ten flush intervals, ten failed writes at least.
                feed.wait_sent(feed.stats().sent + 1000, timeout=30)
                journaled |= journal_ticks(journal_dir)  # nothing is committed meanwhile: every segment is there
                pg_server.start()
                up = time.monotonic()
                base = row_count(schema_dsn)
                # Measured, not asserted here: the figure goes into the report; the assertion comes at the end.
                grew = settle(lambda: row_count(schema_dsn) > base, RESUME_DEADLINE + 30, interval=0.05)
                resumes.append(round(time.monotonic() - up, 1) if grew else None)
                if not grew or resumes[-1] > RESUME_DEADLINE:
                    break  # already failed; the figures of the next outages would only cost time
                target = feed.stats().sent
                wait_until(lambda: row_count(schema_dsn) >= target, 60,
                           what="the backlog to drain before the next outage")
        finally:
            pg_server.start()
        feed.inject("silence", standing=True, seconds=600)
        settle(lambda: row_count(schema_dsn) >= feed.stats().sent, 60)
        assert worker.terminate() == 0, worker.log()[-3000:]
        result = tally("db-killed-3x", feed.sent_ticks(), stored_keys(schema_dsn), gap_rows(schema_dsn),
                       lambda _: "s1")
    stored = stored_keys(schema_dsn)
    lost_journaled = sum((journaled - stored).values()) if journaled else 0
    shown = ["timeout" if r is None else f"{r}s" for r in resumes]
    result.extra.update(outages=len(resumes), resume_after_restart=shown,
                        journaled_during_outages=sum(journaled.values()),
                        lost_from_journal=lost_journaled, runtime=f"{time.monotonic() - started:.1f}s")
    message = report(result)
    problems = []
    late = [f"outage {i + 1}: {s}" for i, s in enumerate(shown) if resumes[i] is None or resumes[i] > RESUME_DEADLINE]
    if late:
        problems.append(f"writes did not resume within {RESUME_DEADLINE:g}s of the database coming back "
                        f"({', '.join(late)}): does the committer's retry backoff start again after a recovery?")
    if result.duplicated or result.lost_in_gaps or result.lost_outside or lost_journaled:
        problems.append("one connection throughout: nothing may be lost or duplicated")
    if ledger_rows(schema_dsn) != result.stored:
        problems.append("the ledger's row total differs from the rows stored")
    assert not problems, "\n".join(problems) + "\n" + message
    assert len(resumes) == OUTAGES, message


# ------------------------------------------------------------------ 3. a disk that fills up

def disk_full_shown(shard: dict[str, Any]) -> bool:
    """What the suite accepts as "status shows disk full": a ``disk_full`` flag, or last_error saying so."""
    text = str(shard.get("last_error") or "").lower()
    return shard.get("disk_full") is True or "disk full" in text or "no space left" in text


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_disk_full_is_a_state_not_a_crash_loop_and_the_journal_reaches_the_database(tmp_path, pg_server, schema_dsn,
                                                                                    supervisors) -> None:
    if not pg_server.embedded:
        pytest.skip("stops the database server: needs the embedded test server (not SHARDCTL_TEST_DSN)")
    if os.geteuid() != 0:
        pytest.skip("mounts a 16 MiB tmpfs as the shard's state directory: needs root")
    started = time.monotonic()
    symbols = STOCKS + CRYPTO
    shard_dir = tmp_path / "state" / "shards" / "s1"
    mount = TmpfsMount(shard_dir, "16m")
    if not mount.mounted:
        pytest.skip(f"cannot mount a tmpfs on {shard_dir}: {mount.error}")
    observed: list[tuple[str, int, bool, str]] = []
    try:
        ballast = shard_dir / "ballast"  # 4 MiB the test frees once the database is back ("some space freed")
        ballast.write_bytes(b"\0" * (4 << 20))
        with TimedFeed(rate=10000, symbols=symbols, seed=303) as feed:
            config = write_config(tmp_path, feed.url, schema_dsn, {"s1": {"symbols": symbols}}, defaults={
                "batch_size": 500, "max_pending_rows": 2000, "watchdog_timeout": "30s",
                # small segments so committed ones can be deleted; a cap far above the disk: ENOSPC comes first
                "journal_segment_bytes": "1MiB", "journal_max_bytes": "1GiB"},
                supervisor={"max_failures": 5, "failure_window": "60s"})
            sup = SupervisorRun(config, tmp_path / "supervisor.log")
            supervisors.append(sup)
            first_pid = sup.wait_running(["s1"], rows=1000)["s1"]["pid"]

            def observe() -> dict[str, Any] | None:
                shards = sup.try_status()
                if shards:
                    s = shards["s1"]
                    observed.append((s["state"], s["restarts"], disk_full_shown(s), str(s.get("last_error"))))
                    return s
                return None

            pg_server.stop()
            try:
                full_at = settle(lambda: mount.free_bytes() < (2 << 20) or ((s := observe()) and disk_full_shown(s)),
                                 30)
                shown = settle(lambda: (s := observe()) and disk_full_shown(s), 10)
                journaled = journal_ticks(shard_dir / "journal")  # the database is down: nothing deleted yet
                free_at_full = mount.free_bytes()
            finally:
                pg_server.start()
            ballast.unlink()
            settle(lambda: (observe() or {}).get("state") == "RUNNING" and
                   row_count(schema_dsn) >= sum(journaled.values()), 60)
            feed.inject("silence", standing=True, seconds=600)

            def current() -> Any:
                return tally("disk-full", feed.sent_ticks(), stored_keys(schema_dsn), gap_rows(schema_dsn),
                             lambda _: "s1", open_conns=feed.connection_ids())

            settle(lambda: current().open_missing == 0, 60)
            settle(lambda: current().lost_outside == 0, 5)
            final = observe()
            assert sup.stop() == 0, sup.log()[-3000:]
            result = current()
    finally:
        for sup in supervisors:
            sup.close()
        mount.unmount()
    stored = stored_keys(schema_dsn)
    lost_journaled = sum((journaled - stored).values())
    states = sorted({state for state, *_ in observed})
    restarts = max((r for _, r, _, _ in observed), default=0)
    result.extra.update(journaled_at_full=sum(journaled.values()), lost_from_journal=lost_journaled,
                        free_bytes_at_full=free_at_full, status_showed_disk_full=bool(shown),
                        states_seen=states, restarts=restarts, runtime=f"{time.monotonic() - started:.1f}s")
    message = report(result)
    log_tail = "\n".join(line for line in sup.log().splitlines() if "ERROR" in line or "CRITICAL" in line
                         or "->" in line)[-3000:]
    assert full_at, "the journal never filled the 12 MiB left on the tmpfs\n" + message
    problems = []
    if restarts or states != ["RUNNING"] or final is None or final["pid"] != first_pid:
        problems.append(f"a full disk must be a state, not a crash: restarts {restarts}, states seen {states}, "
                        f"pid {first_pid} -> {final and final['pid']}")
    if not shown:
        problems.append("status never showed the disk as full (expected `disk_full: true` in the shard's status, "
                        f"or last_error saying 'disk full' / 'No space left'); last seen: {observed[-1:]}")
    if lost_journaled:
        problems.append(f"{lost_journaled} tick(s) in the journal when the disk was full never reached the database")
    if result.duplicated or result.lost_outside or result.open_missing:
        problems.append(f"{result.duplicated} duplicated, {result.lost_outside} lost outside gaps, "
                        f"{result.open_missing} missing from the live connection")
    assert not problems, "\n".join(problems) + "\n" + message + "\n" + log_tail


# ------------------------------------------------------------------ 4. hostile frames

JUNK_FRAMES = 1500
JUNK_SIZE = 64 * 1024
OVERSIZED = 2 * 1024 * 1024
#: Without a configured cap: 1,500 junk frames of 64 KiB would make ~100 MB of dead letters today.
DEAD_LETTER_BOUND = 8 * 1024 * 1024


def dead_letter_cap_key() -> str | None:
    """A shard setting that caps the dead-letter file, if the config offers one (a field of ShardSettings)."""
    names = [f.name for f in fields(ShardSettings) if "dead_letter" in f.name and f.name.endswith("bytes")]
    return names[0] if names else None


def hostile_plan() -> tuple[list[tuple[str, bytes]], list[tuple], list[tuple], dict[str, int]]:
    """(frames as (opcode, payload), good tick keys, hostile price keys, hostile frames by kind).

    Good ticks: AAPL, day_volume from 1,000,000 up. Hostile price events carry day_volume from 9e9 up,
    so a stored hostile tick is recognisable.
    """
    frames: list[tuple[str, bytes]] = []
    good: list[tuple] = []
    hostile: list[tuple] = []
    kinds: Counter = Counter()
    ts = int(time.time())

    def add_good() -> None:
        n = len(good)
        event = price_event("AAPL", round(150 + n * 0.01, 2), 1_000_000 + n, ts)
        frames.append(("text", orjson.dumps(event)))
        good.append(("AAPL", ts, event["price"], event["day_volume"]))

    def hostile_price(**extra: Any) -> dict[str, Any]:
        n = len(hostile)
        event = price_event("AAPL", round(900 + n * 0.01, 2), 9_000_000_000 + n, ts, **extra)
        hostile.append(("AAPL", ts, event["price"], event["day_volume"]))
        return event

    def add_hostile(kind: str, opcode: str, payload: bytes) -> None:
        frames.append((opcode, payload))
        kinds[kind] += 1
        add_good()

    for _ in range(20):
        add_good()
    for _ in range(5):  # a binary frame is not a Twelve Data event, whatever it carries
        add_hostile("binary price", "binary", orjson.dumps(hostile_price()))
    for _ in range(2):  # a valid price event padded to 2 MiB: no real event is a thousandth of that
        add_hostile("oversized price", "text", orjson.dumps(hostile_price(pad="x" * OVERSIZED)))
    for _ in range(5):  # a price event with invalid UTF-8 inside a text frame
        add_hostile("invalid UTF-8 price", "text",
                    orjson.dumps(hostile_price(exchange="NASDAQ")).replace(b"NASDAQ", b"NAS\xff\xfeDAQ"))
    for _ in range(3):
        add_hostile("invalid UTF-8", "text", b"\xff\xfe\xfd not text \xc3\x28 \xa0\xa1")
    depth = 200_000
    for _ in range(3):  # deeply nested JSON inside a price event
        event = orjson.dumps(hostile_price(nest=0))
        add_hostile("nested price", "text", event.replace(b'"nest":0', b'"nest":' + b"[" * depth + b"]" * depth))
    for _ in range(2):
        add_hostile("nested", "text", b"[" * depth + b"]" * depth)
    for i in range(JUNK_FRAMES):  # a flood of junk
        line = b"junk %06d " % i
        add_hostile("junk 64 KiB", "text", (line * (JUNK_SIZE // len(line) + 1))[:JUNK_SIZE])
    for _ in range(50):
        add_good()
    return frames, good, hostile, dict(kinds)


def subscribe_ok(symbols: list[str]) -> str:
    return orjson.dumps({"event": "subscribe-status", "status": "ok", "fails": None, "success": [
        {"symbol": s, "exchange": "NASDAQ", "mic_code": "XNGS", "country": "United States", "type": "Common Stock"}
        for s in symbols]}).decode()


@pytest.mark.slow
def test_hostile_frames_are_set_aside_and_the_good_ticks_all_stored(tmp_path, schema_dsn, supervisors) -> None:
    started = time.monotonic()
    frames, good, hostile, kinds = hostile_plan()
    done = {"sent": 0}

    async def script(conn: ScriptedConn) -> None:
        await conn.send_text(subscribe_ok(conn.symbols()))
        if conn.number > 1:
            return  # a reconnect gets nothing: whatever the first connection did not deliver is lost
        for opcode, payload in frames:
            if opcode == "binary":
                await conn.send_binary(payload)
            else:
                await conn.send_text(payload)
            done["sent"] += 1

    cap_key = dead_letter_cap_key()
    cap = 1 << 20
    bound = 2 * cap + 512 * 1024 if cap_key else DEAD_LETTER_BOUND
    with ScriptedServer(script) as server:
        config = write_config(tmp_path, server.url, schema_dsn, {"s1": {"symbols": ["AAPL"]}},
                              defaults={"dead_letter_log_interval": "1s", **({cap_key: "1MiB"} if cap_key else {})})
        shard_dir = load_config(config).shard_dir("s1")
        sup = SupervisorRun(config, tmp_path / "supervisor.log")
        supervisors.append(sup)
        first = sup.wait_running(["s1"])["s1"]
        settle(lambda: done["sent"] == len(frames) and row_count(schema_dsn) >= len(good), 90)
        expected_dead = sum(kinds.values())
        shard = settle(lambda: (s := sup.try_status()) and s["s1"]["dead_letters"] >= expected_dead and s["s1"], 10) \
            or sup.status()["s1"]
        dead_bytes = sum(p.stat().st_size for p in shard_dir.glob("deadletters*"))
        assert sup.stop() == 0, sup.log()[-3000:]
        connections = server.connections
    stored = stored_keys(schema_dsn)
    hostile_stored = [k for k in hostile if stored.get(k)]
    for key in hostile_stored:
        del stored[key]  # reported on their own, not as duplicates
    result = tally("hostile-frames", [SentTick(1, 0.0, key, i) for i, key in enumerate(good)], stored, {},
                   lambda _: "s1")
    result.extra.update(hostile_frames=expected_dead, hostile_stored=len(hostile_stored),
                        dead_letters_counted=shard["dead_letters"], deadletter_bytes=dead_bytes,
                        deadletter_bound=bound, cap_key=cap_key or "none", connections=connections,
                        restarts=shard["restarts"], runtime=f"{time.monotonic() - started:.1f}s")
    message = report(result) + f"\nhostile frames sent: {kinds}"
    assert not server.errors, server.errors
    assert done["sent"] == len(frames), f"the server could not send its script ({done['sent']} of {len(frames)})\n" \
                                        + message
    problems = []
    if hostile_stored:
        problems.append(f"{len(hostile_stored)} hostile price event(s) stored (binary or oversized frames must be "
                        f"set aside, not parsed as events): {hostile_stored[:3]}")
    if shard["pid"] != first["pid"] or shard["restarts"]:
        problems.append(f"the worker did not survive: pid {first['pid']} -> {shard['pid']}, restarts "
                        f"{shard['restarts']}")
    if connections != 1:
        problems.append(f"the worker reconnected ({connections} connections): a bad frame must not cost the connection")
    if result.lost_outside or result.duplicated or result.stored != len(good):
        problems.append(f"good ticks: {len(good)} sent, {result.stored} stored, {result.lost_outside} lost, "
                        f"{result.duplicated} duplicated")
    if shard["dead_letters"] != expected_dead:
        problems.append(f"dead letters counted {shard['dead_letters']}, expected one per hostile frame: "
                        f"{expected_dead}")
    if dead_bytes > bound:
        what = f"the configured cap {cap_key} = 1MiB" if cap_key else (
            "no cap key in the config yet (a `dead_letter_max_bytes`-like shard setting would be read here)")
        problems.append(f"deadletters.jsonl holds {dead_bytes} bytes after {JUNK_FRAMES} junk frames of "
                        f"{JUNK_SIZE // 1024} KiB; bound {bound} ({what})")
    assert not problems, "\n".join(problems) + "\n" + message


# ------------------------------------------------------------------ 5. a server that echoes the API key

def test_an_echoed_api_key_appears_in_no_log_and_no_file_and_state_is_private(tmp_path, schema_dsn,
                                                                              supervisors) -> None:
    started = time.monotonic()
    api_key = "tdk_" + os.urandom(12).hex()
    ticks_per_conn = 20
    sent: list[tuple] = []
    quiet = {"on": False}

    async def script(conn: ScriptedConn) -> None:
        key = conn.key
        await conn.send_text(orjson.dumps({"event": "subscribe-status", "status": "error",
                                           "messages": [f"Invalid API key {key}: not authorised"]}))
        await conn.send_text(f"error: api key {key} is not valid for this endpoint")  # not JSON: a dead letter
        if not quiet["on"]:
            ts = int(time.time())
            for _ in range(ticks_per_conn):
                event = price_event("AAPL", round(200 + len(sent) * 0.01, 2), 5_000_000 + len(sent), ts)
                await conn.send_text(orjson.dumps(event))
                sent.append(("AAPL", ts, event["price"], event["day_volume"]))
        await conn.close(4003, f"invalid api key {key}")

    with ScriptedServer(script) as server:
        config = write_config(tmp_path, server.url, schema_dsn, {"s1": {"symbols": ["AAPL"]}},
                              source={"api_key_env": "FAULTS_ECHO_KEY"})
        state_dir = load_config(config).state_dir
        sup = SupervisorRun(config, tmp_path / "supervisor.log", env={"FAULTS_ECHO_KEY": api_key}, umask=0o022)
        supervisors.append(sup)
        settle(lambda: server.connections >= 3 and row_count(schema_dsn) >= 2 * ticks_per_conn
               and (state_dir / "shards" / "s1" / "deadletters.jsonl").exists(), 30)
        loose = loose_modes(state_dir)  # while everything is in place (run dir, journal, dead letters)
        status_text = orjson.dumps(sup.try_status() or {}).decode()
        quiet["on"] = True
        settle(lambda: row_count(schema_dsn) >= len(sent), 20)
        assert sup.stop() == 0, sup.log()[-3000:]
        connections = server.connections
    stored = stored_keys(schema_dsn)
    result = tally("api-key-echo", [SentTick(1, 0.0, key, i) for i, key in enumerate(sent)], stored, {},
                   lambda _: "s1")
    needle = api_key.encode()
    in_log = [line for line in sup.log().splitlines() if api_key in line]
    in_files = grep_files(state_dir, needle)
    result.extra.update(connections=connections, key_in_log_lines=len(in_log), key_in_files=len(in_files),
                        loose_modes=len(loose), runtime=f"{time.monotonic() - started:.1f}s")
    message = report(result)
    assert connections >= 3, "the scripted server was not reached as planned\n" + message
    problems = []
    if in_log:
        problems.append(f"the API key appears in {len(in_log)} log line(s), e.g. {in_log[0][:300]!r}")
    if in_files:
        problems.append(f"the API key appears in file(s) under the state dir: {in_files}")
    if api_key in status_text:
        problems.append("the API key appears in `shardctl status` (last_error)")
    if loose:
        problems.append("group/world permissions under the state dir (umask 022; expected 0700 directories and "
                        "0600 files under shards/): "
                        + "; ".join(loose[:12]) + (f"; ... {len(loose) - 12} more" if len(loose) > 12 else ""))
    assert not problems, "\n".join(problems) + "\n" + message
    assert result.duplicated == 0 and result.lost_outside == 0, message
