"""Leases across hosts, piece by piece: the tracker and the shard machine on a fake clock, the config,
the fence in the writer's transaction on a real PostgreSQL, and the lease store's compare-and-set.

The whole (real supervisors, real workers, a real feed, hosts killed and cut off) is in test_hosts.py.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from conftest import write_config_file
from support import execute, query

from shardctl.config import check_config
from shardctl.config.model import SupervisorConfig
from shardctl.db.leases import Fence, LeaseRow, LeaseStore
from shardctl.db.writer import Writer
from shardctl.errors import EXIT_FENCED, ShardFenced
from shardctl.report import Role, ShardState, ShardStatus
from shardctl.rows import Tick
from shardctl.supervisor.lease import Act, LeaseTracker
from shardctl.supervisor.states import ShardMachine

TTL = 8.0


def row(owner: str | None, epoch: int, heartbeat: int | None = 1, move_to: str | None = None) -> LeaseRow:
    return LeaseRow("crypto", owner, epoch, move_to, heartbeat)


# ------------------------------------------------------------------ the tracker, on a fake clock

def test_a_free_shard_is_acquired_and_started() -> None:
    t = LeaseTracker("crypto", "a", TTL)
    assert t.observe(0.0, None).act is Act.ACQUIRE
    d = t.acquired(1)
    assert (d.act, d.epoch, t.role) == (Act.START, 1, Role.OWNER)
    assert t.observe(1.0, row("a", 1)).act is Act.NONE


def test_standby_takes_over_only_after_the_heartbeat_stood_still_for_the_ttl() -> None:
    t = LeaseTracker("crypto", "b", TTL)
    now = 0.0
    for beat in range(1, 20):  # the owner renews every second: never a takeover
        assert t.observe(now, row("a", 3, heartbeat=beat)).act is Act.NONE
        now += 1.0
    assert t.role is Role.STANDBY
    # the owner dies: its counter stays at 19
    decisions = []
    for _ in range(10):
        decisions.append((now, t.observe(now, row("a", 3, heartbeat=19)).act))
        now += 1.0
    first = next(at for at, act in decisions if act is Act.ACQUIRE)
    assert first == pytest.approx(18.0 + TTL)  # counter 19 was first seen at 18 s
    d = t.observe(now, row("a", 3, heartbeat=19))
    assert (d.act, d.expected_epoch) == (Act.ACQUIRE, 3)


def test_a_database_outage_restarts_the_watch_so_the_owner_keeps_its_shard() -> None:
    t = LeaseTracker("crypto", "b", TTL)
    t.observe(0.0, row("a", 3, heartbeat=5))
    for second in range(1, 60):  # a minute without the database, for everyone
        t.database_failed(float(second))
    # back: the counter has not moved yet (the owner renews within a second), and no takeover happens
    assert t.observe(60.0, row("a", 3, heartbeat=5)).act is Act.NONE
    assert t.observe(61.0, row("a", 3, heartbeat=6)).act is Act.NONE
    assert t.observe(61.0 + TTL - 0.5, row("a", 3, heartbeat=6)).act is Act.NONE


def test_an_owner_that_finds_another_owner_stands_by_and_does_not_take_it_back() -> None:
    t = LeaseTracker("crypto", "a", TTL)
    t.observe(0.0, None)
    t.acquired(1)
    d = t.observe(40.0, row("b", 2, heartbeat=7))  # cut off; b took over meanwhile
    assert (d.act, t.role) == (Act.STAND_BY, Role.STANDBY)
    for second in range(41, 80):  # b stays alive: a stays a standby (no flapping)
        assert t.observe(float(second), row("b", 2, heartbeat=second)).act is Act.NONE


def test_a_lost_race_watches_again() -> None:
    t = LeaseTracker("crypto", "b", TTL)
    t.observe(0.0, row("a", 3, heartbeat=5))
    assert t.observe(TTL, row("a", 3, heartbeat=5)).act is Act.ACQUIRE
    t.lost_race()
    assert t.observe(TTL + 1, row("c", 4, heartbeat=1)).act is Act.NONE


def test_move_drains_then_hands_over() -> None:
    t = LeaseTracker("crypto", "a", TTL)
    t.observe(0.0, None)
    t.acquired(1)
    d = t.observe(1.0, row("a", 1, move_to="b"))
    assert (d.act, d.to, t.role) == (Act.DRAIN, "b", Role.HANDING_OVER)
    assert t.observe(2.0, row("a", 1, move_to="b")).act is Act.NONE  # still draining
    t.drained()
    d = t.observe(3.0, row("a", 1, move_to="b"))
    assert (d.act, d.epoch, d.to) == (Act.HAND_OVER, 1, "b")
    t.handed_over()
    assert t.observe(4.0, row("b", 2, heartbeat=9)).act is Act.NONE
    # on b: the lease names b now; it takes a fresh epoch and starts
    tb = LeaseTracker("crypto", "b", TTL)
    tb.observe(0.0, row("a", 1, move_to="b"))
    d = tb.observe(4.0, row("b", 2, heartbeat=9))
    assert (d.act, d.expected_epoch) == (Act.ACQUIRE, 2)


def test_a_restarted_supervisor_takes_its_own_lease_with_a_new_epoch() -> None:
    t = LeaseTracker("crypto", "a", TTL)
    d = t.observe(0.0, row("a", 5))
    assert (d.act, d.expected_epoch) == (Act.ACQUIRE, 5)


def test_two_supervisors_with_one_host_id_do_not_fight() -> None:
    t = LeaseTracker("crypto", "a", TTL)
    t.observe(0.0, None)
    t.acquired(1)
    d = t.observe(1.0, row("a", 2))  # the other "a" bumped the epoch
    assert d.act is Act.STAND_BY and t.conflict and "unique" in d.reason
    assert t.observe(2.0, row("a", 2, heartbeat=2)).act is Act.NONE
    assert t.observe(3.0, row("a", 2, heartbeat=3)).act is Act.NONE


def test_an_owner_whose_lease_went_back_in_time_takes_a_new_epoch_instead_of_standing_by() -> None:
    """A failover to an asynchronous standby rolled the lease row back from epoch 7 to 5: still ours."""
    t = LeaseTracker("crypto", "a", TTL)
    t.observe(0.0, row("a", 6))
    assert t.acquired(7).act is Act.START
    d = t.observe(1.0, row("a", 5))
    assert (d.act, d.expected_epoch) == (Act.ACQUIRE, 5) and not t.conflict
    assert "went back" in d.reason
    assert t.acquired(6).act is Act.START and t.role is Role.OWNER
    assert t.observe(2.0, row("a", 6)).act is Act.NONE


def test_a_lease_that_went_back_to_another_host_is_theirs_and_they_take_it() -> None:
    """The older row names b (a took the shard over during the lag): a stands by, b re-acquires."""
    a, b = LeaseTracker("crypto", "a", TTL), LeaseTracker("crypto", "b", TTL)
    a.observe(0.0, row("a", 3))
    a.acquired(4)
    b.observe(0.0, row("a", 4))  # b stood by when a took the shard
    assert a.observe(1.0, row("b", 3)).act is Act.STAND_BY
    d = b.observe(1.0, row("b", 3))
    assert (d.act, d.expected_epoch) == (Act.ACQUIRE, 3)


def test_a_lease_that_went_back_to_a_dead_host_is_taken_over_after_the_ttl() -> None:
    a = LeaseTracker("crypto", "a", TTL)
    a.observe(0.0, row("a", 3))
    a.acquired(4)
    assert a.observe(1.0, row("b", 3, heartbeat=9)).act is Act.STAND_BY
    assert a.observe(2.0, row("b", 3, heartbeat=9)).act is Act.NONE
    d = a.observe(2.0 + TTL, row("b", 3, heartbeat=9))
    assert (d.act, d.expected_epoch) == (Act.ACQUIRE, 3)


# ------------------------------------------------------------------ the shard machine's STANDBY

def machine() -> ShardMachine:
    return ShardMachine("crypto", SupervisorConfig(start_grace=1.0, heartbeat_timeout=5.0, restart_initial=1.0,
                                                   restart_max=4.0, max_failures=3, failure_window=60.0),
                        rng=lambda: 0.5)


def test_standby_then_lease_then_lost_then_standby() -> None:
    m = machine()
    assert m.stand_by(0.0, "waiting for the lease") is False
    assert (m.state, m.wanted) == (ShardState.STANDBY, True)
    m.spawned(1.0, reason="lease acquired")
    m.ready(1.5)
    assert m.stand_by(2.0, "b holds the lease now") is True
    assert m.state is ShardState.STOPPING
    m.exited(3.0, 0)
    assert m.state is ShardState.STANDBY and "b holds" in m.reason
    assert m.failures_in_window(3.0) == 0


def test_a_fenced_exit_is_standby_not_a_failure() -> None:
    m = machine()
    m.stand_by(0.0, "waiting")
    m.spawned(1.0)
    m.ready(1.1)
    m.exited(2.0, EXIT_FENCED)
    assert m.state is ShardState.STANDBY and "fenced" in m.reason
    assert m.failures_in_window(2.0) == 0


def test_standby_stops_for_the_operator_and_backoff_stands_by() -> None:
    m = machine()
    m.stand_by(0.0, "waiting")
    assert m.stop_requested(1.0) is False
    assert (m.state, m.wanted) == (ShardState.STOPPED, False)
    m.spawned(2.0, manual=True)
    m.exited(2.5, 1)
    assert m.state is ShardState.BACKOFF
    assert m.stand_by(3.0, "lost") is False
    assert m.state is ShardState.STANDBY


# ------------------------------------------------------------------ config

def test_cluster_config_is_validated(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SHARDCTL_HOST_ID", raising=False)
    path = write_config_file(tmp_path, """
        [source]
        url = "ws://127.0.0.1:1/v1/quotes/price"
        [cluster]
        host_id = "bad host"
        lease_ttl = "2s"
        renew_interval = "1s"
        [shards.a]
        symbols = ["A"]
        [shards.b]
        symbols = ["B"]
        """)
    _, problems, _ = check_config(path)
    text = "\n".join(str(p) for p in problems)
    assert f"{path}: cluster.host_id: " in text and "set one per host" in text
    assert f"{path}: cluster.lease_ttl: " in text and "4 × renew_interval" in text
    assert f"{path}: shards.b.api_key_env: " in text and "its own key" in text
    assert all("\n" not in str(p) for p in problems)


def test_host_id_comes_from_the_environment_first(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SHARDCTL_HOST_ID", "pod-1")
    path = write_config_file(tmp_path, """
        [source]
        url = "ws://127.0.0.1:1/v1/quotes/price"
        [cluster]
        host_id = "from-file"
        [shards.a]
        symbols = ["A"]
        """)
    config, problems, _ = check_config(path)
    assert not problems and config is not None and config.cluster is not None
    assert (config.cluster.host_id, config.cluster.lease_ttl, config.cluster.renew_interval) == ("pod-1", 8.0, 1.0)


def test_without_cluster_nothing_changes(tmp_path) -> None:
    path = write_config_file(tmp_path, """
        [source]
        url = "ws://127.0.0.1:1/v1/quotes/price"
        [shards.a]
        symbols = ["A"]
        [shards.b]
        symbols = ["B"]
        """)
    config, problems, _ = check_config(path)
    assert not problems and config is not None and config.cluster is None


def test_shard_status_carries_the_cluster_view() -> None:
    status = ShardStatus(name="crypto", state=ShardState.STANDBY, host_id="b", lease_role=Role.STANDBY, lease_owner="a",
                         lease_epoch=4, standby_hosts=("b", "c"), lease_database_ok=True)
    back = ShardStatus.from_json(status.to_json())
    assert back == status
    assert ShardStatus.from_json({"name": "x", "state": "RUNNING"}).standby_hosts == ()


# ------------------------------------------------------------------ the fence, on a real PostgreSQL

def _tick(n: int) -> Tick:
    return Tick(datetime(2024, 5, 1, 12, 0, n, tzinfo=timezone.utc), "BTC/USD", 60000.0 + n, n, None, None)


def test_a_fenced_writer_commits_nothing(schema_dsn, tables) -> None:
    execute(schema_dsn, "INSERT INTO shardctl_leases (shard, owner, epoch) VALUES ('crypto', 'a', 1)")
    old = Writer(schema_dsn, tables, "crypto", fence=Fence("a", 1))
    try:
        assert old.lease_start().committed_host is None
        assert old.write(10, [_tick(1)], journal_offset=10, received_at=datetime.now(timezone.utc))
        # b takes the lease over (what its supervisor's compare-and-set does)
        execute(schema_dsn, "UPDATE shardctl_leases SET owner = 'b', epoch = 2 WHERE shard = 'crypto'")
        with pytest.raises(ShardFenced):
            old.write(20, [_tick(2)], journal_offset=20)
        new = Writer(schema_dsn, tables, "crypto", fence=Fence("b", 2))
        try:
            start = new.lease_start()
            assert start.committed_host == "a" and start.committed_received_at is not None
            assert new.write(30, [_tick(3)], journal_offset=30)  # no advisory lock: both sessions may be open
        finally:
            new.close()
        with pytest.raises(ShardFenced):
            old.write(40, [_tick(4)], journal_offset=40)
        with pytest.raises(ShardFenced):
            old.lease_start()
    finally:
        old.close()
    assert query(schema_dsn, "SELECT count(*) FROM crypto_ticks")[0][0] == 2
    assert query(schema_dsn, "SELECT last_seq FROM shardctl_ledger WHERE shard = 'crypto'")[0][0] == 30
    assert query(schema_dsn, "SELECT committed_host, committed_epoch FROM shardctl_leases")[0] == ("b", 2)


def test_lease_store_compare_and_set(schema_dsn) -> None:
    async def scenario() -> None:
        a, b = LeaseStore(schema_dsn, "a"), LeaseStore(schema_dsn, "b")
        try:
            assert await a.renew(1) == 1 and await a.renew(1) == 2
            assert await a.acquire("crypto", None) == 1
            assert await b.acquire("crypto", None) is None  # the row exists now: b lost
            view = await b.view(["crypto", "stocks"], 8.0)
            assert view.leases["crypto"] == LeaseRow("crypto", "a", 1, None, 2)
            assert "stocks" not in view.leases and view.hosts["a"].fresh
            assert await b.acquire("crypto", 1) == 2      # b's takeover at the epoch it saw
            assert await a.acquire("crypto", 1) is None   # a's stale compare-and-set loses
            assert await b.request_move("crypto", "a") == "b"
            assert await a.hand_over("crypto", 2, "b") is False  # not a's to give
            assert await b.hand_over("crypto", 2, "a") is True
            view = await a.view(["crypto"], 8.0)
            assert (view.leases["crypto"].owner, view.leases["crypto"].epoch) == ("a", 3)
        finally:
            a.close()
            b.close()

    asyncio.run(scenario())
