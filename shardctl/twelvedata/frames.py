"""Buffered reading of server→client websocket frames (RFC 6455) from a connected socket.

websocket-client reads every frame with three small ``recv`` calls; at tens
of thousands of frames a second that is most of a worker's time. After
websocket-client's handshake, ``FrameReader`` reads the socket in large
chunks and hands over every frame the chunk completes at once, so a burst of
frames costs one system call and one call into the reader. Text payloads are returned as bytes, unvalidated: the JSON
parser validates UTF-8 anyway. Fragmented messages are reassembled (control
frames may come between their parts) and keep their first frame's opcode.
"""

from __future__ import annotations

import socket
import ssl
from typing import Callable, Protocol

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

#: Put by ``StreamClient.poll`` before the payload of a binary message. Twelve Data sends text
#: frames only, so a binary one is a dead letter, never a row. The mark is part of the frame bytes
#: that go into the journal, so the parser reaches the same verdict live and on replay; no JSON
#: text can start with NUL, so no valid text frame carries it.
BINARY_FRAME_MARK = b"\x00binary\x00"

_CHUNK = 262144
#: Largest message accepted (the journal takes frames up to 16 MiB, header included).
_MAX_MESSAGE = 16 * 1024 * 1024 - 64


class Receiver(Protocol):
    """What the reader needs of a socket."""

    def recv(self, bufsize: int, /) -> bytes: ...


class ProtocolError(Exception):
    """The peer sent something that is not a valid websocket frame sequence."""


class FrameReader:
    """Cuts complete messages out of a socket's byte stream; answers pings through ``send_pong``."""

    def __init__(self, sock: Receiver, send_pong: Callable[[bytes], None],
                 initial: bytes = b"", before_recv: Callable[[], None] | None = None) -> None:
        self._sock = sock
        self._send_pong = send_pong
        #: Called before every read of the socket (the worker writes its journal out there).
        self._before_recv = before_recv
        self._buf = bytes(initial)
        self._pos = 0
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = OP_TEXT
        self._fragment_bytes = 0
        #: An error met after messages were cut: raised by the next call, once they are handed over.
        self._error: BaseException | None = None
        #: The payload of the server's close frame, once one arrived (the burst ends there).
        self.close_payload: bytes | None = None

    def read_burst(self) -> list[bytes]:
        """Every complete message the buffer holds, reading the socket (once) only when it holds none.

        A text message comes back as its payload, a binary one as
        ``BINARY_FRAME_MARK`` + payload. A close frame ends the burst and sets
        ``close_payload``. An empty list: the socket timeout expired.
        Raises ``ConnectionError`` when the peer closes the TCP connection and
        ``ProtocolError`` for malformed frames (after handing over the messages
        cut before them); socket errors propagate.
        """
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        out: list[bytes] = []
        while True:
            try:
                self._cut_all(out)
            except (ProtocolError, ConnectionError) as exc:
                if not out:
                    raise
                self._error = exc
                return out
            if out or self.close_payload is not None or not self._fill():
                return out

    def _fill(self) -> bool:
        if self._before_recv is not None:
            self._before_recv()
        try:
            data = self._sock.recv(_CHUNK)
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        if not data:
            raise ConnectionError("the server closed the TCP connection")
        # Whole frames are cut from an immutable buffer (one copy per payload); what is left of it is a
        # partial frame, usually short.
        self._buf = self._buf[self._pos:] + data if self._pos < len(self._buf) else data
        self._pos = 0
        return True

    def _cut_all(self, out: list[bytes]) -> None:
        """Append every complete message in the buffer to ``out`` (stops after a close frame)."""
        buf, pos = self._buf, self._pos
        size = len(buf)
        append = out.append
        plain = self._fragments is None  # no fragmented message under way
        try:
            while size - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                if b0 == 0x81 and b1 < 127 and plain:  # the usual frame: final, text, unmasked, under 64 KiB
                    if b1 < 126:
                        start = pos + 2
                        end = start + b1
                    elif size - pos < 4:
                        return
                    else:
                        start = pos + 4
                        end = start + (buf[pos + 2] << 8 | buf[pos + 3])
                    if end > size:
                        return
                    append(buf[start:end])
                    pos = end
                    continue
                length = b1 & 0x7F
                start = pos + 2
                if length == 126:
                    if size - pos < 4:
                        return
                    length, start = int.from_bytes(buf[pos + 2:pos + 4], "big"), pos + 4
                elif length == 127:
                    if size - pos < 10:
                        return
                    length, start = int.from_bytes(buf[pos + 2:pos + 10], "big"), pos + 10
                if length > _MAX_MESSAGE:
                    raise ProtocolError(f"frame of {length} bytes is larger than {_MAX_MESSAGE}")
                mask = None
                if b1 & 0x80:  # servers must not mask, but be lenient
                    mask, start = buf[start:start + 4], start + 4
                end = start + length
                if end > size:
                    return
                payload = buf[start:end]
                if mask is not None:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                pos = end
                message = self._message(bool(b0 & 0x80), b0 & 0x0F, payload)
                if message is not None:
                    append(message)
                plain = self._fragments is None
                if self.close_payload is not None:
                    return
        finally:
            self._pos = pos

    def _message(self, fin: bool, opcode: int, payload: bytes) -> bytes | None:
        """The message a frame completes (binary ones marked), or None (a control frame, a first fragment)."""
        if opcode == OP_PING:
            self._send_pong(payload)
            return None
        if opcode == OP_PONG:
            return None
        if opcode == OP_CLOSE:
            self.close_payload = payload
            return None
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise ProtocolError("continuation frame without a first fragment")
            self._fragments.append(payload)
            self._fragment_bytes += len(payload)
            if self._fragment_bytes > _MAX_MESSAGE:
                raise ProtocolError(f"fragmented message larger than {_MAX_MESSAGE} bytes")
            if not fin:
                return None
            message, self._fragments = b"".join(self._fragments), None
            return BINARY_FRAME_MARK + message if self._fragment_opcode == OP_BINARY else message
        if opcode not in (OP_TEXT, OP_BINARY):
            raise ProtocolError(f"unknown opcode {opcode:#x}")
        if self._fragments is not None:  # RFC 6455 5.4: the first part would vanish silently
            raise ProtocolError("a new message began inside a fragmented message")
        if not fin:
            self._fragments, self._fragment_opcode, self._fragment_bytes = [payload], opcode, len(payload)
            return None
        return BINARY_FRAME_MARK + payload if opcode == OP_BINARY else payload
