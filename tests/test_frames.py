"""FrameReader over a real socketpair: lengths, fragmentation, control frames, partial delivery."""

from __future__ import annotations

import socket
import struct
from typing import Iterator

import pytest

from shardctl.twelvedata.frames import (
    BINARY_FRAME_MARK,
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    FrameReader,
    ProtocolError,
)


def frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True, mask: bytes | None = None) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.settimeout(0.2)
    yield a, b
    a.close()
    b.close()


def test_many_frames_of_every_length_class(pair) -> None:
    server, client = pair
    payloads = [b"x" * 5, b"y" * 300, b"z" * 70000, b'{"event":"price"}']
    pongs: list[bytes] = []
    reader = FrameReader(client, pongs.append)
    server.sendall(b"".join(frame(p) for p in payloads))
    got: list[bytes] = []
    while len(got) < len(payloads):
        burst = reader.read_burst()
        assert burst, "timeout before every frame arrived"
        got += burst
    assert got == payloads
    assert reader.read_burst() == [], "timeout with nothing buffered"


def test_byte_by_byte_delivery_is_reassembled(pair) -> None:
    server, client = pair
    client.settimeout(0.005)  # each read waits this long for the byte that never comes: keep it short
    reader = FrameReader(client, lambda _: None)
    data = frame(b"hello world" * 20)
    results = []
    for i in range(len(data)):
        server.sendall(data[i:i + 1])
        results.append(reader.read_burst())
    assert results[:-1] == [[]] * (len(data) - 1)
    assert results[-1] == [b"hello world" * 20]


def test_fragments_pings_and_close(pair) -> None:
    server, client = pair
    pongs: list[bytes] = []
    reader = FrameReader(client, pongs.append)
    server.sendall(frame(b"part1-", OP_BINARY, fin=False) + frame(b"ping!", 0x9)
                   + frame(b"part2", 0x0, fin=True) + frame(b"", 0xA)
                   + frame(b"masked", mask=b"\x01\x02\x03\x04") + frame(struct.pack(">H", 1001) + b"bye", OP_CLOSE))
    assert reader.read_burst() == [BINARY_FRAME_MARK + b"part1-part2", b"masked"]
    assert pongs == [b"ping!"]
    assert reader.close_payload == struct.pack(">H", 1001) + b"bye"


def test_a_burst_ends_at_the_close_frame(pair) -> None:
    server, client = pair
    reader = FrameReader(client, lambda _: None)
    server.sendall(frame(b"a") + frame(struct.pack(">H", 1000), OP_CLOSE) + frame(b"after the close"))
    assert reader.read_burst() == [b"a"]
    assert reader.close_payload == struct.pack(">H", 1000)


def test_messages_before_a_broken_frame_are_handed_over_first(pair) -> None:
    server, client = pair
    reader = FrameReader(client, lambda _: None)
    server.sendall(frame(b"one") + frame(b"two") + frame(b"?", 0x3))
    assert reader.read_burst() == [b"one", b"two"]
    with pytest.raises(ProtocolError, match="opcode"):
        reader.read_burst()


def test_a_new_message_inside_a_fragmented_one_is_a_protocol_error(pair) -> None:
    """RFC 6455 5.4: fragments are not interleaved; the first part must not vanish silently."""
    server, client = pair
    reader = FrameReader(client, lambda _: None)
    server.sendall(frame(b'{"event": "price", ', OP_TEXT, fin=False) + frame(b'{"event": "heartbeat"}'))
    with pytest.raises(ProtocolError, match="fragmented message"):
        reader.read_burst()


def test_peer_closing_tcp_and_bad_frames_raise(pair) -> None:
    server, client = pair
    reader = FrameReader(client, lambda _: None)
    server.sendall(frame(b"tail", 0x0))
    with pytest.raises(ProtocolError, match="continuation"):
        reader.read_burst()
    server.sendall(frame(b"?", 0x3))
    with pytest.raises(ProtocolError, match="opcode"):
        reader.read_burst()
    server.close()
    with pytest.raises(ConnectionError):
        reader.read_burst()
