"""The journal: real files in temporary directories; no database, no sockets."""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from support import small_tmpfs

from shardctl.journal.errors import JournalCorrupt, JournalError, JournalFull
from shardctl.journal.format import MAX_FRAME, REC_HEADER, SEG_HEADER, Record, _scan
from shardctl.journal.journal import Journal


def frame(i: int, size: int | None = None) -> bytes:
    """A deterministic frame that names its index, so any mix-up shows."""
    body = f'{{"event":"price","i":{i}}}'.encode()
    size = len(body) + (i * 7) % 40 if size is None else size
    return body.ljust(size, b"#")


def fill(j: Journal, count: int, start: int = 0) -> list[int]:
    return [j.append(frame(i), 1000.0 + i) for i in range(start, start + count)]


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def indices(records: list[Record]) -> list[int]:
    return [int(r.frame.split(b'"i":')[1].split(b"}")[0]) for r in records]


def test_round_trip_across_segments(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=256, fsync="never")
    offsets = fill(j, 60)
    big = j.append(b"x" * 1000, 5.0)  # bigger than a segment: a segment of its own
    empty = j.append(b"", 6.0)
    assert offsets == sorted(offsets) and len(set(offsets)) == 60
    assert j.flush() == empty == j.end_offset
    records = list(j.replay(0))
    assert [r.end_offset for r in records] == offsets + [big, empty]
    assert [r.frame for r in records[:60]] == [frame(i) for i in range(60)]
    assert [r.received_at for r in records[:60]] == [1000.0 + i for i in range(60)]
    assert records[60] == Record(big, b"x" * 1000, 5.0) and records[61] == Record(empty, b"", 6.0)
    assert len(segments(tmp_path)) > 10
    lone_record = SEG_HEADER + REC_HEADER + 1000
    assert all(p.stat().st_size <= 256 for p in segments(tmp_path) if p.stat().st_size != lone_record)
    for k in (0, 1, 17, 59):  # replay from any end offset yields exactly what follows
        assert indices(list(j.replay(offsets[k]))[:60 - k - 1]) == list(range(k + 1, 60))
    assert list(j.replay(empty)) == []
    assert j.read(offsets[10], 5) == records[11:16]
    j.close()


def test_unflushed_records_are_invisible_to_readers(tmp_path: Path) -> None:
    j = Journal(tmp_path, fsync="never")
    end = j.append(b"a", 1.0)
    assert list(j.replay(0)) == [] and j.flushed_offset < end
    j.flush()
    assert [r.frame for r in j.replay(0)] == [b"a"]


def test_offsets_survive_reopen_and_continue(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=300)
    offsets = fill(j, 25)
    j.close()
    with pytest.raises(JournalError, match="closed"):
        j.append(b"x", 0.0)
    (tmp_path / "00000000000000099999.seg.tmp").write_bytes(b"half-made segment")
    j = Journal(tmp_path, segment_bytes=300)
    assert not list(tmp_path.glob("*.tmp")), "a segment left half-made by a crash is removed"
    assert j.end_offset == offsets[-1] and j.backlog_records == 25
    more = fill(j, 5, start=25)
    assert more[0] > offsets[-1]
    j.flush()
    assert indices(list(j.replay(0))) == list(range(30))
    assert [r.end_offset for r in j.replay(0)] == offsets + more
    j.close()


def test_commit_deletes_only_wholly_committed_segments(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=256)
    offsets = fill(j, 40)
    j.flush()
    before = segments(tmp_path)
    bases = [int(p.stem) for p in before]
    assert j.size_bytes == sum(p.stat().st_size for p in before)
    assert j.backlog_records == 40 and j.oldest_uncommitted_received_at == 1000.0
    cut = next(k for k, o in enumerate(offsets) if o > bases[3]) - 1  # the last record ending in segment 2
    mid = cut - 1  # ends inside segment 2: that segment must stay
    j.commit(offsets[mid])
    assert [int(p.stem) for p in segments(tmp_path)] == bases[2:]
    assert j.first_offset == bases[2] and j.committed_offset == offsets[mid]
    assert j.backlog_records == 40 - mid - 1 and j.oldest_uncommitted_received_at == 1000.0 + mid + 1
    j.commit(offsets[cut])  # ends exactly where segment 3 starts
    assert [int(p.stem) for p in segments(tmp_path)] == bases[3:]
    j.commit(offsets[5])  # older: ignored
    assert j.committed_offset == offsets[cut]
    assert j.size_bytes == sum(p.stat().st_size for p in segments(tmp_path))
    j.commit(offsets[-1])
    assert segments(tmp_path) == [before[-1]], "the active segment is never deleted"
    assert j.backlog_records == 0 and j.uncommitted_bytes == 0 and j.oldest_uncommitted_received_at is None
    end = j.append(b"late", 9.0)
    with pytest.raises(ValueError, match="flush"):
        j.commit(end)
    j.close()
    j = Journal(tmp_path, segment_bytes=256)
    assert j.first_offset == bases[-1] and j.end_offset == end
    j.commit(offsets[-1])
    assert [r.frame for r in j.replay(offsets[-1])] == [b"late"] and j.backlog_records == 1
    j.close()


def _torn_setup(d: Path) -> tuple[list[int], Path]:
    j = Journal(d, segment_bytes=512, fsync="never")
    offsets = fill(j, 12)
    j.close()
    return offsets, segments(d)[-1]


def test_torn_tail_is_cut_at_every_byte_and_appends_continue(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    offsets, _ = _torn_setup(tmp_path / "ref")
    last_seg = segments(tmp_path / "ref")[-1]
    base = int(last_seg.stem)
    whole = last_seg.read_bytes()
    cut_from = offsets[-2] - base  # the last record's first byte in its file
    assert cut_from >= SEG_HEADER
    for size in range(cut_from, len(whole)):
        d = tmp_path / f"cut{size}"
        _torn_setup(d)
        seg = segments(d)[-1]
        with open(seg, "r+b") as f:
            f.truncate(size)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="shardctl.journal"):
            j = Journal(d, segment_bytes=512, fsync="never")
        if size > cut_from:
            assert f"cut {size - cut_from} byte(s)" in caplog.text
        assert j.end_offset == offsets[-2]
        assert indices(list(j.replay(0))) == list(range(11))
        j.append(frame(99), 1.0)
        j.close()
        j = Journal(d, segment_bytes=512)
        assert indices(list(j.replay(0))) == list(range(11)) + [99]
        j.close()


@pytest.mark.parametrize("where", ["payload", "length", "seq", "time", "crc"])
def test_flipped_byte_in_last_record_is_cut(tmp_path: Path, where: str) -> None:
    offsets, seg = _torn_setup(tmp_path)
    data = bytearray(seg.read_bytes())
    start = offsets[-2] - int(seg.stem)
    data[start + {"payload": REC_HEADER + 3, "length": 0, "seq": 5, "time": 13, "crc": 21}[where]] ^= 0x40
    seg.write_bytes(bytes(data))
    j = Journal(tmp_path, segment_bytes=512)
    assert indices(list(j.replay(0))) == list(range(11)) and j.end_offset == offsets[-2]
    j.close()


def test_damage_in_an_older_segment_raises_with_path_and_offset(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=256)
    fill(j, 30)
    j.close()
    victim = segments(tmp_path)[1]
    data = bytearray(victim.read_bytes())
    data[SEG_HEADER + REC_HEADER + 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    j = Journal(tmp_path, segment_bytes=256)  # opening reads only the last segment
    with pytest.raises(JournalCorrupt, match="checksum mismatch") as info:
        list(j.replay(0))
    assert info.value.path == victim and info.value.offset == int(victim.stem) + SEG_HEADER
    assert "\n" not in str(info.value)
    victim.write_bytes(bytes(data[:-5]))  # a shortened older segment: a gap before the next
    with pytest.raises(JournalCorrupt, match="segment gap"):
        Journal(tmp_path, segment_bytes=256)
    victim.write_bytes(b"garbage!" + bytes(data[8:]))
    with pytest.raises(JournalCorrupt, match="bad segment header"):
        Journal(tmp_path, segment_bytes=256)


def test_cap_block_raises_until_commits_free_space(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=1024, max_bytes=2048)
    offsets: list[int] = []
    while not j.full:
        offsets.append(j.append(frame(len(offsets), 100), 1.0))
    assert j.size_bytes >= 2048 and j.size_bytes - 2048 < REC_HEADER + 100, "soft by at most one record"
    with pytest.raises(JournalFull, match="full"):
        j.append(b"more", 1.0)
    assert j.end_offset == offsets[-1] and j.dropped_records == 0
    j.flush()
    j.commit(offsets[len(offsets) // 2])
    assert not j.full
    j.append(b"more", 1.0)
    j.flush()
    assert [r.frame for r in j.replay(offsets[-1])] == [b"more"]
    j.close()


def test_cap_drop_oldest_counts_the_loss(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=1024, max_bytes=3072, on_full="drop_oldest")
    offsets = [j.append(frame(i, 100), 100.0 + i) for i in range(100)]  # 124-byte records, 8 per segment
    j.flush()
    assert j.size_bytes <= 3072 and j.size_bytes == sum(p.stat().st_size for p in segments(tmp_path))
    kept = list(j.replay(0))
    first_kept = indices(kept)[0]
    assert indices(kept) == list(range(first_kept, 100))
    assert j.dropped_records == first_kept and j.backlog_records == 100 - first_kept
    assert j.dropped_bytes == j.first_offset - 0
    gaps = j.gaps
    assert gaps[0].start_offset == 0 and gaps[-1].end_offset == j.first_offset
    assert all(a.end_offset == b.start_offset for a, b in itertools.pairwise(gaps))
    assert sum(g.records for g in gaps) == first_kept and gaps[0].first_received_at == 100.0
    assert gaps[-1].resumed_received_at == 100.0 + first_kept
    assert j.committed_offset == j.first_offset and j.oldest_uncommitted_received_at == 100.0 + first_kept
    # A committer that was reading the dropped part is moved on to what is left.
    assert indices(j.read(offsets[2], 3)) == [first_kept, first_kept + 1, first_kept + 2]
    j.close()


def test_drop_oldest_counts_only_uncommitted_records(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=1024, max_bytes=3072, on_full="drop_oldest")
    offsets = [j.append(frame(i, 100), float(i)) for i in range(20)]  # 124-byte records, 8 per segment
    j.flush()
    j.commit(offsets[4])  # records 0..4 committed, 5..7 not, in the oldest segment
    offsets += [j.append(frame(i, 100), float(i)) for i in range(20, 25)]
    assert j.dropped_records == 3 and j.dropped_bytes == offsets[7] - offsets[4]
    assert [(g.start_offset, g.end_offset, g.records) for g in j.gaps] == [(offsets[4], offsets[7], 3)]
    assert (j.gaps[0].first_received_at, j.gaps[0].resumed_received_at) == (5.0, 8.0)
    assert j.backlog_records == 25 - 8 and j.oldest_uncommitted_received_at == 8.0
    j.close()


def test_advance_to_when_the_ledger_is_ahead(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    fill(j, 3)
    with pytest.raises(ValueError):
        j.advance_to(10)
    j.advance_to(1_000_000)
    assert j.first_offset == 1_000_000 and j.backlog_records == 0 and len(segments(tmp_path)) == 1
    end = j.append(b"new", 1.0)
    assert end > 1_000_000
    j.close()
    j = Journal(tmp_path)
    j.commit(1_000_000)
    assert [r.frame for r in j.replay(1_000_000)] == [b"new"]
    j.close()


def test_records_larger_than_a_read_chunk(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=4096)
    big = os.urandom(3 * (1 << 20))
    j.append(b"small", 1.0)
    j.append(big, 2.0)
    j.append(b"after", 3.0)
    j.flush()
    assert [r.frame for r in j.replay(0)] == [b"small", big, b"after"]
    with pytest.raises(ValueError, match="limit"):
        j.append(b"x" * (MAX_FRAME + 1), 0.0)
    j.close()


def test_bad_arguments_are_one_line_value_errors(tmp_path: Path) -> None:
    for kwargs in ({"segment_bytes": 10}, {"segment_bytes": 1024, "max_bytes": 1500}, {"on_full": "panic"},
                   {"fsync": "sometimes"}):
        with pytest.raises(ValueError):
            Journal(tmp_path, **kwargs)


def test_committer_thread_reads_and_commits_while_appending(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=4096, fsync="never")
    total = 20_000
    seen: list[Record] = []
    done = threading.Event()

    def committer() -> None:
        cursor = j.cursor(0)
        while len(seen) < total:
            batch = cursor.read(500)
            if batch:
                seen.extend(batch)
                j.commit(batch[-1].end_offset)
            elif done.is_set() and cursor.position >= j.flushed_offset:
                break
        cursor.close()

    thread = threading.Thread(target=committer)
    thread.start()
    for i in range(total):
        j.append(frame(i), float(i))
        if i % 250 == 249:
            j.flush()
    j.flush()
    done.set()
    thread.join(10)
    assert indices(seen) == list(range(total))
    assert j.backlog_records == 0 and len(segments(tmp_path)) == 1
    j.close()


def test_fuzz_garbage_after_valid_records_is_cut(tmp_path: Path) -> None:
    rng = random.Random(1234)
    ref = tmp_path / "ref"
    j = Journal(ref, segment_bytes=1 << 16)
    fill(j, 20)
    j.close()
    clean = segments(ref)[0].read_bytes()
    for n in range(200):
        d = tmp_path / f"f{n}"
        d.mkdir()
        garbage = rng.randbytes(rng.randrange(1, 200))
        if n % 4 == 0:  # a plausible header with a wrong checksum, or an absurd length
            garbage = clean[SEG_HEADER:SEG_HEADER + REC_HEADER - 1] + garbage
        (d / "00000000000000000000.seg").write_bytes(clean + garbage)
        j = Journal(d, segment_bytes=1 << 16)
        assert indices(list(j.replay(0))) == list(range(20))
        j.close()
    for _ in range(500):  # the scanner itself never raises, whatever the bytes
        blob = rng.randbytes(rng.randrange(0, 300))
        out: list[Record] = []
        pos, _, problem, *_ = _scan(memoryview(blob), 0, None, 10**9, out, 0)
        assert pos <= len(blob) and (problem is None) == (pos == len(blob))


_CHILD = textwrap.dedent("""
    import sys, time
    from shardctl.journal.journal import Journal
    j = Journal(sys.argv[1], segment_bytes=8192, fsync="never")
    i = 0
    while True:
        j.append(f'{{"event":"price","i":{i}}}'.encode().ljust(60 + i % 50, b"#"), time.time())
        i += 1
        if i % 97 == 0:
            j.flush()
            print(i, flush=True)
""")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_loses_nothing_flushed(tmp_path: Path, seed: int) -> None:
    delay = random.Random(seed).uniform(0.05, 0.4)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    first = child.stdout.readline()  # appending has begun
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=10)
    flushed = int((first + out).split()[-1])
    j = Journal(tmp_path, segment_bytes=8192)
    records = list(j.replay(0))
    assert indices(records) == list(range(len(records))), "in order, nothing garbled"
    assert len(records) >= flushed > 0
    j.append(b"after", 1.0)
    j.close()


def test_flushing_per_batch_keeps_every_record_and_prints_the_rate(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The worker's pattern (a flush per 1,000 appends) under both fsync policies: every record replays, in order.

    The appends/s figure is printed for the curious; speed is judged by ``shardctl bench``, not here.
    """
    n = 50_000
    for policy in ("never", "flush"):
        j = Journal(tmp_path / policy, fsync=policy)
        started = time.perf_counter()
        ends = []
        for i in range(n):
            ends.append(j.append(frame(i, 200), 1.0))
            if i % 1000 == 999:
                j.flush()
        j.flush()
        elapsed = time.perf_counter() - started
        j.close()
        with Journal(tmp_path / policy, fsync=policy) as again:
            records = list(again.replay(0))
        assert indices(records) == list(range(n)) and [r.end_offset for r in records] == ends
        with capsys.disabled():
            print(f"\njournal: {n / elapsed:,.0f} appends/s of 200-byte frames (fsync={policy}, flush per 1,000)")


# ------------------------------------------------------------------ writes reach the OS, full disks, reclaim


def test_write_buffered_hands_every_record_to_the_os_without_fsync(tmp_path: Path) -> None:
    j = Journal(tmp_path, fsync="flush")
    fill(j, 3)
    active = segments(tmp_path)[-1]
    assert active.stat().st_size == SEG_HEADER, "appends are buffered in memory"
    j.write_buffered()
    assert active.stat().st_size == j.end_offset == j.flushed_offset
    data = active.read_bytes()  # what another process sees: every record, before any flush() or close()
    out: list[Record] = []
    _scan(memoryview(data), SEG_HEADER, 0, 100, out, 0)
    assert indices(out) == [0, 1, 2]
    j.close()


def test_last_received_at_comes_from_the_last_intact_record(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=256, fsync="never")
    assert j.last_received_at is None
    fill(j, 30)  # received at 1000.0 .. 1029.0, across segments
    j.close()
    active = segments(tmp_path)[-1]
    with open(active, "ab") as f:
        f.write(b"\x07" * 10)  # a torn record after the last intact one
    assert Journal(tmp_path, segment_bytes=256, fsync="never").last_received_at == 1029.0


def test_the_last_burst_is_the_run_of_records_sharing_the_last_receive_time(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=4096, fsync="never")
    assert j.last_burst == []
    j.append_many([b"a", b"b"], 10.0)
    j.append_many([b"c", b"d", b"e"], 11.0)
    j.close()
    assert Journal(tmp_path, segment_bytes=4096, fsync="never").last_burst == [b"c", b"d", b"e"]


def test_the_last_burst_is_found_behind_an_empty_active_segment(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=256, fsync="never")
    fill(j, 30)  # one record per receive time, across segments
    j.close()
    empty = tmp_path / f"{Journal(tmp_path, segment_bytes=256, fsync='never').end_offset:020d}.seg"
    last = segments(tmp_path)[-1]
    empty.write_bytes(last.read_bytes()[:8] + (30).to_bytes(8, "little"))  # rolled, no record written yet
    again = Journal(tmp_path, segment_bytes=256, fsync="never")
    assert again.last_burst == [frame(29)] and again.last_received_at == 1029.0


def test_committed_space_in_the_active_segment_is_given_back(tmp_path: Path) -> None:
    from shardctl.journal.journal import RECLAIM_BYTES

    j = Journal(tmp_path, segment_bytes=64 * RECLAIM_BYTES, fsync="never")
    offsets = [j.append(frame(i, 4096), 1000.0 + i) for i in range(400)]  # > RECLAIM_BYTES, one segment
    j.flush()
    j.commit(offsets[-1])
    assert j.size_bytes == SEG_HEADER and sum(p.stat().st_size for p in segments(tmp_path)) == SEG_HEADER
    after = fill(j, 5, start=400)
    assert after[0] > offsets[-1], "offsets go on past the reclaimed segment"
    j.close()
    again = Journal(tmp_path, segment_bytes=64 * RECLAIM_BYTES, fsync="never")
    again.commit(offsets[-1])
    assert [r.end_offset for r in again.replay(offsets[-1])] == after
    assert indices(list(again.replay(offsets[-1]))) == [400, 401, 402, 403, 404]


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root, as in CI); skipped elsewhere with the reason."""
    with small_tmpfs(tmp_path / "tiny", "1m") as mount:
        yield mount


def test_a_full_disk_keeps_every_record_and_resumes(tiny_fs: Path) -> None:
    from shardctl.journal.errors import JournalDiskFull

    j = Journal(tiny_fs / "journal", segment_bytes=64 * 1024 * 1024, fsync="never")
    offsets: list[int] = []
    with pytest.raises(JournalDiskFull) as full:
        for i in range(10_000):
            offsets.append(j.append(frame(i, 1000), 1000.0 + i))
            j.write_buffered()
    assert "disk full" in str(full.value) and str(tiny_fs / "journal") in str(full.value)
    on_disk = j.flushed_offset
    assert on_disk < j.end_offset == offsets[-1], "the refused records stay buffered"
    assert on_disk in offsets, "a partial write is cut back to whole records"
    with pytest.raises(JournalDiskFull):
        j.write_buffered()
    j.commit(on_disk)  # the database took everything on disk: the space comes back
    j.write_buffered()
    assert j.flushed_offset == j.end_offset
    j.close()
    reopened = Journal(tiny_fs / "journal", segment_bytes=64 * 1024 * 1024, fsync="never")
    reopened.commit(on_disk)
    kept = list(reopened.replay(on_disk))
    assert [r.end_offset for r in kept] == [o for o in offsets if o > on_disk]
    assert reopened.last_received_at == 1000.0 + len(offsets) - 1
    reopened.close()
