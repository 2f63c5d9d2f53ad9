"""The worker's journal cursor keeps its invariants whatever the worker does with it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.worker.offsets import JournalCursor


def test_rows_are_parsed_submitted_and_rewound() -> None:
    cursor = JournalCursor(100)
    cursor.parsed(120)
    cursor.parsed(140)
    assert cursor.unsubmitted and (cursor.parsed_to, cursor.submitted_to) == (140, 100)
    cursor.submitted()
    assert not cursor.unsubmitted and cursor.submitted_to == 140
    cursor.parsed(160)
    cursor.rewind()  # the committer had no room: the frame after 140 is read again
    assert (cursor.parsed_to, cursor.submitted_to) == (140, 140)
    cursor.parsed(160)
    assert cursor.parsed_to == 160


def test_a_frame_without_rows_is_new_only_once() -> None:
    cursor = JournalCursor(0)
    cursor.parsed(10)
    assert cursor.dealt_with(20) is True  # its dead letter is written now
    cursor.rewind()
    cursor.parsed(10)
    assert cursor.dealt_with(20) is False  # re-read from the journal: not written twice
    assert cursor.dealt_with(30) is True and cursor.dead_to == 30


@pytest.mark.parametrize("offset", [50, 49])
def test_parsing_backwards_is_a_bug_and_says_so(offset: int) -> None:
    cursor = JournalCursor(50)
    with pytest.raises(ValueError, match="not after the parsed offset 50"):
        cursor.parsed(offset)


def test_restart_moves_every_offset() -> None:
    cursor = JournalCursor()
    cursor.parsed(5)
    cursor.dealt_with(9)
    cursor.restart_at(1000)
    assert (cursor.parsed_to, cursor.submitted_to, cursor.dead_to) == (1000, 1000, 1000)


@given(st.lists(st.sampled_from(["rows", "none", "submit", "rewind"]), max_size=60))
def test_invariants_hold_under_any_sequence(steps: list[str]) -> None:
    cursor = JournalCursor(0)
    dead_before = 0
    for step in steps:
        if step == "rows":
            cursor.parsed(cursor.parsed_to + 7)
        elif step == "none":
            cursor.dealt_with(cursor.parsed_to + 3)
        elif step == "submit":
            cursor.submitted()
        else:
            cursor.rewind()
        assert cursor.submitted_to <= cursor.parsed_to
        assert cursor.dead_to >= dead_before
        dead_before = cursor.dead_to
