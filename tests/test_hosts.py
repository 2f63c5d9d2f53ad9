"""Across hosts (issue 13): real supervisors as two "hosts", real workers, the real feed and PostgreSQL.

Each host is a ``shardctl start`` with its own config file, state directory
and ``$SHARDCTL_HOST_ID``, against one database, with ``[cluster]`` at the
documented defaults (lease_ttl 8 s, renew_interval 1 s). Two shards, each
with its own API key. Each scenario compares what the feed sent with what
the database holds, tick by tick (``faultkit.tally``), samples the feed's
open sockets per key every 10 ms, and prints one line::

    [hosts:NAME] sent S, stored N, lost inside gaps I, lost outside gaps O, duplicated D, ...,
                 max sockets per key K, takeover median M max X over R

Promises checked: duplicated == 0, lost outside gaps == 0, at most 1 socket
per key while the hosts agree (2 during a takeover at most), standbys open
none, takeover within 15 s of a kill -9 of every process of the active host.
The cut-link scenarios, which need network namespaces, are not here yet
(see the README, "Across hosts").
"""

from __future__ import annotations

import os
import time

import pytest
from faultkit import TimedFeed, gap_rows, settle, stored_keys, tally
from hostkit import SHARD_OF, SHARDS, SYMBOLS, Host, Scenario, SocketWatch

from shardctl.report import ShardStatus
from shardctl.supervisor.cli import format_status
from shardctl.supervisor.http.metrics import health, render

#: Two real supervisors per test, takeovers of several seconds: not in the quick loop (`-m "not slow"`).
pytestmark = pytest.mark.slow

#: The issue's bound for a kill; the design's is ttl 8 s + 1 s (rounds) + 1 s (watch granularity) + start.
TAKEOVER_BOUND = 15.0
RATE = 200  # ticks/s per connection


@pytest.fixture
def hosts(tmp_path):
    made: list[Host] = []

    def make(host_id: str, url: str, dsn: str) -> Host:
        host = Host(host_id, tmp_path, url, dsn)
        made.append(host)
        return host

    yield make
    for host in made:
        host.close()


def finish(feed: TimedFeed, dsn: str, scenario: Scenario, watch: SocketWatch) -> None:
    """Silence the feed, wait until every tick on the open connections is stored, tally and assert."""
    feed.inject("silence", standing=True, seconds=600)

    def current():
        return tally(scenario.name, feed.sent_ticks(), stored_keys(dsn), gap_rows(dsn), SHARD_OF,
                     open_conns=feed.connection_ids())

    def complete():
        t = current()
        return t if not t.open_missing else None

    result = settle(complete, 30) or current()
    line = scenario.line(result.line(), watch.peak)
    problems = []
    if result.duplicated:
        problems.append(f"{result.duplicated} duplicated")
    if result.lost_outside:
        problems.append(f"{result.lost_outside} lost outside every gap")
    if result.open_missing:
        problems.append(f"{result.open_missing} sent on a live connection, never stored")
    if watch.peak > 3:
        problems.append(f"{watch.peak} sockets on one key")
    assert not problems, "; ".join(problems) + "\n" + line + "\n" + result.details()


def start_pair(hosts, feed: TimedFeed, dsn: str) -> tuple[Host, Host]:
    a, b = hosts("host-a", feed.url, dsn), hosts("host-b", feed.url, dsn)
    a.start()
    a.wait(a.streams(), 30, "streaming both shards")
    b.start()
    b.wait(b.stands_by("host-a"), 30, "standing by")
    return a, b


#: The issue's figure (median and max over 10 takeovers) needs SHARDCTL_TAKEOVER_REPS=10, about 2 minutes
#: on its own; the default run kills and takes over twice, which covers the same paths.
TAKEOVER_REPS = int(os.environ.get("SHARDCTL_TAKEOVER_REPS", "2"))


@pytest.mark.timeout(60 + 30 * TAKEOVER_REPS)
@pytest.mark.parametrize("reps", [TAKEOVER_REPS])
def test_kill_every_process_of_the_active_host(hosts, schema_dsn, reps) -> None:
    """kill -9 of the active host's supervisor and workers; the other takes over; the killed one comes back
    as a standby (no flapping), and is the next victim's successor."""
    scenario = Scenario(f"kill x{reps}")
    with TimedFeed(rate=RATE, symbols=SYMBOLS, seed=13) as feed, SocketWatch(feed) as watch:
        active, standby = start_pair(hosts, feed, schema_dsn)
        assert watch.now() == {"key-crypto": 1, "key-stocks": 1}  # the standby opened no socket
        for _ in range(reps):
            time.sleep(1.5)  # some ticks committed, some in flight
            active.kill_everything()
            killed_at = time.monotonic()
            standby.wait(standby.streams(), 30, "taking over")
            scenario.takeovers.append(time.monotonic() - killed_at)
            active.start()  # back: stands by, takes nothing back
            active.wait(active.stands_by(standby.host_id), 30, "standing by after its return")
            assert watch.now() == {"key-crypto": 1, "key-stocks": 1}
            active, standby = standby, active
        finish(feed, schema_dsn, scenario, watch)
    assert max(scenario.takeovers) <= TAKEOVER_BOUND, scenario.takeovers
    reasons = {g[2] for gaps in gap_rows(schema_dsn).values() for g in gaps}
    assert any(r.startswith("takeover from host-") for r in reasons), reasons


def test_operator_moves_a_shard_gracefully(hosts, schema_dsn) -> None:
    """``shardctl move crypto --to host-b``: a drains and commits, then b streams it; stocks stay on a."""
    scenario = Scenario("move")
    with TimedFeed(rate=RATE, symbols=SYMBOLS, seed=14) as feed, SocketWatch(feed) as watch:
        a, b = start_pair(hosts, feed, schema_dsn)
        time.sleep(1.5)
        assert b.run is not None
        started = time.monotonic()
        answer = b.run.client.request("move", "crypto", to="host-b", wait=40, timeout=60)
        moved = time.monotonic() - started
        assert answer["from"] == "host-a" and answer["to"] == "host-b"
        b.wait(b.streams(["crypto"]), 20, "streaming crypto")
        a.wait(lambda s: s["crypto"]["state"] == "STANDBY" and s["stocks"]["state"] == "RUNNING"
               and s["stocks"]["lease_owner"] == "host-a", 20, "standing by for crypto only")
        time.sleep(1.0)
        scenario.lines.append(f"move took {moved:.1f}s")
        finish(feed, schema_dsn, scenario, watch)
        print(f"[hosts:move] the move took {moved:.1f}s", flush=True)
    assert watch.peak == 1  # the old owner closed its socket before the new one opened
    gaps = gap_rows(schema_dsn).get("crypto", [])
    assert [g[2] for g in gaps if g[2].startswith("takeover")] == ["takeover from host-a"]


def test_a_database_outage_is_not_a_death(hosts, schema_dsn, pg_server) -> None:
    """The database goes away for everyone for longer than the TTL: nobody takes over, the owner keeps its
    shards, its journal holds the backlog, and nothing is lost."""
    scenario = Scenario("database restart")
    with TimedFeed(rate=RATE, symbols=SYMBOLS, seed=15) as feed, SocketWatch(feed) as watch:
        a, b = start_pair(hosts, feed, schema_dsn)
        epochs = {n: s["lease_epoch"] for n, s in a.wait(a.streams(), 10, "streaming").items()}
        time.sleep(1.0)
        pg_server.stop()
        time.sleep(15.0)  # ~2 × the TTL
        pg_server.start()
        time.sleep(12.0)  # the TTL again, with the database answering: still no takeover
        status = a.wait(a.streams(), 30, "still streaming both shards")
        assert {n: s["lease_epoch"] for n, s in status.items()} == epochs
        b.wait(b.stands_by("host-a"), 10, "still standing by")
        finish(feed, schema_dsn, scenario, watch)
    assert watch.peak == 1
    assert not [g for gaps in gap_rows(schema_dsn).values() for g in gaps if g[2].startswith("takeover")]


def test_shards_are_listed_in_status_metrics_and_healthz(hosts, schema_dsn) -> None:
    """Every host's status names the streaming host and the standbys; /healthz is 200 on a standby too."""
    with TimedFeed(rate=50, symbols=SYMBOLS, seed=16) as feed:
        a, b = hosts("host-a", feed.url, schema_dsn), hosts("host-b", feed.url, schema_dsn)
        a.start()
        a.wait(a.streams(), 30, "streaming")
        b.start()
        status = b.wait(b.stands_by("host-a"), 30, "standing by")
        for name in SHARDS:
            assert status[name]["standby_hosts"] == ["host-b"] and status[name]["host_id"] == "host-b"
        status = a.wait(lambda s: all(s[n]["standby_hosts"] == ["host-b"] for n in SHARDS), 10, "seeing b")
        shards = [ShardStatus.from_json(s) for s in b.run.status().values()]  # type: ignore[union-attr]
        table = format_status(shards)
        assert "STREAMED BY" in table and "host-a@" in table and "host-b" in table
        assert health(shards) == (True, [])
        metrics = render(lambda: shards).decode()
        assert 'shardctl_shard_host{host="host-a",role="streaming",shard="crypto"} 1.0' in metrics
        assert 'shardctl_shard_host{host="host-b",role="standby",shard="crypto"} 1.0' in metrics
