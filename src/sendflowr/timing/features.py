"""Per-person timing features, as kept in the feature cache (pure numpy, no I/O).

One profile is what the timing engine reads for a person: their `ActivityProfile` (recency-
decayed 15-minute bins of the LOCAL week in the tenant's zone, decayed evidence and active days,
last engagement, machine opens excluded) plus the evidence counts the explanation reports
(events by type, first seen) and a tag of the zone the local time is in (a profile built in
another zone is stale and is rebuilt, never misread).

Serialised: a 16-byte header, 9 uint32 counts and the activity profile (1,936 bytes today):
1,988 bytes, under the 2 KB budget (a test holds it there). `FeatureTable` holds many profiles
as dense rows: the bulk rebuild and the in-memory cache fold batches into it in place, through
the same `ActivityTable.observe` the engine's own rebuilds use (deliveries included, for the
send-time-bias correction).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from sendflowr.timing.activity import (
    NEVER,
    ActivityParams,
    ActivityProfile,
    ActivityTable,
)
from sendflowr.timing.activity import (
    SERIALISED_BYTES as ACTIVITY_BYTES,
)

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
_RECEIVED: Final = _TYPE_INDEX["received"]
_WEIGHT_BY_TYPE: Final = np.array([ENGAGEMENT_WEIGHTS.get(t, 0.0) for t in COUNTED_TYPES])
_ENGAGEMENT_COLUMNS: Final = np.array([t in ENGAGEMENT_WEIGHTS for t in COUNTED_TYPES])
_HEADER: Final = struct.Struct("<BxxxIq")  # version, zone tag, first_seen_ms
_FORMAT_VERSION: Final = 2
SERIALISED_BYTES: Final = _HEADER.size + 4 * len(COUNTED_TYPES) + ACTIVITY_BYTES  # 1,988
_NO_FIRST: Final = np.iinfo(np.int64).max
_DAY_S: Final = 86_400
_PROBE_S: Final = 900  # UTC offsets, and their changes, fall on quarter hours


def zone_tag(zone: ZoneInfo) -> int:
    """A 32-bit fingerprint of the zone a profile's local time is in."""
    return zlib.crc32(zone.key.encode())


def utc_offset_at(utc_s: int, zone: ZoneInfo) -> int:
    """`zone`'s UTC offset in seconds at the instant `utc_s`."""
    delta = datetime.fromtimestamp(utc_s, UTC).astimezone(zone).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def utc_offsets(utc_s: npt.NDArray[np.int64], zone: ZoneInfo) -> npt.NDArray[np.int64]:
    """The zone's UTC offset (seconds) at each instant, vectorised: the offset at each UTC day
    start, and per quarter hour only on the days the offset changes (DST), so 10 million events
    over a year cost a few hundred zone look-ups."""
    n = len(utc_s)
    if n == 0:
        return np.zeros(0, np.int64)
    day = utc_s // _DAY_S
    first, last = int(day.min()), int(day.max())
    if last - first > 200_000:  # centuries apart: bad data, but answer it exactly
        probes, back = np.unique(utc_s // _PROBE_S, return_inverse=True)
        offs = np.fromiter((utc_offset_at(int(p) * _PROBE_S, zone) for p in probes), np.int64)
        out: npt.NDArray[np.int64] = offs[back.ravel()]
        return out
    starts = np.fromiter(
        (utc_offset_at((first + i) * _DAY_S, zone) for i in range(last - first + 2)), np.int64
    )
    rel = day - first
    out = starts[rel]
    changes = np.flatnonzero(starts[1:] != starts[:-1])
    if len(changes):
        moving = np.zeros(len(starts), np.bool_)
        moving[changes] = True
        at = np.flatnonzero(moving[rel])
        probes, back = np.unique(utc_s[at] // _PROBE_S, return_inverse=True)
        offs = np.fromiter((utc_offset_at(int(p) * _PROBE_S, zone) for p in probes), np.int64)
        out[at] = offs[back.ravel()]
    return out


@dataclass(slots=True)
class ProfileFeatures:
    activity: ActivityProfile = field(default_factory=ActivityProfile.empty)
    counts: npt.NDArray[np.uint32] = field(
        default_factory=lambda: np.zeros(len(COUNTED_TYPES), np.uint32)
    )
    first_seen_ms: int = 0  # 0: nothing seen yet
    zone_tag: int = 0  # zone_tag() of the zone `activity` is in

    def count(self, event_type: str) -> int:
        return int(self.counts[_TYPE_INDEX[event_type]])

    @property
    def machine_opens_excluded(self) -> int:
        return self.activity.machine_opens

    @property
    def engagements(self) -> int:
        """Engagement events (opens, clicks, orders, site visits, views), machine opens not
        counted."""
        total = int(self.counts[_ENGAGEMENT_COLUMNS].sum())
        return max(total - self.activity.machine_opens, 0)

    @property
    def last_engagement_ms(self) -> int:
        """UTC ms (whole seconds) of the latest engagement; 0 if none."""
        last = self.activity.last_engagement
        return 0 if last == NEVER else last * 1000

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(_FORMAT_VERSION, self.zone_tag, self.first_seen_ms)
        return header + self.counts.astype("<u4").tobytes() + self.activity.to_bytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ProfileFeatures:
        if len(raw) < 1 or raw[0] != _FORMAT_VERSION:
            version = raw[0] if raw else None
            raise ValueError(f"feature format version {version} is not {_FORMAT_VERSION}")
        if len(raw) != SERIALISED_BYTES:
            raise ValueError(f"features are {len(raw)} bytes, not {SERIALISED_BYTES}")
        _, tag, first = _HEADER.unpack_from(raw)
        off = _HEADER.size
        counts = np.frombuffer(raw, "<u4", len(COUNTED_TYPES), off).astype(np.uint32)
        activity = ActivityProfile.from_bytes(raw[off + 4 * len(COUNTED_TYPES) :])
        return cls(activity, counts, first, tag)


@dataclass(frozen=True, slots=True)
class BatchColumns:
    """The columns of a batch the feature update needs (numpy, aligned by event)."""

    profile_index: npt.NDArray[np.int64]  # index into `profiles`
    profiles: list[str]
    type_index: npt.NDArray[np.int64]  # index into COUNTED_TYPES
    occurred_ms: npt.NDArray[np.int64]
    is_machine_open: npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class FoldContext:
    """What folding needs besides the events: the tenant's zone (local time), the instant the
    decayed values are aged to (at least the latest event), and the activity parameters."""

    zone: ZoneInfo
    now: int  # utc s
    params: ActivityParams = field(default_factory=ActivityParams)


def _grown_activity(t: ActivityTable, rows: int) -> ActivityTable:
    bigger = ActivityTable.empty(rows)
    bigger.copy_rows(slice(0, len(t)), t, slice(0, len(t)))
    return bigger


@dataclass(slots=True)
class FeatureTable:
    """Features of many profiles as dense arrays, one row a profile (vectorised updates)."""

    activity: ActivityTable
    counts: npt.NDArray[np.uint32]  # (rows, types)
    first_seen_ms: npt.NDArray[np.int64]  # 0: nothing seen yet
    zone_tag: npt.NDArray[np.uint32]

    @classmethod
    def empty(cls, rows: int, tag: int = 0) -> FeatureTable:
        return cls(
            ActivityTable.empty(rows),
            np.zeros((rows, len(COUNTED_TYPES)), np.uint32),
            np.zeros(rows, np.int64),
            np.full(rows, tag, np.uint32),
        )

    def __len__(self) -> int:
        return len(self.first_seen_ms)

    def grown(self, rows: int) -> FeatureTable:
        """A copy with at least `rows` rows (new rows empty)."""
        if rows <= len(self):
            return self
        bigger = FeatureTable.empty(rows)
        n = len(self)
        bigger.activity = _grown_activity(self.activity, rows)
        bigger.counts[:n] = self.counts
        bigger.first_seen_ms[:n] = self.first_seen_ms
        bigger.zone_tag[:n] = self.zone_tag
        return bigger

    def row(self, i: int) -> ProfileFeatures:
        return ProfileFeatures(
            self.activity.row(i),
            self.counts[i].copy(),
            int(self.first_seen_ms[i]),
            int(self.zone_tag[i]),
        )

    def set_row(self, i: int, f: ProfileFeatures) -> None:
        self.activity.set_row(i, f.activity)
        self.counts[i] = f.counts
        self.first_seen_ms[i] = f.first_seen_ms
        self.zone_tag[i] = f.zone_tag

    def clear_row(self, i: int) -> None:
        self.set_row(i, ProfileFeatures())


def fold_batch(
    table: FeatureTable, rows: npt.NDArray[np.int64], cols: BatchColumns, ctx: FoldContext
) -> npt.NDArray[np.bool_]:
    """Fold a batch into `table` in place; `rows[i]` is the table row of cols.profiles[i].

    Returns, per profile, whether it was folded. A profile is left alone (False) when its row
    is in another zone, or when the batch holds an engagement older than the row's last one:
    the recency, burst and exposure weights depend on event order, so such a profile must be rebuilt
    from the store (the caller drops it), never patched out of order."""
    if len(cols.profiles) == 0:
        return np.zeros(0, np.bool_)
    row = rows[cols.profile_index]
    utc_s = cols.occurred_ms // 1000
    weights = _WEIGHT_BY_TYPE[cols.type_index]
    machine = cols.is_machine_open
    # deliveries feed the send-time-bias correction's exposure (and the latency histogram);
    # with the correction off they are only counted
    delivery = (cols.type_index == _RECEIVED) & ctx.params.correct_send_time
    engaged = (weights > 0) | machine | delivery  # what `observe` takes
    ok: npt.NDArray[np.bool_] = table.zone_tag[rows] == np.uint32(zone_tag(ctx.zone))
    a = table.activity
    latest = np.maximum(np.maximum(a.last_engagement, a.pending_since), a.exposure_end)[row]
    late = ((weights > 0) & ~machine | delivery) & (utc_s < latest)
    ok &= np.bincount(cols.profile_index[late], minlength=len(cols.profiles)) == 0
    keep = ok[cols.profile_index]
    if not keep.all():
        row, utc_s, weights, machine, engaged, delivery = (
            row[keep],
            utc_s[keep],
            weights[keep],
            machine[keep],
            engaged[keep],
            delivery[keep],
        )
        type_index, occurred_ms = cols.type_index[keep], cols.occurred_ms[keep]
    else:
        type_index, occurred_ms = cols.type_index, cols.occurred_ms
    if len(row) == 0:
        return ok
    np.add.at(table.counts, (row, type_index), 1)
    first = table.first_seen_ms
    touched = rows[ok]
    first[touched] = np.where(first[touched] == 0, _NO_FIRST, first[touched])
    np.minimum.at(first, row, occurred_ms)
    e = np.flatnonzero(engaged)
    if len(e):
        t = utc_s[e]
        table.activity.observe(
            row[e],
            t,
            utc_offsets(t, ctx.zone),
            np.where(machine[e], 0.0, weights[e]),
            ctx.now,
            ctx.params,
            machine=machine[e],
            delivery=delivery[e],  # deliveries: the send-time-bias correction's exposure
        )
    return ok


def apply_batch(
    current: dict[str, ProfileFeatures], cols: BatchColumns, ctx: FoldContext
) -> tuple[dict[str, ProfileFeatures], list[str]]:
    """Fold a batch into the profiles' features (missing ones start empty, in ctx's zone).
    Returns the updated features by profile and the profiles that must be rebuilt instead
    (see fold_batch)."""
    tag = zone_tag(ctx.zone)
    table = FeatureTable.empty(len(cols.profiles), tag)
    for i, uid in enumerate(cols.profiles):
        f = current.get(uid)
        if f is not None:
            table.set_row(i, f)
    ok = fold_batch(table, np.arange(len(cols.profiles), dtype=np.int64), cols, ctx)
    updated = {uid: table.row(i) for i, uid in enumerate(cols.profiles) if ok[i]}
    return updated, [uid for i, uid in enumerate(cols.profiles) if not ok[i]]


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
    event_types: list[str],
    occurred_ms: list[int],
    machine: list[bool],
    ctx: FoldContext,
) -> ProfileFeatures:
    """One person's features from their stored events (the rebuild after a cache miss)."""
    order = np.argsort(np.asarray(occurred_ms, np.int64), kind="stable")
    cols = BatchColumns(
        profile_index=np.zeros(len(event_types), np.int64),
        profiles=["_"],
        type_index=type_indexes(event_types)[order],
        occurred_ms=np.asarray(occurred_ms, np.int64)[order],
        is_machine_open=np.asarray(machine, np.bool_)[order],
    )
    updated, _ = apply_batch({}, cols, ctx)  # an empty row has no engagement to be late for
    return updated["_"]


def type_indexes(event_types: list[str]) -> npt.NDArray[np.int64]:
    return np.fromiter((_TYPE_INDEX[t] for t in event_types), np.int64, len(event_types))


def type_codes(names: list[str]) -> npt.NDArray[np.int64]:
    """COUNTED_TYPES index of each name, -1 for a type features do not count."""
    return np.fromiter((_TYPE_INDEX.get(t, -1) for t in names), np.int64, len(names))
