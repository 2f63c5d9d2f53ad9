"""The worker's per-tick cost, stage by stage: CPU nanoseconds per tick of each step a frame takes.

Each stage runs the worker's own code on the replay's frames in this
process, alone, and is timed with the thread's CPU clock (``time.thread_time``),
so other processes on the machine barely move the figures. The stages, in the
order a frame meets them: cutting websocket frames out of the received bytes
(``FrameReader`` over an in-memory socket: the system call itself is in the
socket limit), masking the configured secrets, appending to the journal
(handing it to the OS before each read included), parsing, per-symbol
freshness, batching, and the COPY encoding of each batch. What the worker's
loop adds around them is the real run's CPU per tick minus their sum.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shardctl.db.copyformat import TickEncoder
from shardctl.journal.journal import Journal
from shardctl.logs import mask_frames
from shardctl.rows import Tick
from shardctl.twelvedata.frames import FrameReader
from shardctl.twelvedata.parse import FrameParser
from shardctl.worker.batcher import Batcher
from shardctl.worker.freshness import FreshnessTracker
from shardctl.worker.offsets import JournalCursor

#: Bytes one ``recv`` hands the reader (the FrameReader asks for 256 KiB; a busy socket fills it).
RECV_BYTES = 262144
#: A secret as long as a Twelve Data key, which no frame holds (the common case: nothing to mask).
SECRET = b"0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Stage:
    name: str
    ns_per_tick: float


class _MemorySocket:
    """``recv`` from a byte string, ``RECV_BYTES`` at most per call."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def recv(self, size: int) -> bytes:
        size = min(size, RECV_BYTES)
        chunk = bytes(self._data[self._pos:self._pos + size])
        self._pos += len(chunk)
        return chunk


def websocket_stream(frames: list[bytes]) -> bytes:
    """``frames`` as an unmasked server-to-client websocket byte stream (text frames, FIN set)."""
    out = bytearray()
    for frame in frames:
        n = len(frame)
        if n < 126:
            out += bytes((0x81, n))
        elif n < 65536:
            out += bytes((0x81, 126)) + n.to_bytes(2, "big")
        else:
            out += bytes((0x81, 127)) + n.to_bytes(8, "big")
        out += frame
    return bytes(out)


def _timed(fn: Callable[[], object]) -> float:
    started = time.thread_time()
    fn()
    return time.thread_time() - started


def _bursts(frames: list[bytes]) -> list[list[bytes]]:
    """``frames`` in the bursts one ``recv`` of ``RECV_BYTES`` would bring."""
    bursts: list[list[bytes]] = [[]]
    size = 0
    for frame in frames:
        size += len(frame) + 4
        if size > RECV_BYTES:
            bursts.append([])
            size = len(frame) + 4
        bursts[-1].append(frame)
    return bursts


def breakdown(frames: list[bytes], batch_size: int, *, repeat: int = 3) -> list[Stage]:
    """Each stage's CPU ns per tick over ``frames`` (price events), the best of ``repeat`` passes."""
    n = len(frames)
    bursts = _bursts(frames)
    stream = websocket_stream(frames)
    parser = FrameParser()
    ticks = [t for t in map(parser.read, frames) if isinstance(t, Tick)]
    if len(ticks) != n:
        raise ValueError("the breakdown wants price events only")
    encoder = TickEncoder("utf-8", [False, False, False, True, True, True], _refuse)
    secrets = (SECRET,)

    def cut() -> None:
        reader = FrameReader(_MemorySocket(stream), lambda _p: None)
        count = 0
        while count < n:
            count += len(reader.read_burst())

    def mask() -> None:
        for burst in bursts:
            mask_frames(burst, secrets)

    def journal() -> None:
        with tempfile.TemporaryDirectory(prefix="shardctl-stages-") as tmp:
            j = Journal(Path(tmp), fsync="never")
            now = time.time()
            for burst in bursts:
                j.write_buffered()
                j.append_many(burst, now)
            j.close()

    def parse() -> None:
        read = FrameParser().read
        for frame in frames:
            read(frame)

    def freshness() -> None:
        tracker = FreshnessTracker((t.symbol for t in ticks), 60.0, 0.0)
        now = time.time()
        for burst in _bursts_of(ticks, [len(b) for b in bursts]):
            tracker.observe_ticks(burst, now)

    def batching() -> None:
        batcher: Batcher[Tick] = Batcher(batch_size, 1.0)
        cursor = JournalCursor()
        offset = 0
        for burst in _bursts_of(ticks, [len(b) for b in bursts]):  # as ``Worker._take``
            while burst:
                room = batcher.room()
                part, burst = burst[:room], burst[room:]
                offset += 200 * len(part)
                cursor.parsed(offset)
                if batcher.extend(part, time.monotonic()):
                    batcher.take()
                    cursor.submitted()

    def encode() -> None:
        for start in range(0, n, batch_size):
            encoder.encode(ticks[start:start + batch_size])

    stages = {"socket read + frame cutting": cut, "masking": mask, "journal append": journal, "parse": parse,
              "freshness": freshness, "batching": batching, "encoding": encode}
    return [Stage(name, min(_timed(fn) for _ in range(repeat)) * 1e9 / n) for name, fn in stages.items()]


def _bursts_of(ticks: list[Tick], sizes: list[int]) -> list[list[Tick]]:
    out, start = [], 0
    for size in sizes:
        out.append(ticks[start:start + size])
        start += size
    return out


def _refuse(row: object) -> bytes:
    raise ValueError(f"row outside the fast path: {row!r}")


def replay_frames(path: Path, limit: int) -> list[bytes]:
    """The first ``limit`` frames of a replay file (one JSON event a line)."""
    frames: list[bytes] = []
    with open(path, "rb") as f:
        for line in f:
            if len(frames) >= limit:
                break
            frames.append(line.rstrip(b"\n"))
    return frames


def format_breakdown(stages: list[Stage], worker_ns: float | None = None) -> str:
    """A table of the stages; with the real run's CPU ns per tick (worker process, both threads), the rest:
    the worker's loop, system calls (recv, write, COPY) and the report. The committer thread's share of the
    GIL is its encoding (COPY itself runs in libpq, outside the GIL)."""
    total = sum(s.ns_per_tick for s in stages)
    lines = [f"  {s.name:<30} {s.ns_per_tick:8.0f} ns/tick" for s in stages]
    lines.append(f"  {'sum of the stages':<30} {total:8.0f} ns/tick")
    if worker_ns is not None:
        lines.append(f"  {'worker loop and the rest':<30} {worker_ns - total:8.0f} ns/tick "
                     f"(the run's worker CPU {worker_ns:.0f} ns/tick)")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m shardctl.bench.stages REPLAY [FRAMES]
    import sys

    from shardctl.bench.data import BENCH_SYMBOLS, write_replay

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "replay.jsonl"
    if not path.exists():
        write_replay(path, 100_000, BENCH_SYMBOLS)
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    print(f"pid {os.getpid()}: {count:,} frames, batch 10,000")
    print(format_breakdown(breakdown(replay_frames(path, count), 10_000)))
