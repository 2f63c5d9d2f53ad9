"""Size-or-age batching: a batch is due at ``batch_size`` rows or when its oldest row is ``flush_interval`` old."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects rows; pure (callers pass ``now``), so tests need no clock."""

    def __init__(self, batch_size: int, flush_interval: float) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.rows: list[T] = []
        self.first_at: float | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: T, now: float) -> bool:
        """Append a row received at ``now``; True when the batch is full and should be taken."""
        if not self.rows:
            self.first_at = now
        self.rows.append(row)
        return len(self.rows) >= self.batch_size

    def room(self) -> int:
        """Rows the batch takes before it is full."""
        return self.batch_size - len(self.rows)

    def extend(self, rows: list[T], now: float) -> bool:
        """Append rows received at ``now`` (at most ``room()`` of them); True when the batch is full."""
        if rows and not self.rows:
            self.first_at = now
        self.rows += rows
        return len(self.rows) >= self.batch_size

    def deadline(self) -> float | None:
        """When the pending rows must be flushed by age, or None when empty."""
        return None if self.first_at is None else self.first_at + self.flush_interval

    def due(self, now: float) -> bool:
        """True when the pending rows should be flushed now (full, or the oldest is old enough)."""
        deadline = self.deadline()
        return deadline is not None and bool(self.rows) and (len(self.rows) >= self.batch_size or now >= deadline)

    def take(self) -> list[T]:
        """Remove and return the pending rows (possibly empty)."""
        rows, self.rows, self.first_at = self.rows, [], None
        return rows
