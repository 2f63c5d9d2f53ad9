"""Hosts in network namespaces of the test's own, with links that a test can cut (issue 13).

One ``Network`` per test process, made when first needed::

    root namespace                                namespace sc<N>a   ("host-a")
      PostgreSQL 169.254.N.1   --- veth db ---      169.254.N.2
      feed       169.254.N.5   --- veth feed ---    169.254.N.6
                                                  namespace sc<N>b   ("host-b")
      PostgreSQL 169.254.N.9   --- veth db ---      169.254.N.10
      feed       169.254.N.13  --- veth feed ---    169.254.N.14

Every link is a /30 of its own, so a host reaches the database and the feed
only over that host's two links, and each can be cut alone. Addresses are
link-local (169.254.N.0/24, N picked free at creation, never 169 or 170,
which cloud metadata services use); a blackhole route for the /24 in the
root namespace keeps any packet for it from leaving by another route.

``Link.cut`` is a silent partition, as when a cable is pulled or a machine
stops: both ends point their neighbour entry for the other end at a MAC
address that nobody has, so every frame is dropped by the receiving veth.
Nothing errors at either end (no route goes away, no carrier is lost);
connections hang until their own timeouts and keepalives give up.
``Link.heal`` restores the real neighbours.

``LinkPostgres`` is a PostgreSQL of the test process's own (the embedded
binaries), listening on the root ends of the db links (on a free port) and
on a unix socket for the test's own queries; ``trust`` only for the hosts'
own addresses. A test may stop and start it (a database restart with both
hosts up).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions

from shardctl.db.embedded import EmbeddedPostgres

#: A MAC address that no interface has (locally administered): frames sent to it are dropped by the veth.
NOBODY = "02:00:5e:00:de:ad"


def _ip(*args: str, netns: str | None = None) -> str:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def unavailable() -> str | None:
    """Why this machine cannot make network namespaces for a test (None: it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` to create network namespaces"
    probe = f"scprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot create a network namespace here: {exc}"
    _ip("netns", "del", probe)
    return None


@dataclass(frozen=True)
class Link:
    """One veth pair: ``root_if``/``root_addr`` in the root namespace, ``ns_if``/``ns_addr`` in ``netns``."""

    netns: str
    root_if: str
    ns_if: str
    root_addr: str
    ns_addr: str

    def make(self) -> None:
        _ip("link", "add", self.root_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.netns)
        _ip("addr", "add", f"{self.root_addr}/30", "dev", self.root_if)
        _ip("link", "set", self.root_if, "up")
        _ip("addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if, netns=self.netns)
        _ip("link", "set", self.ns_if, "up", netns=self.netns)

    def cut(self) -> None:
        """Drop every frame both ways, silently (see the module doc)."""
        _ip("neigh", "replace", self.root_addr, "lladdr", NOBODY, "dev", self.ns_if, "nud", "permanent",
            netns=self.netns)
        _ip("neigh", "replace", self.ns_addr, "lladdr", NOBODY, "dev", self.root_if, "nud", "permanent")

    def heal(self) -> None:
        """Back to the real neighbours (learnt again by ARP)."""
        for args, netns in (((self.root_addr, "dev", self.ns_if), self.netns), ((self.ns_addr, "dev", self.root_if),
                                                                                 None)):
            try:
                _ip("neigh", "del", *args, netns=netns)
            except RuntimeError:
                pass  # not cut


@dataclass(frozen=True)
class NetHost:
    """A host's namespace and its two links."""

    name: str
    netns: str
    db: Link
    feed: Link

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside this host."""
        return ["ip", "netns", "exec", self.netns]


class Network:
    """Two hosts' namespaces and links (see the module doc); ``close()`` removes all of it."""

    def __init__(self, host_names: tuple[str, ...] = ("host-a", "host-b")) -> None:
        self.hosts: dict[str, NetHost] = {}
        self._namespaces: list[str] = []
        self._links: list[Link] = []
        self._route: str | None = None
        for attempt in range(5):  # another test process may take the same block between look and make
            self.block = self._free_block()
            try:
                self._make(host_names)
                return
            except RuntimeError:
                self.close()
                if attempt == 4:
                    raise

    def _make(self, host_names: tuple[str, ...]) -> None:
        self.hosts.clear()
        self._route = f"169.254.{self.block}.0/24"
        _ip("route", "add", "blackhole", self._route)
        for i, name in enumerate(host_names):
            netns = f"sc{self.block}{chr(ord('a') + i)}"
            _ip("netns", "add", netns)
            self._namespaces.append(netns)
            _ip("link", "set", "lo", "up", netns=netns)
            links = [Link(netns, f"{netns}{kind}0", f"{netns}{kind}1", self._addr(8 * i + 4 * j + 1),
                          self._addr(8 * i + 4 * j + 2)) for j, kind in enumerate(("db", "fd"))]
            for link in links:
                self._links.append(link)
                link.make()
            self.hosts[name] = NetHost(name, netns, *links)

    @staticmethod
    def _free_block() -> int:
        taken = _ip("-o", "addr") + _ip("route") + _ip("netns", "list")
        free = [n for n in range(100, 200)
                if n not in (169, 170) and f"169.254.{n}." not in taken and f"sc{n}a" not in taken]
        return random.choice(free)

    def _addr(self, last: int) -> str:
        return f"169.254.{self.block}.{last}"

    @property
    def db_addresses(self) -> list[str]:
        return [h.db.root_addr for h in self.hosts.values()]

    @property
    def feed_addresses(self) -> list[str]:
        return [h.feed.root_addr for h in self.hosts.values()]

    @property
    def host_addresses(self) -> list[str]:
        return [link.ns_addr for h in self.hosts.values() for link in (h.db, h.feed)]

    def host_of_peer(self, address: str) -> str | None:
        """The host whose namespace end has ``address`` (what the feed sees as the peer)."""
        return next((h.name for h in self.hosts.values() if address in (h.db.ns_addr, h.feed.ns_addr)), None)

    def heal(self) -> None:
        for link in self._links:
            link.heal()

    def close(self) -> None:
        """Remove the namespaces, the links and the route; never raises."""
        for netns in self._namespaces:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
        for link in self._links:  # the root ends go with their peers; make sure
            subprocess.run(["ip", "link", "del", link.root_if], capture_output=True, timeout=30)
        if self._route:
            subprocess.run(["ip", "route", "del", "blackhole", self._route], capture_output=True, timeout=30)
        self._namespaces, self._links, self._route = [], [], None


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class LinkPostgres:
    """A PostgreSQL of the test's own on the db links' root addresses (and a unix socket)."""

    def __init__(self, base: Path, addresses: list[str], clients: list[str]) -> None:
        self.base = base
        self.addresses = addresses
        self.clients = clients
        self.embedded = EmbeddedPostgres(base / "data")
        self.port = _free_port(addresses[0])
        self._made = False

    @property
    def socket_dir(self) -> Path:
        return self.embedded.data_dir

    def start(self) -> None:
        if not self._made:
            self.embedded.ensure_running()  # initdb, as the unprivileged user when root
            self.embedded.stop()
            with (self.embedded.data_dir / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {address}/32 trust\n" for address in self.clients)
            self._made = True
        options = f'-h "{",".join(self.addresses)}" -p {self.port} -k {self.socket_dir}'
        self.embedded.pg_ctl("-w", "-t", "30", "-o", options, "-l", str(self.embedded.log_path), "start",
                             timeout=40)

    def ensure_running(self) -> None:
        if not self.embedded.running():
            self.start()

    def stop(self) -> None:
        self.embedded.stop()

    def dsn(self, dbname: str = "postgres", address: str | None = None) -> str:
        """A DSN over the link from a host (``address``: a db link's root end) or over the unix socket."""
        host = address or str(self.socket_dir)
        return psycopg2.extensions.make_dsn(host=host, port=self.port, user="postgres", dbname=dbname)

    def admin(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(self.dsn(), connect_timeout=5)
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> None:
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
