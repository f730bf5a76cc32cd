"""Embedded feature cache: per tenant, dense numpy rows in this process (vectorised folds)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sendflowr.metrics import observe_feature_lookups
from sendflowr.storage.features.base import FeatureCache
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

    def drop(self, uid: str) -> None:
        row = self.index.pop(uid, None)
        if row is not None:
            self.table.clear_row(row)
            self.free.append(row)


class MemoryFeatureCache(FeatureCache):
    backend = "memory"

    def __init__(self) -> None:
        self._tenants: dict[str, _TenantTable] = {}
        self._lock = threading.Lock()

    def get_many(self, tenant: str, universal_ids: Iterable[str]) -> dict[str, ProfileFeatures]:
        with self._lock:
            t = self._tenants.get(tenant)
            ids = list(universal_ids)
            found = {} if t is None else {u: t.table.row(t.index[u]) for u in ids if u in t.index}
        observe_feature_lookups(self.backend, len(found), len(set(ids)) - len(found))
        return found

    def put_many(self, tenant: str, features: Mapping[str, ProfileFeatures]) -> None:
        with self._lock:
            t = self._tenants.setdefault(tenant, _TenantTable())
            for uid, f in features.items():
                row = t.row_for(uid)  # may grow (replace) t.table: take the table after it
                t.table.set_row(row, f)

    def put_table(self, tenant: str, universal_ids: Sequence[str], table: FeatureTable) -> None:
        """Whole arrays at once: a million profiles is a few copies, not a million rows."""
        with self._lock:
            t = self._tenants.setdefault(tenant, _TenantTable())
            if len(t.index) + len(universal_ids) > len(t.table):
                t.table = t.table.grown(len(t.index) + len(universal_ids))
            at = np.fromiter((t.row_for(u) for u in universal_ids), np.int64, len(universal_ids))
            dst, src = t.table, table
            dst.activity.copy_rows(at, src.activity, slice(0, len(at)))
            dst.counts[at] = src.counts[: len(at)]
            dst.first_seen_ms[at] = src.first_seen_ms[: len(at)]
            dst.zone_tag[at] = src.zone_tag[: len(at)]

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
            t = self._tenants.get(tenant)
            if t is None:
                return
            for uid in universal_ids:
                t.drop(uid)

    def clear_tenant(self, tenant: str) -> None:
        with self._lock:
            self._tenants.pop(tenant, None)

    def health(self) -> BackendHealth:
        with self._lock:
            size = sum(len(t.index) for t in self._tenants.values())
        return BackendHealth("feature_cache", self.backend, "ok", info={"profiles": size})
