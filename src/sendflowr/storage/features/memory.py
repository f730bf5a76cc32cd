"""Embedded feature cache: per tenant, dense numpy rows in this process (vectorised folds)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sendflowr.metrics import observe_feature_lookups
from sendflowr.storage.features.base import FeatureCache, Rebuild
from sendflowr.storage.health import BackendHealth
from sendflowr.timing.features import (
    BatchColumns,
    FeatureTable,
    FoldContext,
    ProfileFeatures,
    fold_batch,
    restrict,
)


@dataclass
class _TenantTable:
    index: dict[str, int] = field(default_factory=dict)
    table: FeatureTable = field(default_factory=lambda: FeatureTable.empty(1024))
    free: list[int] = field(default_factory=list)

    def row_for(self, uid: str) -> int:
        row = self.index.get(uid)
        if row is None:
            row = self.free.pop() if self.free else len(self.index)
            if row >= len(self.table):
                self.table = self.table.grown(max(1024, 2 * len(self.table)))
            self.index[uid] = row
        return row

    def put(self, uid: str, features: ProfileFeatures) -> None:
        row = self.row_for(uid)  # may grow (replace) self.table: take the table after it
        self.table.set_row(row, features)

    def write(
        self, uids: Sequence[str], src: FeatureTable, src_rows: npt.NDArray[np.int64] | slice
    ) -> None:
        """Rows `src_rows` of `src` as the features of `uids` (growing the table once)."""
        if len(self.index) + len(uids) > len(self.table):
            self.table = self.table.grown(len(self.index) + len(uids))
        at = np.fromiter((self.row_for(u) for u in uids), np.int64, len(uids))
        _copy_rows(self.table, at, src, src_rows)

    def drop(self, uid: str) -> None:
        row = self.index.pop(uid, None)
        if row is not None:
            self.table.clear_row(row)
            self.free.append(row)


def _copy_rows(
    dst: FeatureTable,
    at: npt.NDArray[np.int64],
    src: FeatureTable,
    src_rows: npt.NDArray[np.int64] | slice,
) -> None:
    """`dst[at] = src[src_rows]`, every column."""
    dst.activity.copy_rows(at, src.activity, src_rows)
    dst.counts[at] = src.counts[src_rows]
    dst.first_seen_ms[at] = src.first_seen_ms[src_rows]
    dst.zone_tag[at] = src.zone_tag[src_rows]


@dataclass(eq=False)  # each rebuild's own: compared by identity when it ends
class _Watch:
    """A rebuild in progress: the people whose cached features it must not write."""

    touched: set[str]
    void: bool = False  # the tenant was cleared meanwhile: write nothing


class _MemoryRebuild(Rebuild):
    """Writes only the profiles that nothing changed while the rebuild read the store: not one
    a batch was being stored or folded for (in flight when it started, or since), not one
    invalidated meanwhile, not one cached meanwhile (that one is at least as fresh)."""

    def __init__(self, cache: MemoryFeatureCache, tenant: str, watch: _Watch) -> None:
        super().__init__(cache, tenant)
        self._memory, self._watch = cache, watch

    def put_many(self, features: Mapping[str, ProfileFeatures]) -> int:
        with self._memory._lock:
            t, keep = self._kept(features.keys())
            for uid in keep:
                t.put(uid, features[uid])
            return len(keep)

    def put_table(self, universal_ids: Sequence[str], table: FeatureTable) -> int:
        with self._memory._lock:
            t, keep = self._kept(universal_ids)
            if not keep:
                return 0
            src = [i for i, u in enumerate(universal_ids) if u in keep]
            t.write([universal_ids[i] for i in src], table, np.asarray(src, np.int64))
            return len(keep)

    def _kept(self, universal_ids: Iterable[str]) -> tuple[_TenantTable, set[str]]:
        t = self._memory._tenants.setdefault(self.tenant, _TenantTable())
        if self._watch.void:
            return t, set()
        skip = self._watch.touched
        return t, {u for u in universal_ids if u not in skip and u not in t.index}


class MemoryFeatureCache(FeatureCache):
    backend = "memory"
    in_process = True

    def __init__(self) -> None:
        self._tenants: dict[str, _TenantTable] = {}
        self._lock = threading.Lock()
        # per tenant: the people of each batch being stored and folded, and the rebuilds
        # reading the store (see FeatureCache.ingesting / rebuilding)
        self._in_flight: dict[str, dict[int, frozenset[str]]] = {}
        self._watches: dict[str, list[_Watch]] = {}
        self._batch_ids = itertools.count()

    @contextmanager
    def ingesting(self, tenant: str, universal_ids: Iterable[str]) -> Iterator[None]:
        people = frozenset(universal_ids)
        with self._lock:
            batch = next(self._batch_ids)
            self._in_flight.setdefault(tenant, {})[batch] = people
            for watch in self._watches.get(tenant, ()):
                watch.touched |= people
        try:
            yield
        finally:
            with self._lock:
                flying = self._in_flight[tenant]
                del flying[batch]
                if not flying:
                    del self._in_flight[tenant]

    @contextmanager
    def rebuilding(self, tenant: str) -> Iterator[Rebuild]:
        with self._lock:
            watch = _Watch(set().union(*self._in_flight.get(tenant, {}).values()))
            self._watches.setdefault(tenant, []).append(watch)
        try:
            yield _MemoryRebuild(self, tenant, watch)
        finally:
            with self._lock:
                watches = self._watches[tenant]
                watches.remove(watch)
                if not watches:
                    del self._watches[tenant]

    def get_many(self, tenant: str, universal_ids: Iterable[str]) -> dict[str, ProfileFeatures]:
        with self._lock:
            t = self._tenants.get(tenant)
            ids = list(universal_ids)
            found = {} if t is None else {u: t.table.row(t.index[u]) for u in ids if u in t.index}
        observe_feature_lookups(self.backend, len(found), len(set(ids)) - len(found))
        return found

    def get_table(
        self, tenant: str, universal_ids: Sequence[str]
    ) -> tuple[npt.NDArray[np.bool_], FeatureTable]:
        """Gathered from the tenant's arrays in a few copies (no object per person)."""
        n = len(universal_ids)
        out = FeatureTable.empty(n)
        with self._lock:
            t = self._tenants.get(tenant)
            if t is None:
                present = np.zeros(n, np.bool_)
            else:
                get = t.index.get
                rows = np.fromiter((get(u, -1) for u in universal_ids), np.int64, n)
                present = rows >= 0
                at = np.flatnonzero(present)
                _copy_rows(out, at, t.table, rows[at])
        hits = 0 if t is None else len(np.unique(rows[present]))
        observe_feature_lookups(self.backend, hits, len(set(universal_ids)) - hits)
        return present, out

    def put_many(self, tenant: str, features: Mapping[str, ProfileFeatures]) -> None:
        with self._lock:
            t = self._tenants.setdefault(tenant, _TenantTable())
            for uid, f in features.items():
                t.put(uid, f)

    def put_table(self, tenant: str, universal_ids: Sequence[str], table: FeatureTable) -> None:
        """Whole arrays at once: a million profiles is a few copies, not a million rows."""
        with self._lock:
            t = self._tenants.setdefault(tenant, _TenantTable())
            t.write(universal_ids, table, slice(0, len(universal_ids)))

    def fold(self, tenant: str, cols: BatchColumns, ctx: FoldContext) -> int:
        """In place, vectorised; only profiles already cached (see FeatureCache.fold)."""
        with self._lock:
            t = self._tenants.get(tenant)
            if t is None:
                return 0
            index = t.index
            if not all(uid in index for uid in cols.profiles):
                cols = restrict(cols, set(index).intersection(cols.profiles))
            if not cols.profiles:
                return 0
            rows = np.fromiter((index[u] for u in cols.profiles), np.int64, len(cols.profiles))
            ok = fold_batch(t.table, rows, cols, ctx)
            for i in np.flatnonzero(~ok).tolist():
                t.drop(cols.profiles[i])
            return int(ok.sum())

    def invalidate(self, tenant: str, universal_ids: Iterable[str]) -> None:
        with self._lock:
            ids = list(universal_ids)
            for watch in self._watches.get(tenant, ()):
                watch.touched.update(ids)
            t = self._tenants.get(tenant)
            if t is None:
                return
            for uid in ids:
                t.drop(uid)

    def clear_tenant(self, tenant: str) -> None:
        with self._lock:
            self._tenants.pop(tenant, None)
            for watch in self._watches.get(tenant, ()):
                watch.void = True

    def health(self) -> BackendHealth:
        with self._lock:
            size = sum(len(t.index) for t in self._tenants.values())
        return BackendHealth("feature_cache", self.backend, "ok", info={"profiles": size})
