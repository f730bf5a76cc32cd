"""The brand's events, indexed for paging: sorted int64 keys per metric, per profile and overall.

A key is `(timestamp_seconds << 32) | ordinal` (ordinal = position in creation order), so
keys sort by time and then by creation, a time bound is a key bound, and any event is a
position a cursor can name. Finding a page is two binary searches; rendering it is joining
bytes rendered when the event was added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

I64 = NDArray[np.int64]
ORDINAL_BITS: Final = 32
ORDINAL_MASK: Final = (1 << ORDINAL_BITS) - 1
KEY_MIN: Final = 0
KEY_MAX: Final = np.iinfo(np.int64).max


def key_of_time(ts: int) -> int:
    """The smallest key at second `ts` (every event at `ts` sorts at or after it)."""
    return max(ts, 0) << ORDINAL_BITS


@dataclass(frozen=True, slots=True)
class Page:
    ordinals: list[int]  # in the order requested
    first_key: int | None
    last_key: int | None
    has_next: bool
    has_prev: bool


@dataclass(frozen=True, slots=True)
class Selection:
    """Which events: optionally one metric and/or one profile, keys in [lo, hi)."""

    metric: int | None = None  # metric code; -1 = a metric that does not exist
    profile: int | None = None  # profile index; -1 = a profile that does not exist
    lo: int = KEY_MIN
    hi: int = KEY_MAX


class EventStore:
    def __init__(self, n_metrics: int) -> None:
        self.ids: list[str] = []
        self.rendered: list[bytes] = []
        self.by_id: dict[str, int] = {}
        self.ts: I64 = np.zeros(0, dtype=np.int64)
        self.metric: NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self.profile: NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._all: I64 = np.zeros(0, dtype=np.int64)
        self._by_metric: list[I64] = [np.zeros(0, dtype=np.int64) for _ in range(n_metrics)]
        self._by_profile: dict[int, I64] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def extend(
        self,
        ids: Sequence[str],
        ts: Sequence[int],
        metric: Sequence[int],
        profile: Sequence[int],
        rendered: Sequence[bytes],
    ) -> None:
        """Add events (any time order); every index stays sorted."""
        n0, n = len(self.ids), len(ids)
        if not n:
            return
        if n0 + n > ORDINAL_MASK:
            raise OverflowError("the simulated brand holds at most 2**32 events")
        for i, ident in enumerate(ids):
            if ident in self.by_id:
                raise ValueError(f"event id {ident!r} already exists")
            self.by_id[ident] = n0 + i
        self.ids.extend(ids)
        self.rendered.extend(rendered)
        new_ts = np.asarray(ts, dtype=np.int64)
        new_metric = np.asarray(metric, dtype=np.int16)
        new_profile = np.asarray(profile, dtype=np.int32)
        self.ts = np.concatenate([self.ts, new_ts])
        self.metric = np.concatenate([self.metric, new_metric])
        self.profile = np.concatenate([self.profile, new_profile])
        keys = (new_ts << ORDINAL_BITS) | np.arange(n0, n0 + n, dtype=np.int64)
        self._all = _merge(self._all, keys)
        for m in np.unique(new_metric).tolist():
            self._by_metric[m] = _merge(self._by_metric[m], keys[new_metric == m])
        order = np.argsort(new_profile, kind="stable")
        grouped_p, grouped_k = new_profile[order], keys[order]
        starts = np.flatnonzero(np.r_[True, grouped_p[1:] != grouped_p[:-1]])
        for s, e in zip(starts.tolist(), [*starts[1:].tolist(), n], strict=True):
            p = int(grouped_p[s])
            old = self._by_profile.get(p)
            part = grouped_k[s:e]
            self._by_profile[p] = part.copy() if old is None else _merge(old, part)

    def keys(self, sel: Selection) -> I64:
        """The sorted keys the selection covers, within [lo, hi)."""
        if sel.metric == -1 or sel.profile == -1:
            return np.zeros(0, dtype=np.int64)
        if sel.profile is not None:
            base = self._by_profile.get(sel.profile, np.zeros(0, dtype=np.int64))
        elif sel.metric is not None:
            base = self._by_metric[sel.metric]
        else:
            base = self._all
        i0 = int(np.searchsorted(base, sel.lo, "left"))
        i1 = int(np.searchsorted(base, sel.hi, "left"))
        out = base[i0:i1]
        if sel.profile is not None and sel.metric is not None:
            out = out[self.metric[out & ORDINAL_MASK] == sel.metric]
        return out

    def count(self, sel: Selection) -> int:
        return int(self.keys(sel).shape[0])

    def page(
        self,
        sel: Selection,
        size: int,
        descending: bool = False,
        after: int | None = None,
        before: int | None = None,
    ) -> Page:
        """`size` events in the requested order, strictly after `after` or strictly before
        `before` (a key, in that order's sense), or from the start."""
        keys = self.keys(sel)
        n = int(keys.shape[0])
        if descending:
            # Work in ascending positions: "after" in descending order means smaller keys.
            if after is not None:
                end = int(np.searchsorted(keys, after, "left"))
                start = max(0, end - size)
            elif before is not None:
                start = int(np.searchsorted(keys, before, "right"))
                end = min(n, start + size)
            else:
                end = n
                start = max(0, end - size)
            chunk = keys[start:end][::-1]
            has_next, has_prev = start > 0, end < n
        else:
            if after is not None:
                start = int(np.searchsorted(keys, after, "right"))
                end = min(n, start + size)
            elif before is not None:
                end = int(np.searchsorted(keys, before, "left"))
                start = max(0, end - size)
            else:
                start, end = 0, min(n, size)
            chunk = keys[start:end]
            has_next, has_prev = end < n, start > 0
        if not chunk.shape[0]:
            return Page([], None, None, False, has_prev if after is not None else False)
        return Page(
            ordinals=(chunk & ORDINAL_MASK).tolist(),
            first_key=int(chunk[0]),
            last_key=int(chunk[-1]),
            has_next=has_next,
            has_prev=has_prev,
        )


def _merge(old: I64, new: I64) -> I64:
    if not old.shape[0]:
        return np.sort(new, kind="stable")
    if not new.shape[0]:
        return old
    new = np.sort(new, kind="stable")
    if new[0] > old[-1]:
        return np.concatenate([old, new])
    merged = np.concatenate([old, new])
    merged.sort(kind="stable")
    return merged
