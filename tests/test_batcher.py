from __future__ import annotations

import pytest

from shardctl.worker.batcher import Batcher


def test_full_batch_is_due_at_batch_size() -> None:
    b: Batcher[int] = Batcher(batch_size=3, flush_interval=10.0)
    assert b.add(1, now=0.0) is False
    assert b.add(2, now=0.1) is False
    assert not b.due(0.2)
    assert b.add(3, now=0.2) is True
    assert b.due(0.2)
    assert b.take() == [1, 2, 3]
    assert len(b) == 0 and b.deadline() is None and not b.due(100.0)


def test_age_flush_counts_from_the_oldest_row() -> None:
    b: Batcher[str] = Batcher(batch_size=1000, flush_interval=1.0)
    b.add("a", now=5.0)
    b.add("b", now=5.9)
    assert b.deadline() == 6.0
    assert not b.due(5.99)
    assert b.due(6.0)
    assert b.take() == ["a", "b"]
    b.add("c", now=7.5)
    assert b.deadline() == 8.5, "the age clock restarts with the next batch's first row"


def test_empty_batcher_is_never_due() -> None:
    b: Batcher[int] = Batcher(batch_size=1, flush_interval=0.001)
    assert not b.due(1e9)
    assert b.take() == []


@pytest.mark.parametrize("size, interval", [(0, 1.0), (-1, 1.0), (10, 0.0)])
def test_invalid_settings_are_refused(size: int, interval: float) -> None:
    with pytest.raises(ValueError):
        Batcher(batch_size=size, flush_interval=interval)
