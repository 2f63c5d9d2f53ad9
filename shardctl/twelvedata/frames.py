"""Buffered reading of server→client websocket frames (RFC 6455) from a connected socket.

websocket-client reads every frame with three small ``recv`` calls; at tens
of thousands of frames a second that is most of a worker's time. After
websocket-client's handshake, ``FrameReader`` reads the socket in large
chunks and cuts frames out of its buffer, so a burst of frames costs one
system call. Text payloads are returned as bytes, unvalidated: the JSON
parser validates UTF-8 anyway. Fragmented messages are reassembled (control
frames may come between their parts) and keep their first frame's opcode.
"""

from __future__ import annotations

import socket
import ssl
from typing import Callable

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


class ProtocolError(Exception):
    """The peer sent something that is not a valid websocket frame sequence."""


class FrameReader:
    """Cuts complete messages out of a socket's byte stream; answers pings through ``send_pong``."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket, send_pong: Callable[[bytes], None],
                 initial: bytes = b"", before_recv: Callable[[], None] | None = None) -> None:
        self._sock = sock
        self._send_pong = send_pong
        #: Called before every read of the socket (the worker writes its journal out there).
        self._before_recv = before_recv
        self._buf = bytearray(initial)
        self._pos = 0
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = OP_TEXT
        self._fragment_bytes = 0

    def read(self) -> tuple[int, bytes] | None:
        """Return the next (opcode, payload) message: TEXT/BINARY or CLOSE; None when the socket timeout expires.

        Raises ``ConnectionError`` when the peer closes the TCP connection and
        ``ProtocolError`` for malformed frames; socket errors propagate.
        """
        while True:
            frame = self._cut()
            if frame is None:
                if not self._fill():
                    return None
                continue
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self._send_pong(payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                return OP_CLOSE, payload
            if opcode == OP_CONTINUATION:
                if self._fragments is None:
                    raise ProtocolError("continuation frame without a first fragment")
                self._fragments.append(payload)
                self._fragment_bytes += len(payload)
                if self._fragment_bytes > _MAX_MESSAGE:
                    raise ProtocolError(f"fragmented message larger than {_MAX_MESSAGE} bytes")
                if fin:
                    message, self._fragments = b"".join(self._fragments), None
                    return self._fragment_opcode, message
                continue
            if opcode not in (OP_TEXT, OP_BINARY):
                raise ProtocolError(f"unknown opcode {opcode:#x}")
            if self._fragments is not None:  # RFC 6455 5.4: the first part would vanish silently
                raise ProtocolError("a new message began inside a fragmented message")
            if fin:
                return opcode, payload
            self._fragments, self._fragment_opcode, self._fragment_bytes = [payload], opcode, len(payload)

    def _fill(self) -> bool:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        if self._before_recv is not None:
            self._before_recv()
        try:
            data = self._sock.recv(_CHUNK)
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        if not data:
            raise ConnectionError("the server closed the TCP connection")
        self._buf += data
        return True

    def _cut(self) -> tuple[bool, int, bytes] | None:
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < 2:
            return None
        b0, b1 = buf[pos], buf[pos + 1]
        length = b1 & 0x7F
        header = 2
        if length == 126:
            if available < 4:
                return None
            length = int.from_bytes(buf[pos + 2:pos + 4], "big")
            header = 4
        elif length == 127:
            if available < 10:
                return None
            length = int.from_bytes(buf[pos + 2:pos + 10], "big")
            header = 10
        if length > _MAX_MESSAGE:
            raise ProtocolError(f"frame of {length} bytes is larger than {_MAX_MESSAGE}")
        masked = b1 & 0x80
        mask_at = pos + header
        start = mask_at + (4 if masked else 0)
        end = start + length
        if len(buf) < end:
            return None
        payload = bytes(buf[start:end])
        if masked:  # servers must not mask, but be lenient
            mask = buf[mask_at:mask_at + 4]
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._pos = end
        return bool(b0 & 0x80), b0 & 0x0F, payload
