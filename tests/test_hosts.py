"""Across hosts (issue 13): real supervisors as two "hosts", real workers, the real feed and PostgreSQL.

Each host is a ``shardctl start`` with its own config file, state directory
and ``$SHARDCTL_HOST_ID``, against one database, with ``[cluster]`` at the
documented defaults (lease_ttl 8 s, renew_interval 1 s). Two shards, each
with its own API key.

Where: as root (CI), each host runs in a network namespace of the test's own
and reaches the feed and a PostgreSQL of the test's own over two veth links
of its own (``netkit``), which the cut-link scenarios cut. Elsewhere, and
with ``SHARDCTL_TEST_DSN`` (the TimescaleDB run), both hosts share loopback
and the session's database, and the cut-link scenarios skip with the reason.

Each scenario compares what the feed sent with what the database holds,
tick by tick (``faultkit.tally``), samples the feed's open sockets per key
every 10 ms, and prints one line::

    [hosts:NAME] sent S, stored N, lost inside gaps I, lost outside gaps O, duplicated D, ...,
                 max sockets per key K, takeover median M max X over R

The hosts run with backfill on (gaps of 1 s and more); the cut-link
scenarios check that every takeover gap is filled from the feed's REST.

Promises checked: duplicated == 0, lost outside gaps == 0, at most 3
sockets per key (1 while the hosts agree, 2 while a cut-off host still
holds its socket), standbys open none; takeover within 15 s of a kill -9 of
every process of the active host and within 30 s of a cut link.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path

import netkit
import pytest
from faultkit import TimedFeed, gap_rows, stored_keys, tally
from hostkit import (
    SHARD_OF,
    SHARDS,
    SYMBOLS,
    Host,
    LoopbackSite,
    NamespaceSite,
    Scenario,
    Site,
    SocketWatch,
    superseded,
)
from support import holds_for, settle

from shardctl.db.connection import connect
from shardctl.db.gaps import Gap, list_gaps
from shardctl.report import ShardStatus
from shardctl.supervisor.cli import format_status
from shardctl.supervisor.http.metrics import health, render

#: Two real supervisors per test, takeovers of several seconds: not in the quick loop (`-m "not slow"`).
pytestmark = pytest.mark.slow

#: The issue's bound for a kill; the design's is ttl 8 s + 1 s (rounds) + 1 s (watch granularity) + start.
TAKEOVER_BOUND = 15.0
RATE = 200  # ticks/s per connection


@pytest.fixture(scope="module")
def network():
    """Two hosts' network namespaces and a PostgreSQL on their links, or None where that cannot be made."""
    why = netkit.unavailable()
    if os.environ.get("SHARDCTL_TEST_DSN"):
        why = "the hosts use SHARDCTL_TEST_DSN's server over loopback (only a server of the test's own can " \
              "listen on the namespaces' links; the embedded run cuts them)"
    if why:
        yield why
        return
    with contextlib.ExitStack() as stack:
        net = netkit.Network()
        stack.callback(net.close)
        postgres = netkit.LinkPostgres(Path(tempfile.mkdtemp(prefix="shardctl-")), net.db_addresses,
                                       net.host_addresses)
        stack.callback(postgres.close)
        postgres.start()
        yield net, postgres


@pytest.fixture
def site(request, network):
    if isinstance(network, str):
        yield LoopbackSite(request.getfixturevalue("schema_dsn"), request.getfixturevalue("pg_server"), network)
        return
    net, postgres = network
    net.heal()
    postgres.ensure_running()  # an earlier test may have failed with it stopped, or a link cut
    made = NamespaceSite(net, postgres, f"t_{secrets.token_hex(6)}")
    yield made
    made.close()


@pytest.fixture
def hosts(tmp_path, site):
    made: list[Host] = []

    def make(host_id: str, feed: TimedFeed) -> Host:
        host = Host(host_id, tmp_path, site.place(host_id, feed))
        made.append(host)
        return host

    try:
        yield make
    finally:
        try:
            site.heal()
        finally:
            for host in made:
                host.close()


def finish(feed: TimedFeed, site: Site, scenario: Scenario, watch: SocketWatch, *,
           new_owner: str | None = None) -> None:
    """Silence the feed, wait until every tick on the open connections is stored, tally and assert.

    ``new_owner``: the host that took over from a cut-off one; what the feed sent other hosts after it
    connected is counted apart (``hostkit.superseded``), and none of it may be stored.
    """
    feed.inject("silence", standing=True, seconds=600)
    dsn = site.dsn

    def current():
        kept, dropped = feed.sent_ticks(), []
        if new_owner:
            kept, dropped = superseded(kept, feed, site.host_of, new_owner)
        stored = stored_keys(dsn)
        late = Counter(t.key for t in dropped) & stored
        open_conns = feed.connection_ids()
        if new_owner:  # a cut-off host's socket may linger at the feed; nothing on it can be stored
            open_conns = [c for c in open_conns if site.host_of(feed.peers[c][0]) in (new_owner, None)]
        result = tally(scenario.name, kept, stored - late, gap_rows(dsn), SHARD_OF, open_conns=open_conns)
        if dropped:
            result.extra["sent to the cut-off host after the new owner connected"] = len(dropped)
            result.extra["of which stored"] = sum(late.values())
        return result

    def complete():
        t = current()
        return t if not t.open_missing else None

    result = settle(complete, 30) or current()
    line = scenario.line(result.line(), watch.peak)
    problems = result.problems()
    if result.extra.get("of which stored"):
        problems.append(f"the cut-off host committed {result.extra['of which stored']} tick(s) after the takeover")
    if watch.peak > 3:
        problems.append(f"{watch.peak} sockets on one key")
    if feed.stats().evicted:
        problems.append(f"the feed closed {feed.stats().evicted} socket(s) for a 4th on their key")
    assert not problems, "; ".join(problems) + "\n" + line + "\n" + result.details()


def takeover_gaps(dsn: str) -> list[Gap]:
    conn = connect(dsn)
    try:
        return [g for g in list_gaps(conn) if g.reason.startswith("takeover from ")]
    finally:
        conn.close()


def backfilled(dsn: str, takeovers: list[Gap]) -> None:
    """Every takeover gap gets filled with one-minute bars from the feed's REST ``time_series``.

    A gap is filled once its last minute is over (plus ``settle``): up to 61 s after it ends.
    """
    ids = {g.id for g in takeovers}

    def done() -> list[Gap]:
        now = [g for g in takeover_gaps(dsn) if g.id in ids]
        return now if all(g.backfill_status == "done" for g in now) else []

    filled = settle(done, 75) or takeover_gaps(dsn)
    assert [(g.backfill_status, g.backfilled_bars and g.backfilled_bars > 0) for g in filled] \
        == [("done", True)] * len(ids), filled


def start_pair(hosts, feed: TimedFeed) -> tuple[Host, Host]:
    a, b = hosts("host-a", feed), hosts("host-b", feed)
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
def test_kill_every_process_of_the_active_host(hosts, site, reps) -> None:
    """kill -9 of the active host's supervisor and workers; the other takes over; the killed one comes back
    as a standby (no flapping), and is the next victim's successor."""
    scenario = Scenario(f"kill x{reps}")
    with site.feed(rate=RATE, symbols=SYMBOLS, seed=13) as feed, SocketWatch(feed) as watch:
        active, standby = start_pair(hosts, feed)
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
        finish(feed, site, scenario, watch)
    assert len(takeover_gaps(site.dsn)) == reps * len(SHARDS)
    assert max(scenario.takeovers) <= TAKEOVER_BOUND, scenario.takeovers


#: The issue's bound for a cut link, and how long a cut lasts (the issue's 60 s by default).
CUT_BOUND = 30.0
CUT_SECONDS = float(os.environ.get("SHARDCTL_CUT_SECONDS", "60"))


@pytest.mark.timeout(CUT_SECONDS + 240)
@pytest.mark.parametrize("links", ["database", "database and feed"], ids=["db", "db-and-feed"])
def test_cut_the_active_hosts_links(hosts, site, links) -> None:
    """host-a's link to the database (and to the feed, in the second case) goes dark for 60 s, then comes back.
    host-b takes over within 30 s; host-a commits nothing after the cut, closes its socket on its own once it
    reaches the database again, and stands by."""
    if site.cut_unavailable:
        pytest.skip(site.cut_unavailable)
    scenario = Scenario(f"cut {links} {CUT_SECONDS:g}s")
    with site.feed(rate=RATE, symbols=SYMBOLS, seed=17) as feed, SocketWatch(feed) as watch:
        a, b = start_pair(hosts, feed)
        time.sleep(1.5)
        site.cut("host-a", db=True, feed=links != "database")
        cut_at, cut_wall = time.monotonic(), time.time()
        b.wait(b.streams(), CUT_BOUND + 15, "taking over")
        scenario.takeovers.append(time.monotonic() - cut_at)
        time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))
        during = dict(watch.max_per_key)
        site.heal()
        healed_at = time.monotonic()
        a.wait(a.stands_by("host-b"), 40, "standing by once its link is back")
        # host-a's own end: no connection to the feed left in its namespace
        settle(lambda: site.connections_to_feed("host-a", feed) == 0, 20)
        closed = time.monotonic() - healed_at
        assert site.connections_to_feed("host-a", feed) == 0, "host-a closed its sockets"
        # The feed's end: after a database cut host-a's close reaches it at once. After a silent cut of both
        # links its close (sent during the cut) was lost; the feed holds that socket until its own TCP
        # retransmissions meet host-a's reset: a server-side leftover, counted in the sockets per key.
        feed_closed = settle(lambda: watch.now() == {"key-crypto": 1, "key-stocks": 1}, 20)
        feed_side = f"{time.monotonic() - healed_at:.1f}s after" if feed_closed else "not within 20 s of"
        if links == "database":
            assert feed_closed, f"the feed still holds host-a's sockets: {watch.now()}"
        finish(feed, site, scenario, watch, new_owner="host-b")
        stored = stored_keys(site.dsn)
        from_a_after_cut = [t for t in feed.sent_ticks() if t.sent_at > cut_wall and stored[t.key]
                            and site.host_of(feed.peers[t.conn][0]) == "host-a"]
        print(f"[hosts:{scenario.name}] sockets per key during the cut {during}; host-a stood by and had closed "
              f"its sockets {closed:.1f}s after the link came back; the feed saw them closed {feed_side} it",
              flush=True)
        takeovers = takeover_gaps(site.dsn)
        assert {g.reason for g in takeovers} == {"takeover from host-a"} and len(takeovers) == len(SHARDS)
        backfilled(site.dsn, takeovers)
    assert not from_a_after_cut, f"host-a committed {len(from_a_after_cut)} tick(s) it received after the cut"
    assert max(during.values()) <= 2, f"sockets per key during the cut: {during}"
    assert scenario.takeovers[0] <= CUT_BOUND, scenario.takeovers


def test_operator_moves_a_shard_gracefully(hosts, site) -> None:
    """``shardctl move crypto --to host-b``: a drains and commits, then b streams it; stocks stay on a."""
    scenario = Scenario("move")
    with site.feed(rate=RATE, symbols=SYMBOLS, seed=14) as feed, SocketWatch(feed) as watch:
        a, b = start_pair(hosts, feed)
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
        finish(feed, site, scenario, watch)
        print(f"[hosts:move] the move took {moved:.1f}s", flush=True)
    assert watch.peak == 1  # the old owner closed its socket before the new one opened
    gaps = gap_rows(site.dsn).get("crypto", [])
    assert [g[2] for g in gaps if g[2].startswith("takeover")] == ["takeover from host-a"]


def test_a_database_outage_is_not_a_death(hosts, site) -> None:
    """The database goes away for everyone for longer than the TTL: nobody takes over, the owner keeps its
    shards, its journal holds the backlog, and nothing is lost."""
    scenario = Scenario("database restart")
    with site.feed(rate=RATE, symbols=SYMBOLS, seed=15) as feed, SocketWatch(feed) as watch:
        a, b = start_pair(hosts, feed)
        epochs = {n: s["lease_epoch"] for n, s in a.wait(a.streams(), 10, "streaming").items()}
        time.sleep(1.0)

        def no_takeover() -> bool:
            status = b.status()  # None: the standby did not answer this time; the socket watch still counts
            return watch.peak == 1 and (status is None or all(s["state"] != "RUNNING" for s in status.values()))

        site.stop_database()
        holds_for(no_takeover, 15.0, "no takeover while the database is away (~2 × the TTL)")
        site.start_database()
        holds_for(no_takeover, 12.0, "no takeover for a TTL once the database answers again")
        status = a.wait(a.streams(), 30, "still streaming both shards")
        assert {n: s["lease_epoch"] for n, s in status.items()} == epochs
        b.wait(b.stands_by("host-a"), 10, "still standing by")
        finish(feed, site, scenario, watch)
    assert watch.peak == 1
    assert not [g for gaps in gap_rows(site.dsn).values() for g in gaps if g[2].startswith("takeover")]


def test_an_operator_stop_on_the_owner_stops_the_shard_for_the_cluster(hosts, site) -> None:
    """``stop crypto`` on the streaming host: it keeps the lease, so no standby starts crypto, even after
    the TTL; ``start crypto`` there resumes it under the same epoch. ``stop`` on a standby keeps it out."""
    with site.feed(rate=50, symbols=SYMBOLS, seed=18) as feed, SocketWatch(feed) as watch:
        a, b = start_pair(hosts, feed)
        assert a.run is not None and b.run is not None
        epoch = a.status()["crypto"]["lease_epoch"]  # type: ignore[index]
        assert a.run.client.request("stop", "crypto")["shard"]["state"] == "STOPPED"
        b.run.client.request("stop", "stocks")  # the standby leaves stocks alone from now on
        holds_for(lambda: not watch.now().get("key-crypto") and (b.status() or {}).get("crypto", {}).get("state")
                  != "RUNNING", 12.0, "crypto stopped everywhere for longer than the TTL (8 s)")
        status = b.wait(lambda s: s["crypto"]["lease_owner"] == "host-a", 10, "seeing host-a own crypto")
        assert status["crypto"]["state"] == "STANDBY" and status["crypto"]["lease_epoch"] == epoch
        assert watch.now() == {"key-stocks": 1}, "crypto has no socket anywhere"
        assert a.run.client.request("start", "crypto", timeout=30)
        status = a.wait(a.streams(["crypto"]), 20, "streaming crypto again")
        assert status["crypto"]["lease_epoch"] == epoch
        a.kill_everything()  # the owner dies: crypto goes to b, stocks stays without a host (b stopped it)
        b.wait(lambda s: s["crypto"]["state"] == "RUNNING" and s["crypto"]["lease_owner"] == "host-b", 30,
               "taking crypto over")
        holds_for(lambda: (b.status() or {}).get("stocks", {}).get("state") == "STOPPED", 2.0,
                  "b's rounds going on without taking stocks")
        assert watch.now() == {"key-crypto": 1}


def test_shards_are_listed_in_status_metrics_and_healthz(hosts, site) -> None:
    """Every host's status names the streaming host and the standbys; /healthz is 200 on a standby too."""
    with site.feed(rate=50, symbols=SYMBOLS, seed=16) as feed:
        a, b = hosts("host-a", feed), hosts("host-b", feed)
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
