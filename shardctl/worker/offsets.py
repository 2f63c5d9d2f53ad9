"""Where a worker stands in its journal: three offsets and the rules between them.

Every offset is the end of a journal record. ``parsed_to`` is the end of the
last frame turned into rows (batched or handed to the committer);
``submitted_to`` the end of the last frame whose rows the committer holds;
``dead_to`` the end of the last frame already dealt with without rows (a dead
letter written, a status handled), so that re-reading the journal never
writes a dead letter twice.

Invariants: ``submitted_to <= parsed_to``; ``dead_to`` never goes down;
``parsed_to`` only goes forward, except by ``rewind`` to ``submitted_to``
(the batch was not handed over: its frames are read again from the journal).
"""

from __future__ import annotations


class JournalCursor:
    """The worker's three journal offsets, moved only in ways that keep their invariants."""

    __slots__ = ("_parsed_to", "_submitted_to", "_dead_to")

    def __init__(self, start: int = 0) -> None:
        self._parsed_to = self._submitted_to = self._dead_to = start

    @property
    def parsed_to(self) -> int:
        return self._parsed_to

    @property
    def submitted_to(self) -> int:
        return self._submitted_to

    @property
    def dead_to(self) -> int:
        return self._dead_to

    @property
    def unsubmitted(self) -> bool:
        """True when frames were parsed that the committer does not hold yet."""
        return self._parsed_to > self._submitted_to

    def restart_at(self, offset: int) -> None:
        """Start over at ``offset`` (the ledger's, at start-up): everything before it is done."""
        self._parsed_to = self._submitted_to = self._dead_to = offset

    def rewind_to(self, offset: int) -> None:
        """The database lost what was committed after ``offset``: parse from there again (dead letters stay written)."""
        self._parsed_to = self._submitted_to = offset
        self._dead_to = max(self._dead_to, offset)

    def parsed(self, offset: int) -> None:
        """The frame ending at ``offset`` became rows; ValueError if it is not after the last one."""
        if offset <= self._parsed_to:
            raise ValueError(f"frame end {offset} is not after the parsed offset {self._parsed_to}")
        self._parsed_to = offset

    def dealt_with(self, offset: int) -> bool:
        """The frame ending at ``offset`` carried no rows; True when it is new (its dead letter is not written)."""
        self.parsed(offset)
        if offset <= self._dead_to:
            return False
        self._dead_to = offset
        return True

    def submitted(self) -> None:
        """Everything parsed is now with the committer."""
        self._submitted_to = self._parsed_to

    def rewind(self) -> None:
        """The rows parsed since the last submit were dropped: parse their frames again from the journal."""
        self._parsed_to = self._submitted_to

    def __repr__(self) -> str:
        return (f"JournalCursor(parsed_to={self._parsed_to}, submitted_to={self._submitted_to}, "
                f"dead_to={self._dead_to})")
