"""Helpers for the multi-host suite (tests/test_hosts.py): hosts, sockets per key, a tally per scenario.

* ``Host``: one "host": its own directory, config (``[cluster]``) and state
  directory, and a real ``shardctl start`` (``faultkit.SupervisorRun``) with
  ``$SHARDCTL_HOST_ID`` set. ``kill_everything`` is ``kill -9`` of the
  supervisor and every worker it runs, by pid.
* ``SocketWatch``: samples the feed's open connections per API key every
  10 ms and keeps the largest count seen (Twelve Data allows 3).
* ``Scenario``: what each test reports: takeover times, the tally, sockets.
* ``NamespaceSite`` / ``LoopbackSite``: where the hosts run. In network
  namespaces (``netkit``: root only) each host reaches the feed and the
  database over links of its own, which a test can cut; on loopback (any
  user) the hosts share the machine's loopback and the session's database,
  and nothing can be cut.
* ``superseded``: the ticks the feed sent to a host after another host's
  connection for the same shard had opened (see its doc).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg2
from faultkit import SentTick, SupervisorRun, TimedFeed
from netkit import LinkPostgres, Network
from support import wait_until, with_schema, write_config

SHARDS: dict[str, tuple[str, ...]] = {"crypto": ("BTC/USD", "ETH/USD"), "stocks": ("AAPL", "MSFT")}
KEYS = {name: f"HOSTS_KEY_{name.upper()}" for name in SHARDS}
KEY_VALUES = {env: f"key-{name}" for name, env in KEYS.items()}
SYMBOLS = tuple(s for syms in SHARDS.values() for s in syms)
SHARD_OF = {s: name for name, syms in SHARDS.items() for s in syms}.__getitem__


@dataclass(frozen=True)
class Place:
    """Where one host runs: the feed's and the database's addresses as it sees them, and its command prefix."""

    feed_url: str
    rest_url: str
    dsn: str
    prefix: tuple[str, ...] = ()


class Host:
    """One host of the cluster: a supervisor with its own config and state directory."""

    def __init__(self, host_id: str, root: Path, place: Place, *, cluster: str = "") -> None:
        self.host_id = host_id
        self.place = place
        self.dir = root / host_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = write_config(
            self.dir, place.feed_url, place.dsn,
            {name: {"symbols": syms, "api_key_env": KEYS[name]} for name, syms in SHARDS.items()},
            defaults={"batch_size": 200, "flush_interval": "200ms"},
            supervisor={"max_failures": 100, "stop_timeout": "15s"},
            source={"rest_url": place.rest_url})
        with self.config.open("a") as f:
            # backfill fills every gap of a second or more (a takeover gap is about 10 s) from the feed's REST
            f.write('[backfill]\nenabled = true\nmin_gap = "1s"\nsettle = "1s"\nrescan_interval = "2s"\n'
                    'credits_per_minute = 600\n')
            f.write("[cluster]\n" + cluster)
        self.run: SupervisorRun | None = None
        self.starts = 0

    def start(self) -> SupervisorRun:
        self.starts += 1
        self.run = SupervisorRun(self.config, self.dir / f"supervisor-{self.starts}.log",
                                 env={**KEY_VALUES, "SHARDCTL_HOST_ID": self.host_id}, prefix=self.place.prefix)
        return self.run

    def status(self) -> dict[str, dict[str, Any]] | None:
        assert self.run is not None
        return self.run.try_status()

    def wait(self, predicate: Any, timeout: float, what: str, interval: float = 0.05) -> dict[str, dict[str, Any]]:
        last: list[dict[str, dict[str, Any]] | None] = [None]

        def matches() -> dict[str, dict[str, Any]] | None:
            last[0] = self.status()
            return last[0] if last[0] and predicate(last[0]) else None

        return wait_until(matches, timeout, interval, f"host {self.host_id} {what}",
                          details=lambda: f"status: {last[0]}\n{self.run.log()[-3000:] if self.run else ''}")

    def streams(self, names: Any = SHARDS) -> Any:
        return lambda s: all(s[n]["state"] == "RUNNING" and s[n]["lease_owner"] == self.host_id for n in names)

    def stands_by(self, owner: str, names: Any = SHARDS) -> Any:
        return lambda s: all(s[n]["state"] == "STANDBY" and s[n]["lease_owner"] == owner for n in names)

    def kill_everything(self) -> list[int]:
        """``kill -9`` the supervisor and every worker it runs (pids from its status); return the pids."""
        assert self.run is not None
        status = self.run.try_status() or {}
        pids = [self.run.proc.pid] + [s["pid"] for s in status.values() if s.get("pid")]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.run.proc.wait(10)
        self.run.close()  # its log; and any worker left behind (by pid, ours only)
        return pids

    def close(self) -> None:
        if self.run is not None:
            self.run.close()


class SocketWatch:
    """The largest number of open feed connections per API key, sampled every 10 ms."""

    def __init__(self, feed: TimedFeed) -> None:
        self.feed = feed
        self.max_per_key: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="socket-watch", daemon=True)

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def now(self) -> Counter[str]:
        feed = self.feed
        with feed._cond:  # the feed's own registry of sessions (key, evicted)
            return Counter(c.key for c in feed._conns.values() if not c.evicted)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for key, n in self.now().items():
                if n > self.max_per_key[key]:
                    self.max_per_key[key] = n

    @property
    def peak(self) -> int:
        return max(self.max_per_key.values(), default=0)


@dataclass
class Scenario:
    name: str
    takeovers: list[float] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def line(self, tally_line: str, sockets: int) -> str:
        times = ""
        if self.takeovers:
            times = (f", takeover median {statistics.median(self.takeovers):.1f}s max {max(self.takeovers):.1f}s "
                     f"over {len(self.takeovers)} ({', '.join(f'{t:.1f}' for t in self.takeovers)})")
        text = f"[hosts:{self.name}] {tally_line.split('] ', 1)[-1]}, max sockets per key {sockets}{times}"
        print("\n" + text, flush=True)
        return text


def superseded(sent: list[SentTick], feed: TimedFeed, host_of: Callable[[str], str | None],
               new_owner: str) -> tuple[list[SentTick], list[SentTick]]:
    """Split ``sent`` into (kept, superseded).

    A tick is superseded when the feed sent it to another host than
    ``new_owner`` after ``new_owner``'s first connection for the tick's shard
    had opened: a host cut off from the database keeps its socket (it cannot
    tell a cut from an outage), and may reconnect once its link is back, until
    it learns it lost the lease, while the new owner streams the same
    seconds. Twelve Data sends every socket the same events; this feed sends
    each its own, so the cut-off host's are not market data the database
    lacks (which this test cannot check: it rests on Twelve Data's fan-out).
    They must never be stored: that is the fence's promise, and the caller
    counts any that were.

    The cut-off instant is when the feed accepted the new owner's first
    connection; the new owner's takeover gap ends when its client saw the
    handshake complete, which is later, so no tick falls between the two.
    """
    shard_of_conn: dict[int, str] = {}
    for tick in sent:
        shard_of_conn.setdefault(tick.conn, SHARD_OF(tick.key[0]))
    peers = dict(feed.peers)  # one copy: the feed's loop thread adds to it
    host_of_conn = {cid: host_of(address) for cid, (address, _) in peers.items()}
    took_over: dict[str, float] = {}
    for cid, (_, opened) in peers.items():
        shard = shard_of_conn.get(cid)
        if host_of_conn[cid] == new_owner and shard is not None:
            took_over[shard] = min(opened, took_over.get(shard, opened))
    kept, dropped = [], []
    for tick in sent:
        since = took_over.get(shard_of_conn[tick.conn])
        late = since is not None and tick.sent_at >= since and host_of_conn.get(tick.conn) != new_owner
        (dropped if late else kept).append(tick)
    return kept, dropped


class Site:
    """Where the hosts run: the feed and the database, as the test and each host reach them."""

    #: Why links cannot be cut here (None: they can).
    cut_unavailable: str | None = None
    dsn = ""  # the test's own DSN to the scenario's database

    def feed(self, **kwargs: Any) -> TimedFeed:
        raise NotImplementedError

    def place(self, host_id: str, feed: TimedFeed) -> Place:
        raise NotImplementedError

    def host_of(self, address: str) -> str | None:
        """The host a feed connection came from (None: cannot tell)."""
        return None

    def cut(self, host_id: str, *, db: bool, feed: bool) -> None:
        raise NotImplementedError

    def connections_to_feed(self, host_id: str, feed: TimedFeed) -> int:
        """How many established TCP connections ``host_id`` has to the feed, as its own kernel sees them."""
        raise NotImplementedError

    def heal(self) -> None:
        pass

    def stop_database(self) -> None:
        raise NotImplementedError

    def start_database(self) -> None:
        raise NotImplementedError


class LoopbackSite(Site):
    """Both hosts on this machine's loopback, against the session's database (unix socket)."""

    def __init__(self, dsn: str, pg_server: Any, why: str) -> None:
        self.dsn, self.pg_server = dsn, pg_server
        self.cut_unavailable = f"cutting a link needs network namespaces: {why}"

    def feed(self, **kwargs: Any) -> TimedFeed:
        return TimedFeed(**kwargs)

    def place(self, host_id: str, feed: TimedFeed) -> Place:
        return Place(feed.url, feed.rest_url, self.dsn)

    def stop_database(self) -> None:
        self.pg_server.stop()  # skips the test when the server is not ours to stop

    def start_database(self) -> None:
        self.pg_server.start()


class NamespaceSite(Site):
    """Each host in a network namespace with links of its own to the feed and the database (``netkit``)."""

    def __init__(self, network: Network, postgres: LinkPostgres, dbname: str) -> None:
        self.network, self.postgres, self.dbname = network, postgres, dbname
        postgres.create_database(dbname)
        self.dsn = postgres.dsn(dbname)
        with_schema(self.dsn)

    def feed(self, **kwargs: Any) -> TimedFeed:
        first, *others = self.network.feed_addresses
        return TimedFeed(host=first, also_on=others, **kwargs)

    def place(self, host_id: str, feed: TimedFeed) -> Place:
        host = self.network.hosts[host_id]
        return Place(feed.url_on(host.feed.root_addr), feed.rest_url_on(host.feed.root_addr),
                     self.postgres.dsn(self.dbname, host.db.root_addr), tuple(host.prefix))

    def host_of(self, address: str) -> str | None:
        return self.network.host_of_peer(address)

    def cut(self, host_id: str, *, db: bool, feed: bool) -> None:
        host = self.network.hosts[host_id]
        for link in ([host.db] if db else []) + ([host.feed] if feed else []):
            link.cut()

    def heal(self) -> None:
        self.network.heal()

    def connections_to_feed(self, host_id: str, feed: TimedFeed) -> int:
        host = self.network.hosts[host_id]
        table = subprocess.run([*host.prefix, "cat", "/proc/net/tcp"], capture_output=True, text=True,
                               timeout=30, check=True).stdout
        remote = f"{socket.inet_aton(host.feed.root_addr)[::-1].hex().upper()}:{feed.port:04X}"
        return sum(1 for line in table.splitlines()[1:] if line.split()[2:4] == [remote, "01"])  # ESTABLISHED

    def stop_database(self) -> None:
        self.postgres.stop()

    def start_database(self) -> None:
        self.postgres.start()

    def close(self) -> None:
        self.heal()
        try:
            conn = self.postgres.admin()
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
            conn.close()
        except psycopg2.Error:
            pass
