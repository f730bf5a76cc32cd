"""A person's engagements as a 7 x 24 grid of counts in local time (pure numpy: no I/O).

Rows are the days of the local week, Monday first; columns the local hours 0-23. Local time is
the zone's wall clock at each event (daylight saving included: an event at 01:30 UTC on a
summer night in Paris is in the 03:00 column, one in winter in the 02:00 column).

What counts is what the timing engine learns from (timing/activity.py): real engagements of
the counted types. Machine engagements never enter the grid, they are counted apart: the
connector's machine-open flag, or an engagement within `machine_open_s` of the person's latest
delivery (`received`) at or before it (a mail client or link scanner fetching the message as it
arrives), the same rule the engine's features apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np

from sendflowr.timing.activity import IntArray
from sendflowr.timing.engine import local_minute_of_week

DAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HOURS: Final = 24
GRID_TYPES: Final = ("clicked", "opened")  # what the grid counts (human ones only)
DELIVERY: Final = "received"
MINUTE: Final = 60
_NEVER: Final = np.iinfo(np.int64).min
BoolArray = np.ndarray[tuple[int, ...], np.dtype[np.bool_]]


@dataclass(frozen=True, slots=True)
class EngagementGrid:
    counts: list[list[int]]  # [day][hour], Monday first, local time
    by_type: dict[str, int]  # counted (human) engagements per type, every GRID_TYPES key
    machine: int  # engagements of the counted types judged machine-made (not in the grid)
    deliveries: int
    first_utc: int | None  # unix seconds of the first and last engagement in the grid
    last_utc: int | None

    @property
    def total(self) -> int:
        return sum(self.by_type.values())


def latest_delivery_before(utc_s: IntArray, is_delivery: BoolArray) -> IntArray:
    """Per event (time-sorted), the time of the latest delivery at or before it, else _NEVER."""
    idx = np.where(is_delivery, np.arange(len(utc_s)), -1)
    last = np.maximum.accumulate(idx) if len(idx) else idx
    out: IntArray = np.where(last >= 0, utc_s[np.maximum(last, 0)], _NEVER)
    return out


def engagement_grid(
    utc_s: Sequence[int],
    types: Sequence[str],
    machine_flag: Sequence[bool],
    zone: ZoneInfo,
    machine_open_s: float = 5.0,
    counted: Sequence[str] = GRID_TYPES,
) -> EngagementGrid:
    """Bucket one person's events (any order; other types are ignored) into the local grid."""
    n = len(utc_s)
    if len(types) != n or len(machine_flag) != n:
        raise ValueError("utc_s, types and machine_flag must have the same length")
    t = np.asarray(utc_s, np.int64)
    kind = np.asarray(types, dtype=object)
    # deliveries first on equal times: an open in the same second as its delivery is machine
    is_d = np.asarray([k == DELIVERY for k in types], np.bool_)
    order = np.lexsort((~is_d, t))
    t, kind, is_d = t[order], kind[order], is_d[order]
    flag = np.asarray(machine_flag, np.bool_)[order]
    wanted = np.asarray([k in counted for k in kind.tolist()], np.bool_)
    delivered = latest_delivery_before(t, is_d)
    has = delivered != _NEVER
    lag = np.where(has, t - np.where(has, delivered, 0), -1)
    soon = has & (lag >= 0) & (lag < machine_open_s)
    machine = wanted & (flag | soon)
    human = wanted & ~machine
    counts = np.zeros((len(DAYS), HOURS), np.int64)
    if human.any():
        minutes = t[human] - t[human] % MINUTE
        mow = local_minute_of_week(minutes, zone)
        np.add.at(counts, (mow // 1_440, mow % 1_440 // 60), 1)
    by_type = {k: int(np.sum(human & (kind == k))) for k in counted}
    return EngagementGrid(
        counts=counts.tolist(),
        by_type=by_type,
        machine=int(machine.sum()),
        deliveries=int(is_d.sum()),
        first_utc=int(t[human][0]) if human.any() else None,
        last_utc=int(t[human][-1]) if human.any() else None,
    )
