"""Backoff with an injected clock and random source: no sleeping."""

from __future__ import annotations

import pytest

from shardctl.backoff import Backoff


def no_jitter() -> float:
    return 0.5  # the middle of [0, 1): spread factor exactly 1


def test_grows_exponentially_up_to_the_cap() -> None:
    b = Backoff(1.0, 10.0, rng=no_jitter)
    assert [b.failed(now=0.0) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_stays_within_bounds_and_under_the_cap() -> None:
    low = Backoff(1.0, 8.0, jitter=0.2, rng=lambda: 0.0)
    high = Backoff(1.0, 8.0, jitter=0.2, rng=lambda: 0.999999)
    assert low.failed(0.0) == pytest.approx(0.8)
    assert high.failed(0.0) == pytest.approx(1.2, rel=1e-5)
    for _ in range(10):
        assert high.failed(0.0) <= 8.0


def test_resets_after_a_healthy_period() -> None:
    b = Backoff(1.0, 60.0, reset_after=30.0, rng=no_jitter)
    assert b.failed(0.0) == 1.0
    assert b.failed(1.0) == 2.0
    b.succeeded(3.0)
    assert b.failed(10.0) == 4.0, "healthy for only 7 s: keep growing"
    b.succeeded(14.0)
    assert b.failed(44.0) == 1.0, "healthy for 30 s: start again"


def test_a_success_reported_on_every_call_still_resets() -> None:
    """The committer reports a success after every batch: only the first one starts the healthy period."""
    b = Backoff(0.25, 2.0, reset_after=2.0, rng=no_jitter)
    assert [b.failed(t) for t in (0.0, 0.25, 0.75, 1.75, 3.75)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    for tick in range(100):  # database back at 5.0: a batch commits every 0.1 s
        b.succeeded(5.0 + tick / 10)
    assert b.failed(15.0) == 0.25, "healthy since 5.0: the second outage starts from initial again"
    b.succeeded(15.3)
    b.succeeded(16.0)
    assert b.failed(16.5) == 0.5, "healthy for 1.2 s only (since 15.3): keep growing"


def test_reset_forgets_failures() -> None:
    b = Backoff(0.5, 5.0, rng=no_jitter)
    b.failed(0.0)
    b.failed(0.0)
    b.reset()
    assert b.failed(0.0) == 0.5


@pytest.mark.parametrize("initial, maximum, jitter", [(0.0, 1.0, 0.1), (2.0, 1.0, 0.1), (1.0, 2.0, 1.0)])
def test_bad_parameters(initial: float, maximum: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, maximum, jitter=jitter)
