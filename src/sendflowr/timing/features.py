"""Per-person engagement features, updated incrementally from canonical events (pure).

Compact by design (well under 2 KB serialised): counts by type, machine opens excluded, and a
weighted hour-of-week engagement histogram in UTC. The timing engine builds on these.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

HOURS_PER_WEEK: Final = 168
# 1970-01-01 was a Thursday: shift so bin 0 is Monday 00:00 UTC.
_EPOCH_WEEK_OFFSET_HOURS: Final = 3 * 24

# How much one event says about when a person pays attention.
ENGAGEMENT_WEIGHTS: Final[dict[str, float]] = {
    "clicked": 2.0,
    "opened": 1.0,
    "ordered": 2.0,
    "site_visit": 0.5,
    "product_view": 0.5,
}
COUNTED_TYPES: Final = (
    "received",
    "opened",
    "clicked",
    "bounced",
    "unsubscribed",
    "spam_complaint",
    "ordered",
    "site_visit",
    "product_view",
)
_TYPE_INDEX: Final = {t: i for i, t in enumerate(COUNTED_TYPES)}
_HEADER: Final = struct.Struct("<BqqI")  # version, first_ms, last_engagement_ms, machine opens
_FORMAT_VERSION: Final = 1


@dataclass(slots=True)
class ProfileFeatures:
    counts: npt.NDArray[np.uint32] = field(
        default_factory=lambda: np.zeros(len(COUNTED_TYPES), np.uint32)
    )
    hour_of_week: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros(HOURS_PER_WEEK, np.float32)
    )
    machine_opens_excluded: int = 0
    first_seen_ms: int = 0
    last_engagement_ms: int = 0

    def count(self, event_type: str) -> int:
        return int(self.counts[_TYPE_INDEX[event_type]])

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(
            _FORMAT_VERSION,
            self.first_seen_ms,
            self.last_engagement_ms,
            self.machine_opens_excluded,
        )
        return header + self.counts.tobytes() + self.hour_of_week.tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ProfileFeatures:
        version, first, last, machine = _HEADER.unpack_from(raw)
        if version != _FORMAT_VERSION:
            raise ValueError(f"feature format version {version} is not {_FORMAT_VERSION}")
        off = _HEADER.size
        n = len(COUNTED_TYPES) * 4
        counts = np.frombuffer(raw, np.uint32, len(COUNTED_TYPES), off).copy()
        hours = np.frombuffer(raw, np.float32, HOURS_PER_WEEK, off + n).copy()
        return cls(counts, hours, machine, first, last)


@dataclass(frozen=True, slots=True)
class BatchColumns:
    """The columns of a batch the feature update needs (numpy, aligned by event)."""

    profile_index: npt.NDArray[np.int64]  # index into `profiles`
    profiles: list[str]
    type_index: npt.NDArray[np.int64]  # index into COUNTED_TYPES
    occurred_ms: npt.NDArray[np.int64]
    is_machine_open: npt.NDArray[np.bool_]


def hour_of_week_utc(ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    hours = ms // 3_600_000 + _EPOCH_WEEK_OFFSET_HOURS
    out: npt.NDArray[np.int64] = hours % HOURS_PER_WEEK
    return out


_WEIGHT_BY_TYPE: Final = np.array(
    [ENGAGEMENT_WEIGHTS.get(t, 0.0) for t in COUNTED_TYPES], dtype=np.float32
)


_NO_FIRST: Final = np.iinfo(np.int64).max


@dataclass(slots=True)
class FeatureTable:
    """Features of many profiles as dense arrays, one row a profile (vectorised updates)."""

    counts: npt.NDArray[np.uint32]
    hour_of_week: npt.NDArray[np.float32]
    machine_opens: npt.NDArray[np.int64]
    first_seen_ms: npt.NDArray[np.int64]  # 0: nothing seen yet
    last_engagement_ms: npt.NDArray[np.int64]

    @classmethod
    def empty(cls, rows: int) -> FeatureTable:
        return cls(
            np.zeros((rows, len(COUNTED_TYPES)), np.uint32),
            np.zeros((rows, HOURS_PER_WEEK), np.float32),
            np.zeros(rows, np.int64),
            np.zeros(rows, np.int64),
            np.zeros(rows, np.int64),
        )

    def __len__(self) -> int:
        return len(self.machine_opens)

    def grown(self, rows: int) -> FeatureTable:
        """A copy with at least `rows` rows (new rows empty)."""
        if rows <= len(self):
            return self
        bigger = FeatureTable.empty(rows)
        n = len(self)
        bigger.counts[:n] = self.counts
        bigger.hour_of_week[:n] = self.hour_of_week
        bigger.machine_opens[:n] = self.machine_opens
        bigger.first_seen_ms[:n] = self.first_seen_ms
        bigger.last_engagement_ms[:n] = self.last_engagement_ms
        return bigger

    def row(self, i: int) -> ProfileFeatures:
        return ProfileFeatures(
            self.counts[i].copy(),
            self.hour_of_week[i].copy(),
            int(self.machine_opens[i]),
            int(self.first_seen_ms[i]),
            int(self.last_engagement_ms[i]),
        )

    def set_row(self, i: int, f: ProfileFeatures) -> None:
        self.counts[i] = f.counts
        self.hour_of_week[i] = f.hour_of_week
        self.machine_opens[i] = f.machine_opens_excluded
        self.first_seen_ms[i] = f.first_seen_ms
        self.last_engagement_ms[i] = f.last_engagement_ms


def fold_batch(table: FeatureTable, rows: npt.NDArray[np.int64], cols: BatchColumns) -> None:
    """Fold a batch into `table` in place; `rows[i]` is the table row of cols.profiles[i]."""
    row = rows[cols.profile_index]
    machine = cols.is_machine_open
    weights = np.where(machine, np.float32(0.0), _WEIGHT_BY_TYPE[cols.type_index])
    np.add.at(table.counts, (row, cols.type_index), 1)
    np.add.at(table.hour_of_week, (row, hour_of_week_utc(cols.occurred_ms)), weights)
    np.add.at(table.machine_opens, row, machine.astype(np.int64))
    first = table.first_seen_ms
    first[rows] = np.where(first[rows] == 0, _NO_FIRST, first[rows])
    np.minimum.at(first, row, cols.occurred_ms)
    np.maximum.at(table.last_engagement_ms, row, np.where(weights > 0, cols.occurred_ms, 0))


def apply_batch(
    current: dict[str, ProfileFeatures], cols: BatchColumns
) -> dict[str, ProfileFeatures]:
    """Fold a batch into the profiles' features; returns the updated features by profile."""
    table = FeatureTable.empty(len(cols.profiles))
    for i, uid in enumerate(cols.profiles):
        f = current.get(uid)
        if f is not None:
            table.set_row(i, f)
    fold_batch(table, np.arange(len(cols.profiles), dtype=np.int64), cols)
    return {uid: table.row(i) for i, uid in enumerate(cols.profiles)}


def restrict(cols: BatchColumns, keep: set[str]) -> BatchColumns:
    """The part of a batch about the profiles in `keep`."""
    kept = [i for i, uid in enumerate(cols.profiles) if uid in keep]
    remap = np.full(len(cols.profiles), -1, np.int64)
    remap[kept] = np.arange(len(kept))
    mask = remap[cols.profile_index] >= 0
    return BatchColumns(
        profile_index=remap[cols.profile_index[mask]],
        profiles=[cols.profiles[i] for i in kept],
        type_index=cols.type_index[mask],
        occurred_ms=cols.occurred_ms[mask],
        is_machine_open=cols.is_machine_open[mask],
    )


def features_from_events(
    event_types: list[str], occurred_ms: list[int], machine: list[bool]
) -> ProfileFeatures:
    """One person's features from their stored events (the rebuild after a cache miss)."""
    cols = BatchColumns(
        profile_index=np.zeros(len(event_types), np.int64),
        profiles=["_"],
        type_index=type_indexes(event_types),
        occurred_ms=np.asarray(occurred_ms, np.int64),
        is_machine_open=np.asarray(machine, np.bool_),
    )
    return apply_batch({}, cols)["_"]


def type_indexes(event_types: list[str]) -> npt.NDArray[np.int64]:
    return np.fromiter((_TYPE_INDEX[t] for t in event_types), np.int64, len(event_types))
