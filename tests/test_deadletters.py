"""Dead letters stay within their cap: rotation, per-entry frame cap, the dropped count, reading both files.

Real files in temporary directories; one real worker against the local feed
for the counters it reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import WorkerProcess, row_count, wait_until

from shardctl.config import check_config
from shardctl.feed.server import FeedServer
from shardctl.journal.deadletters import FILE_NAME, DeadLetters, read_all_dead_letters
from shardctl.report import WorkerReport

KIB, MIB = 1024, 1024 * 1024
FRAME_SIZE = 64 * KIB
FRAMES = 1500


def junk(i: int) -> bytes:
    """A 64 KiB frame that is not JSON and names its index at the start."""
    return f"junk {i:05d} ".encode().ljust(FRAME_SIZE, b"x")


def index(entry: dict) -> int:
    return int(entry["frame"].split()[1])


def on_disk(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir()}


def fill(path: Path, count: int = FRAMES, start: int = 0, **kw: int) -> DeadLetters:
    dead = DeadLetters(path, 10.0, **kw)
    for i in range(start, start + count):
        dead.add(junk(i), "not JSON: unexpected character", float(i))
    dead.close()
    return dead


@pytest.mark.slow
def test_1500_frames_of_64KiB_stay_within_the_default_cap(tmp_path: Path) -> None:
    dead = fill(tmp_path / FILE_NAME)
    sizes = on_disk(tmp_path)
    assert sum(sizes.values()) <= 2 * 8 * MIB, sizes
    assert dead.count == FRAMES and dead.dropped == 0
    entries = list(read_all_dead_letters(tmp_path / FILE_NAME))
    assert [index(e) for e in entries] == list(range(FRAMES))
    assert {e["frame_bytes"] for e in entries} == {FRAME_SIZE}
    assert {len(e["frame"]) for e in entries} == {4096}, "the first 4,096 characters are kept"


@pytest.mark.slow
def test_rotation_keeps_the_newest_entries_and_counts_the_dropped(tmp_path: Path) -> None:
    cap = 256 * KIB
    dead = fill(tmp_path / FILE_NAME, max_bytes=cap)
    sizes = on_disk(tmp_path)
    assert set(sizes) == {FILE_NAME, FILE_NAME + ".1"}
    assert max(sizes.values()) <= cap, sizes
    entries = list(read_all_dead_letters(tmp_path / FILE_NAME))
    kept = [index(e) for e in entries]
    assert kept == list(range(FRAMES - len(kept), FRAMES)), "the newest, oldest first, none missing"
    assert dead.count == FRAMES
    assert dead.dropped == FRAMES - len(kept) > 0


def test_a_restarted_worker_continues_the_files_and_the_count(tmp_path: Path) -> None:
    cap = 128 * KIB
    first = fill(tmp_path / FILE_NAME, 100, max_bytes=cap)
    second = fill(tmp_path / FILE_NAME, 100, start=100, max_bytes=cap)
    assert max(on_disk(tmp_path).values()) <= cap
    kept = [index(e) for e in read_all_dead_letters(tmp_path / FILE_NAME)]
    assert kept == list(range(200 - len(kept), 200))
    assert first.dropped + second.dropped == 200 - len(kept) > 0


def test_one_entry_cannot_exceed_the_smallest_cap(tmp_path: Path) -> None:
    cap = 64 * KIB
    dead = DeadLetters(tmp_path / FILE_NAME, 10.0, max_bytes=cap)
    worst = bytes(range(32)) * 4096  # control characters: JSON writes each as 6 bytes
    for _ in range(10):
        dead.add(worst, "r" * 10_000, 0.0)
    dead.close()
    assert max(on_disk(tmp_path).values()) <= cap
    entry = list(read_all_dead_letters(tmp_path / FILE_NAME))[-1]
    assert entry["frame_bytes"] == len(worst) and len(entry["reason"]) <= 200


def test_dead_letter_max_bytes_is_a_size_setting_with_a_floor(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[defaults]\ndead_letter_max_bytes = "1MiB"\n'
                    '[shards.a]\nsymbols = ["AAPL"]\n'
                    '[shards.b]\nsymbols = ["MSFT"]\ndead_letter_max_bytes = "1KiB"\n')
    config, problems, _ = check_config(path)
    assert config is None
    assert [str(p) for p in problems] == [f"{path}: shards.b.dead_letter_max_bytes: must be at least 64KiB "
                                          "(a single dead letter may take up to 26 KiB), got '1KiB'"]
    path.write_text('[defaults]\ndead_letter_max_bytes = "1MiB"\n[shards.a]\nsymbols = ["AAPL"]\n')
    config, problems, _ = check_config(path)
    assert problems == [] and config is not None
    assert config.shards["a"].settings.dead_letter_max_bytes == MIB
    assert config.defaults.dead_letter_max_bytes == MIB
    path.write_text('[shards.a]\nsymbols = ["AAPL"]\n')
    config, _, _ = check_config(path)
    assert config is not None and config.shards["a"].settings.dead_letter_max_bytes == 8 * MIB


def stats(worker: WorkerProcess) -> list[WorkerReport]:
    """The worker's stats reports so far, read through the typed report."""
    return [WorkerReport.from_json(r) for r in worker.reports() if r.get("type") == "stats"]


@pytest.mark.slow
def test_a_worker_reports_the_dropped_count_and_deadletters_reads_both_files(tmp_path, schema_dsn) -> None:
    symbols = ("AAPL", "BTC/USD")
    config = tmp_path / "shardctl.toml"
    with FeedServer(rate=2000, symbols=symbols, seed=31) as feed:
        config.write_text("\n".join([
            f'state_dir = "{tmp_path / "state"}"', "[database]", f"dsn = {json.dumps(schema_dsn)}",
            "[source]", f'url = "{feed.url}"', "[defaults]", 'dead_letter_max_bytes = "64KiB"',
            'flush_interval = "200ms"', "[shards.s1]", f"symbols = {json.dumps(list(symbols))}"]) + "\n")
        worker = WorkerProcess(config, "s1", tmp_path / "worker.log", report=True)
        try:
            wait_until(lambda: row_count(schema_dsn) > 0, what="rows")
            feed.inject("garbage", every=1)
            wait_until(lambda: any(r.counters.dead_letters_dropped > 0 for r in stats(worker)),
                       what="dead letters dropped at the cap")
            feed.clear("garbage")
            assert worker.terminate() == 0
            final = stats(worker)[-1].counters
        finally:
            worker.close()
    shard_dir = tmp_path / "state" / "shards" / "s1"
    assert max(on_disk(shard_dir).get(n, 0) for n in (FILE_NAME, FILE_NAME + ".1")) <= 64 * KIB
    kept = list(read_all_dead_letters(shard_dir / FILE_NAME))
    assert final.dead_letters == final.dead_letters_dropped + len(kept)
    assert final.dead_letters_dropped > 0
    shown = subprocess.run([sys.executable, "-m", "shardctl", "deadletters", str(config), "--format", "json",
                            "--limit", "100000"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["at"] for line in shown.stdout.splitlines()] == [e["at"] for e in kept]
    text = subprocess.run([sys.executable, "-m", "shardctl", "deadletters", str(config), "--limit", "1"],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].startswith(f"s1: {len(kept)} dead letter(s) in ")



def test_a_file_larger_than_the_cap_is_not_kept_at_rotation(tmp_path: Path) -> None:
    """An older version's file (or one written under a larger cap) would keep .1 above the cap: it goes."""
    legacy = tmp_path / FILE_NAME
    legacy.write_bytes(b"".join(json.dumps({"at": 1.0, "reason": "old", "frame": "x" * 1000}).encode() + b"\n"
                                for _ in range(300)))
    dead = fill(legacy, 2, max_bytes=64 * KIB)
    assert max(on_disk(tmp_path).values()) <= 64 * KIB
    assert dead.dropped == 300
    assert [index(e) for e in read_all_dead_letters(legacy)] == [0, 1]


def test_a_full_disk_drops_dead_letters_without_failing(tmp_path: Path) -> None:
    """ENOSPC while keeping a dead letter is counted, logged once, and the next one is kept when space returns."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for a full disk")
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        ballast = mount / "ballast"
        with open(ballast, "wb") as f:  # fill the disk
            try:
                f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        dead = DeadLetters(mount / FILE_NAME, log_interval=60.0)
        for i in range(3):
            dead.add(b"x" * 100, "not JSON", now=float(i))
        assert (dead.count, dead.dropped) == (3, 3)
        ballast.unlink()
        dead.add(b"y" * 100, "not JSON", now=10.0)
        dead.close()
        assert (dead.count, dead.dropped) == (4, 3)
        assert [e["frame"] for e in read_all_dead_letters(mount / FILE_NAME)] == ["y" * 100]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
