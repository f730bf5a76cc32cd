"""UTC-offset tables: each zone's offset as a few constant segments over a span of time.

Vectorised code looks offsets up here instead of calling zoneinfo per instant. Times are minutes
relative to an origin (a UTC instant in milliseconds). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

_MS_PER_MINUTE = 60_000


def offset_minutes(zone: ZoneInfo, utc_minute: int) -> int:
    """UTC offset of `zone` (in whole minutes) at the UTC instant `utc_minute` since the epoch."""
    offset = datetime.fromtimestamp(utc_minute * 60, UTC).astimezone(zone).utcoffset()
    assert offset is not None
    return int(offset.total_seconds() // 60)


def _transitions(zone: ZoneInfo, first: int, last: int) -> list[tuple[int, int]]:
    """(UTC minute, new offset) of each change of offset in [first, last] (epoch minutes)."""
    out: list[tuple[int, int]] = []
    step = 1440  # real zones never change offset twice within a day
    prev_minute, prev_offset = first, offset_minutes(zone, first)
    for minute in range(first + step, last + step, step):
        current = offset_minutes(zone, minute)
        if current == prev_offset:
            prev_minute = minute
            continue
        lo, hi = prev_minute, minute  # offset(lo) == prev_offset != offset(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if offset_minutes(zone, mid) == prev_offset:
                lo = mid
            else:
                hi = mid
        out.append((hi, current))
        prev_minute, prev_offset = minute, current
    return out


@dataclass(frozen=True, slots=True)
class ZoneSegments:
    """Per zone (row), segments [start, end) of constant offset; minutes relative to the origin.

    The first segment starts at -inf and the last ends at +inf (the span's edge offsets are assumed
    to hold beyond it); rows with fewer segments are padded with empty segments at +inf.
    """

    zones: tuple[str, ...]
    origin_ms: int
    start: NDArray[np.float64]
    end: NDArray[np.float64]
    offset: NDArray[np.int64]

    @property
    def width(self) -> int:
        return int(self.start.shape[1])

    def offset_at(self, zone: NDArray[np.intp], minute: NDArray[np.float64]) -> NDArray[np.int64]:
        out = np.zeros(minute.shape, dtype=np.int64)
        for j in range(self.width):
            inside = (minute >= self.start[zone, j]) & (minute < self.end[zone, j])
            out[inside] = self.offset[zone[inside], j]
        return out


def zone_segments(
    zones: tuple[str, ...], origin_ms: int, span_start_ms: int, span_end_ms: int
) -> ZoneSegments:
    if origin_ms % _MS_PER_MINUTE:
        raise ValueError("origin_ms must be a whole minute")
    origin_min = origin_ms // _MS_PER_MINUTE
    first = span_start_ms // _MS_PER_MINUTE
    last = -(-span_end_ms // _MS_PER_MINUTE)
    rows: list[list[tuple[float, float, int]]] = []
    for name in zones:
        zone = ZoneInfo(name)
        offset = offset_minutes(zone, first)
        begin = -np.inf
        row: list[tuple[float, float, int]] = []
        for at, new_offset in _transitions(zone, first, last):
            row.append((begin, float(at - origin_min), offset))
            begin, offset = float(at - origin_min), new_offset
        row.append((begin, np.inf, offset))
        rows.append(row)
    width = max(len(r) for r in rows)
    start = np.full((len(zones), width), np.inf)
    end = np.full((len(zones), width), np.inf)
    offset_arr = np.zeros((len(zones), width), dtype=np.int64)
    for z, row in enumerate(rows):
        for j, (b, e, o) in enumerate(row):
            start[z, j], end[z, j], offset_arr[z, j] = b, e, o
    return ZoneSegments(zones, origin_ms, start, end, offset_arr)
