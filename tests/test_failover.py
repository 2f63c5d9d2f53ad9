"""A database that goes back in time under a running shard (issue 17): failover to an asynchronous standby,
and a restore of an older base backup. Real clusters of the machine's PostgreSQL 15 (``tests/pgpair.py``),
the real feed, a real supervisor and worker; tick by tick against the feed's sent log (``faultkit.tally``).

Failover: the worker's DSN names both hosts with ``target_session_attrs=read-write``. The standby is
stopped while the primary commits (it falls ``LAG`` seconds behind), the primary is killed, the standby
started and promoted: its ledger is behind what the worker saw committed. The worker must find that,
write the lost stretch again from its journal (kept for ``journal_retain``), and say so in its log,
``/metrics`` and its status. With the default retention nothing may be lost at all, and nothing
duplicated. Where TimescaleDB is installed, the same with the extension preloaded (hypertables).
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from typing import Any

import pytest
from faultkit import CRYPTO, SupervisorRun, TimedFeed, free_port, gap_rows, stored_keys, tally
from pgpair import PgPair, available, timescaledb_installed
from support import query, settle, wait_until, with_schema, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: Seconds the standby is stopped while the primary commits: what the failover rolls back.
LAG = 8.0
RATE = 2000
SHARD_OF = {s: "crypto" for s in CRYPTO}.__getitem__


@pytest.fixture
def pair_factory():
    made: list[PgPair] = []

    def make(**kwargs: Any) -> PgPair:
        why = available()
        if why:
            pytest.skip(why)
        pair = PgPair(**kwargs)
        made.append(pair)
        return pair

    yield make
    for pair in made:
        pair.close()


def start_shard(tmp_path, feed: TimedFeed, dsn: str, metrics_port: int, **settings: Any) -> SupervisorRun:
    config = write_config(tmp_path, feed.url, dsn, {"crypto": {"symbols": CRYPTO, "api_key_env": "FAILOVER_KEY"}},
                          defaults={"batch_size": 1000, "flush_interval": "1s", **settings},
                          supervisor={"metrics_port": metrics_port})
    sup = SupervisorRun(config, tmp_path / "supervisor.log", env={"FAILOVER_KEY": "key"})
    sup.wait_running(["crypto"], rows=1, timeout=60)
    return sup


def rows(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM crypto_ticks")[0][0])


def finish(sup: SupervisorRun, feed: TimedFeed, dsn: str, scenario: str, metrics_port: int) -> tuple[Any, str, str]:
    """Silence the feed, wait for every tick to be stored, stop; the tally, /metrics and the shard's status."""
    wait_until(lambda: (s := sup.try_status()) and s["crypto"]["database_rollbacks"] >= 1, 60, interval=0.2,
               what="the worker to find the database behind")
    feed.inject("silence", standing=True, seconds=600)

    def current() -> Any:
        return tally(scenario, feed.sent_ticks(), stored_keys(dsn), gap_rows(dsn), SHARD_OF,
                     open_conns=feed.connection_ids())

    def written() -> bool:  # every tick stored, or (a stretch lost inside a gap) nothing left to write
        shard = sup.status()["crypto"]
        idle = shard["journal_backlog"] == 0 and not shard["catching_up"] and shard["pending_rows"] == 0
        return current().open_missing == 0 or idle

    settle(written, 60)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    status = sup.status()["crypto"]
    assert sup.stop() == 0, sup.log()[-3000:]
    return current(), metrics, str(status.get("last_rollback"))


def check(result: Any, metrics: str, last_rollback: str, log: str, *, retained: bool = True) -> None:
    message = result.details() + "\n" + log[-4000:]
    assert result.duplicated == 0, message
    assert result.lost_outside == 0 and result.open_missing == 0, message
    if retained:
        assert result.lost_in_gaps == 0, "the default retention holds the rolled-back stretch\n" + message
    else:
        assert result.lost_in_gaps > 0 and "recorded as a gap" in last_rollback, message
    assert "ERROR" in log and "the database went back in time" in log, message
    assert 'shardctl_database_rollbacks_total{shard="crypto"} 1.0' in metrics, metrics
    assert "written again from the journal" in last_rollback, last_rollback


def test_a_retention_shorter_than_the_lag_leaves_a_gap_naming_the_rollback(tmp_path, pair_factory) -> None:
    """``journal_retain`` 1 s against 8 s of lag: what the journal no longer holds is a recorded gap."""
    started = time.monotonic()
    pair = pair_factory()
    with_schema(pair.primary_dsn())
    pair.wait_in_step()
    metrics_port = free_port()
    with TimedFeed(rate=RATE, symbols=CRYPTO, seed=1719) as feed:
        sup = start_shard(tmp_path, feed, pair.dsn, metrics_port, journal_retain="1s")
        try:
            pair.stop("standby")
            time.sleep(LAG)
            pair.stop("primary", "immediate")
            pair.start("standby")
            pair.promote()
            dsn = pair.primary_dsn(pair.standby_port)
            result, metrics, last_rollback = finish(sup, feed, dsn, "failover-short-retention", metrics_port)
            gaps = gap_rows(dsn)["crypto"]
        finally:
            sup.close()
    result.extra.update(retain="1s", lag=f"{LAG:g}s", runtime=f"{time.monotonic() - started:.1f}s")
    print("\n" + result.line(), flush=True)
    check(result, metrics, last_rollback, sup.log(), retained=False)
    assert any(reason.startswith("database went back in time") for _, _, reason in gaps), gaps


@pytest.mark.parametrize("extension", ["postgresql", "timescaledb"])
def test_failover_to_a_standby_8s_behind_loses_and_duplicates_nothing(tmp_path, pair_factory, extension) -> None:
    if extension == "timescaledb" and not timescaledb_installed():
        pytest.skip("TimescaleDB is not installed into PostgreSQL 15 (../shared/tools/timescaledb build)")
    started = time.monotonic()
    pair = pair_factory(timescaledb=extension == "timescaledb")
    assert with_schema(pair.primary_dsn()) == extension
    pair.wait_in_step()
    metrics_port = free_port()
    with TimedFeed(rate=RATE, symbols=CRYPTO, seed=1717) as feed:
        sup = start_shard(tmp_path, feed, pair.dsn, metrics_port)
        try:
            pair.stop("standby")  # from now on the primary commits what the standby never sees
            time.sleep(LAG)
            on_primary = rows(pair.primary_dsn())
            pair.stop("primary", "immediate")
            killed_at = time.monotonic()
            pair.start("standby")
            pair.promote()
            promoted_after = time.monotonic() - killed_at
            on_standby = rows(pair.primary_dsn(pair.standby_port))
            result, metrics, last_rollback = finish(sup, feed, pair.primary_dsn(pair.standby_port),
                                                    f"failover-{extension}", metrics_port)
        finally:
            sup.close()
    log = sup.log()
    result.extra.update(rolled_back_rows=on_primary - on_standby, lag=f"{LAG:g}s", rate=f"{RATE}/s",
                        promoted_after=f"{promoted_after:.1f}s", runtime=f"{time.monotonic() - started:.1f}s")
    print("\n" + result.line(), flush=True)
    assert on_primary - on_standby > RATE * LAG / 2, "the standby did not fall behind as planned\n" + result.line()
    check(result, metrics, last_rollback, log)


def check_restore(result: Any, metrics: str, last_rollback: str, log: str, rolled_back: int,
                  started: float) -> None:
    """Print the scenario's line; the restore went back more than a second of ticks, and ``check`` holds."""
    result.extra.update(rolled_back_rows=rolled_back, runtime=f"{time.monotonic() - started:.1f}s")
    print("\n" + result.line(), flush=True)
    assert rolled_back > RATE, "the restore did not go back as planned\n" + result.line()
    check(result, metrics, last_rollback, log)


def test_a_restore_of_an_older_base_backup_under_a_running_worker_is_written_again(tmp_path, pair_factory) -> None:
    started = time.monotonic()
    pair = pair_factory()
    with_schema(pair.primary_dsn())
    pair.stop("standby")  # not part of this scenario
    metrics_port = free_port()
    backup = pair.root / "backup"
    with TimedFeed(rate=RATE, symbols=CRYPTO, seed=1718) as feed:
        sup = start_shard(tmp_path, feed, pair.primary_dsn(), metrics_port)
        try:
            time.sleep(1.0)
            pair.base_backup(backup)  # the backup everything after which the restore loses
            time.sleep(4.0)
            on_primary = rows(pair.primary_dsn())
            pair.stop("primary", "immediate")
            pair.restore(backup)
            on_restored = rows(pair.primary_dsn())
            result, metrics, last_rollback = finish(sup, feed, pair.primary_dsn(), "restore", metrics_port)
        finally:
            sup.close()
            shutil.rmtree(backup, ignore_errors=True)
    check_restore(result, metrics, last_rollback, sup.log(), on_primary - on_restored, started)


def test_a_restore_while_the_shard_is_stopped_is_found_at_its_next_start(tmp_path, pair_factory) -> None:
    """The worker stops cleanly (its journal all committed), the database is restored to an older backup, the
    worker starts again: the journal's committed.mark is ahead of the ledger, and the stretch is written again."""
    started = time.monotonic()
    pair = pair_factory()
    with_schema(pair.primary_dsn())
    pair.stop("standby")
    metrics_port = free_port()
    backup = pair.root / "backup"
    with TimedFeed(rate=RATE, symbols=CRYPTO, seed=1720) as feed:
        sup = start_shard(tmp_path, feed, pair.primary_dsn(), metrics_port)
        try:
            time.sleep(1.0)
            pair.base_backup(backup)
            time.sleep(3.0)
            assert sup.stop() == 0, sup.log()[-3000:]
            sup.close()
            on_primary = rows(pair.primary_dsn())
            pair.stop("primary")
            pair.restore(backup)
            on_restored = rows(pair.primary_dsn())
            sup = start_shard(tmp_path, feed, pair.primary_dsn(), metrics_port)
            result, metrics, last_rollback = finish(sup, feed, pair.primary_dsn(), "restore-while-stopped",
                                                    metrics_port)
        finally:
            sup.close()
            shutil.rmtree(backup, ignore_errors=True)
    check_restore(result, metrics, last_rollback, sup.log(), on_primary - on_restored, started)
