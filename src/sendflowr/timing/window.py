"""The decision window a client asks for, checked (pure: `now` is passed in)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sendflowr.errors import InvalidInputError

MAX_WINDOW: Final = timedelta(days=14)
DEFAULT_WINDOW: Final = timedelta(hours=24)
MIN_WINDOW: Final = timedelta(minutes=1)


class WindowError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def invalid_input(self) -> InvalidInputError:
        """The 422 an API answers: the body field and the reason."""
        return InvalidInputError.at(("body", self.field), self.reason)


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime  # first minute a send may land (UTC, whole minute)
    end: datetime  # exclusive


def check_window(
    send_after: datetime | None,
    send_before: datetime | None,
    latency_seconds: int,
    now: datetime,
) -> Window:
    """`send_after` defaults to now; `send_before` to 24 hours later. A window in the past, an
    empty or inverted one, or one over 14 days is refused naming the field."""
    for name, value in (("send_after", send_after), ("send_before", send_before)):
        if value is not None and value.tzinfo is None:
            raise WindowError(name, "must carry a time zone offset (e.g. 2026-01-10T09:00:00Z)")
    if latency_seconds < 0:
        raise WindowError("latency_estimate_seconds", "must not be negative")
    earliest = now + timedelta(seconds=latency_seconds)
    start = send_after if send_after is not None else earliest
    end = send_before if send_before is not None else start + DEFAULT_WINDOW
    if end <= start:
        raise WindowError("send_before", "must be after send_after")
    if end - start > MAX_WINDOW:
        raise WindowError("send_before", f"the window may span at most {MAX_WINDOW.days} days")
    if end <= earliest:
        raise WindowError(
            "send_before", "the window is in the past (no send could land in it any more)"
        )
    # A send cannot land before now + latency: the usable window starts there.
    start = max(start, earliest)
    start = _ceil_minute(start)
    if end - start < MIN_WINDOW:
        raise WindowError("send_before", "less than a minute of the window is still ahead")
    return Window(start, end)


def _ceil_minute(at: datetime) -> datetime:
    floor = at.replace(second=0, microsecond=0)
    return floor if floor == at else floor + timedelta(minutes=1)
