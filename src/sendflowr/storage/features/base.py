"""The feature-cache interface: per person, the timing features (`ProfileFeatures`, at most
2 KB serialised), always rebuildable from the event store.

Backend-neutral: a backend stores one opaque value per (tenant, universal id) -
`ProfileFeatures.to_bytes()` - and may keep it in any form that round-trips through it.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from sendflowr.storage.health import BackendHealth
from sendflowr.timing.features import (
    BatchColumns,
    FeatureTable,
    FoldContext,
    ProfileFeatures,
    apply_batch,
    restrict,
)


class Rebuild:
    """Writes the features a caller rebuilt from the event store (see FeatureCache.rebuilding).
    This default writes them as they are: right when nothing else folds into this cache at the
    same time in this process (a backend that can tell does better, see MemoryFeatureCache)."""

    def __init__(self, cache: FeatureCache, tenant: str) -> None:
        self.cache, self.tenant = cache, tenant

    def put_many(self, features: Mapping[str, ProfileFeatures]) -> int:
        """Cache these rebuilt profiles; returns how many were written."""
        self.cache.put_many(self.tenant, features)
        return len(features)

    def put_table(self, universal_ids: Sequence[str], table: FeatureTable) -> int:
        self.cache.put_table(self.tenant, universal_ids, table)
        return len(universal_ids)


class FeatureCache(abc.ABC):
    backend: str = "?"
    # True when the cache lives in this process, so warming it at start-up pays (a shared cache
    # such as Redis keeps its entries across restarts and is folded by other processes)
    in_process: bool = False

    @abc.abstractmethod
    def get_many(self, tenant: str, universal_ids: Iterable[str]) -> dict[str, ProfileFeatures]:
        """Features of those ids that are cached (missing ids are simply absent)."""

    def get_table(
        self, tenant: str, universal_ids: Sequence[str]
    ) -> tuple[npt.NDArray[np.bool_], FeatureTable]:
        """The features of many people as one table (row i: universal_ids[i]) and which rows
        were cached; a row not cached is empty. What batch decisions read."""
        found = self.get_many(tenant, universal_ids)
        table = FeatureTable.empty(len(universal_ids))
        present = np.zeros(len(universal_ids), np.bool_)
        for i, uid in enumerate(universal_ids):
            f = found.get(uid)
            if f is not None:
                table.set_row(i, f)
                present[i] = True
        return present, table

    @abc.abstractmethod
    def put_many(self, tenant: str, features: Mapping[str, ProfileFeatures]) -> None: ...

    def put_table(self, tenant: str, universal_ids: Sequence[str], table: FeatureTable) -> None:
        """Write many profiles at once (the bulk rebuild); row i is universal_ids[i]."""
        self.put_many(tenant, {u: table.row(i) for i, u in enumerate(universal_ids)})

    def fold(self, tenant: str, cols: BatchColumns, ctx: FoldContext) -> int:
        """Fold a batch of events into the features already cached; returns how many profiles
        were updated. A profile not cached stays absent: it is rebuilt from the event store
        (where this batch already is) when it is next read, so it is never partial. So is a
        profile the batch cannot be folded into exactly (an engagement older than its last
        one, or another zone): it is dropped.

        Read-modify-write through get_many/put_many; a backend may do it in place."""
        present = self.get_many(tenant, cols.profiles)
        if not present:
            return 0
        updated, dropped = apply_batch(present, restrict(cols, set(present)), ctx)
        self.put_many(tenant, updated)
        if dropped:
            self.invalidate(tenant, dropped)
        return len(updated)

    @contextmanager
    def ingesting(self, tenant: str, universal_ids: Iterable[str]) -> Iterator[None]:
        """Wraps a batch's event-store write and its fold (the pipeline). A rebuild that reads
        the store meanwhile could see the batch's events and then have the fold count them a
        second time, or miss them: a backend that tracks this keeps such a rebuild's profiles
        of these people out of the cache (they are rebuilt on their next read)."""
        yield

    @contextmanager
    def rebuilding(self, tenant: str) -> Iterator[Rebuild]:
        """Around a read of the event store whose features are then cached: start it before the
        read, write through the yielded Rebuild after it."""
        yield Rebuild(self, tenant)

    @abc.abstractmethod
    def invalidate(self, tenant: str, universal_ids: Iterable[str]) -> None: ...

    @abc.abstractmethod
    def clear_tenant(self, tenant: str) -> None: ...

    @abc.abstractmethod
    def health(self) -> BackendHealth: ...

    def degraded(self) -> bool:
        """True while the cache is unavailable: reads are misses and writes are skipped, so a
        caller rebuilds from the event store (correct, only slower) and may say so."""
        return False

    def close(self) -> None:
        return None
