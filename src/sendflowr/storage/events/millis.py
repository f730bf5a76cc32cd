"""Timestamps as the event store keeps them: integer milliseconds since the Unix epoch (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(at: datetime) -> int:
    """Exact milliseconds (integer arithmetic, unlike float seconds); aware datetimes only."""
    if at.tzinfo is None:
        raise ValueError("datetimes passed to the event store must be timezone-aware")
    return (at - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int | str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
