"""The control protocol: JSON lines over a unix socket, server and client halves.

One request per line, one response per line::

    {"cmd": "status", "shard": null}              every shard (or one, by name)
    {"cmd": "start" | "stop" | "restart", "shard": "crypto"}
    {"cmd": "stop_all"}                           stop every shard and the supervisor
    {"cmd": "reload"}                             re-read the config (like SIGHUP)

    {"ok": true, ...}
    {"ok": false, "code": "busy", "error": "one line for a human"}

Codes: no_such_shard, busy, already_running, not_running, shutting_down,
timeout, bad_request, unknown_command, forbidden (and internal, for a bug,
which is also logged). A request may carry ``"timeout": seconds`` to bound
how long start/restart wait for RUNNING.

The server makes the socket's directory 0700 when it creates it, the socket
0600, and refuses peers of another uid (SO_PEERCRED) with ``forbidden``.
Malformed input gets a refusal, never an exception in the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import json
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from shardctl.errors import ControlCode, ControlError, ShardctlError, SupervisorNotRunning
from shardctl.report import ShardStatus

log = logging.getLogger("shardctl.control")

class Command(enum.StrEnum):
    """The control protocol's requests."""

    STATUS = "status"
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    STOP_ALL = "stop_all"
    RELOAD = "reload"
    MOVE = "move"  #: cluster mode: the owner drains the shard and hands its lease to host ``to``


SHARD_COMMANDS = frozenset({Command.START, Command.STOP, Command.RESTART, Command.MOVE})
COMMANDS = frozenset(Command)
#: Longest request line accepted; anything longer is a bad_request and the connection is closed.
MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class Request:
    cmd: Command
    shard: str | None = None
    timeout: float | None = None
    to: str | None = None


def parse_request(line: bytes | str) -> Request:
    """Decode and validate one request line, or raise ControlError (bad_request / unknown_command)."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(ControlCode.BAD_REQUEST, f"request is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ControlError(ControlCode.BAD_REQUEST, "request must be a JSON object like {\"cmd\": \"status\"}")
    cmd = data.get("cmd")
    if not isinstance(cmd, str):
        raise ControlError(ControlCode.BAD_REQUEST, "request needs a \"cmd\" string")
    if cmd not in COMMANDS:
        raise ControlError(ControlCode.UNKNOWN_COMMAND,
                           f"unknown command {cmd[:40]!r}; known: {', '.join(sorted(COMMANDS))}")
    shard = data.get("shard")
    if shard is not None and not isinstance(shard, str):
        raise ControlError(ControlCode.BAD_REQUEST, "\"shard\" must be a string or null")
    if cmd in SHARD_COMMANDS and not shard:
        raise ControlError(ControlCode.BAD_REQUEST, f"{cmd} needs a \"shard\"")
    timeout = data.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ControlError(ControlCode.BAD_REQUEST, "\"timeout\" must be a positive number of seconds")
    to = data.get("to")
    if cmd == Command.MOVE and not (isinstance(to, str) and to):
        raise ControlError(ControlCode.BAD_REQUEST, "move needs a \"to\" host id")
    return Request(cmd=Command(cmd), shard=shard, timeout=float(timeout) if timeout is not None else None,
                   to=to if isinstance(to, str) else None)


@dataclass(frozen=True)
class SupervisorInfo:
    """The supervisor itself, in a status reply."""

    pid: int
    config: str
    shutting_down: bool
    metrics_port: int | None
    feed_pid: int | None
    host_id: str | None


@dataclass(frozen=True)
class StatusReply:
    """``status``: every shard (or the one asked for) and the supervisor."""

    shards: tuple[ShardStatus, ...]
    supervisor: SupervisorInfo

    def to_json(self) -> dict[str, Any]:
        return {"shards": [s.to_json() for s in self.shards], "supervisor": dataclasses.asdict(self.supervisor)}


@dataclass(frozen=True)
class ShardReply:
    """``start``/``restart``: the shard once RUNNING; ``stop``: the shard, and whether it had to be killed."""

    shard: ShardStatus
    killed: bool | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"shard": self.shard.to_json()}
        if self.killed is not None:
            data["killed"] = self.killed
        return data


@dataclass(frozen=True)
class MoveReply:
    """``move`` (cluster mode): the shard's lease went from one host to ``to`` at ``epoch``."""

    shard: str
    from_host: str | None
    to: str
    epoch: int

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "from": self.from_host, "to": self.to, "epoch": self.epoch}


@dataclass(frozen=True)
class ReloadReply:
    """``reload``: the shards added, removed, restarted, and re-subscribed on their open connection."""

    added: list[str]
    removed: list[str]
    restarted: list[str]
    resubscribed: list[str]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StoppedReply:
    """``stop_all``: the supervisor stopped; which shards had to be killed, and the totals."""

    stopped: list[str]
    killed: list[str]
    shards: tuple[ShardStatus, ...]
    ticks_received: int
    rows_written: int

    def to_json(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "killed": self.killed, "shards": [s.to_json() for s in self.shards],
                "ticks_received": self.ticks_received, "rows_written": self.rows_written}


#: What a command answers (on the wire: ``{"ok": true, **reply.to_json()}``).
Reply = StatusReply | ShardReply | MoveReply | ReloadReply | StoppedReply
#: Where a queued command's reply arrives.
ReplyFuture = asyncio.Future[Reply]


def refusal(code: ControlCode, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": " ".join(message.split())}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


Handler = Callable[[Request], Awaitable[Reply]]


def peer_uid(sock: Any) -> int | None:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED), or None if unknown."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


#: Longest unix socket path Linux accepts (sun_path is 108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107


class ControlServer:
    """Serves ``handler`` on a unix socket; ``start`` binds, ``close`` stops and removes the socket."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind the socket; raise ShardctlError when another supervisor already answers on it."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise ShardctlError(f"the control socket path {self.path} is {len(os.fsencode(self.path))} bytes; "
                                f"unix sockets allow {MAX_SOCKET_PATH}: set supervisor.control_socket or "
                                "state_dir to a shorter path")
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise ShardctlError(f"another supervisor is listening on {self.path}; stop it first")
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise ShardctlError(f"{self.path} exists and is not a socket; remove it or choose another "
                                    "supervisor.control_socket")
            self.path.unlink()  # stale socket left by a supervisor that was killed
        old_umask = os.umask(0o177)  # born 0600: no window where others could connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_LINE)
        except OSError as exc:
            raise ShardctlError(f"cannot create the control socket {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino

    async def close(self, grace: float = 1.0) -> None:
        """Stop accepting, give open connections ``grace`` seconds to finish their answer, end them,
        and remove the socket file if it is still ours."""
        if self._server is not None:
            self._server.close()
            if self._clients:
                await asyncio.wait(list(self._clients), timeout=grace)
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._inode = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._conversation(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _conversation(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid is not None and uid not in (0, os.geteuid()):
            with contextlib.suppress(Exception):  # read the request first, so the client sees the answer
                await asyncio.wait_for(reader.readline(), 2.0)
            writer.write(encode(refusal(ControlCode.FORBIDDEN, f"uid {uid} may not control this supervisor")))
            await writer.drain()
            return
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial.strip():
                    return
                line = exc.partial  # last request without a newline: still answer it
            except asyncio.LimitOverrunError:
                writer.write(encode(refusal(ControlCode.BAD_REQUEST, f"request longer than {MAX_LINE} bytes")))
                await writer.drain()
                return
            if line.strip():
                writer.write(encode(await self._answer(line)))
                await writer.drain()
            if reader.at_eof():
                return

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = parse_request(line)
            response = await self.handler(request)
        except ControlError as exc:
            return refusal(exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not take the supervisor down
            log.exception("control request %r failed", line[:200])
            return refusal(ControlCode.INTERNAL, f"internal error: {exc}")
        return {"ok": True, **response.to_json()}


def _answers(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class ControlClient:
    """The CLI's half: one blocking request, one response."""

    def __init__(self, socket_path: Path, config_path: str | Path | None) -> None:
        self.socket_path = Path(socket_path)
        self.config_path = None if config_path is None else str(config_path)

    def not_running(self) -> SupervisorNotRunning:
        if self.config_path is None:
            return SupervisorNotRunning(
                f"no supervisor is running (socket {self.socket_path}); start one with `shardctl start CONFIG`, "
                "or pass -c CONFIG if its config sets its own state_dir")
        return SupervisorNotRunning(
            f"no supervisor is running for {self.config_path} (socket {self.socket_path}); "
            f"start one with `shardctl start {self.config_path}`")

    def request(self, cmd: str, shard: str | None = None, *, timeout: float = 30.0,
                wait: float | None = None, to: str | None = None) -> dict[str, Any]:
        """Send one request and return the response's fields.

        ``wait`` is passed to the server as the request's own timeout (how
        long start/restart may wait for RUNNING); ``timeout`` bounds the
        whole exchange. Raises SupervisorNotRunning when nobody listens,
        ControlError(code) when the supervisor refuses, and
        ControlError(ControlCode.TIMEOUT) when no answer comes in time.
        """
        message: dict[str, Any] = {"cmd": cmd, "shard": shard}
        if to is not None:
            message["to"] = to
        if wait is not None:
            message["timeout"] = wait
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise self.not_running() from None
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                    raise self.not_running() from None
                raise ControlError(ControlCode.NOT_RUNNING, f"cannot reach the supervisor on {self.socket_path}: "
                                                  f"{exc.strerror}") from None
            try:
                sock.sendall(encode(message))
                data = _read_line(sock)
            except socket.timeout:
                raise ControlError(ControlCode.TIMEOUT,
                                   f"the supervisor did not answer {cmd} within {timeout:g}s") from None
            except OSError as exc:
                raise ControlError(ControlCode.NOT_RUNNING,
                                   f"the supervisor closed the connection: {exc.strerror}") from None
        if not data:
            raise ControlError(ControlCode.NOT_RUNNING, "the supervisor closed the connection without answering")
        try:
            response = json.loads(data)
        except ValueError:
            raise ControlError(ControlCode.BAD_REQUEST, "the supervisor sent an unreadable answer") from None
        if not isinstance(response, dict):
            raise ControlError(ControlCode.BAD_REQUEST, "the supervisor sent an unreadable answer")
        if not response.get("ok"):
            raise ControlError(ControlCode.read(response.get("code")), str(response.get("error", "refused")))
        response.pop("ok", None)
        return dict(response)


def _read_line(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)
