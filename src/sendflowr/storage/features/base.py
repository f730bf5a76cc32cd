"""The feature-cache interface."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping

from sendflowr.storage.health import BackendHealth
from sendflowr.timing.features import BatchColumns, ProfileFeatures, apply_batch, restrict


class FeatureCache(abc.ABC):
    backend: str = "?"

    @abc.abstractmethod
    def get_many(self, tenant: str, universal_ids: Iterable[str]) -> dict[str, ProfileFeatures]:
        """Features of those ids that are cached (missing ids are simply absent)."""

    @abc.abstractmethod
    def put_many(self, tenant: str, features: Mapping[str, ProfileFeatures]) -> None: ...

    def fold(self, tenant: str, cols: BatchColumns) -> int:
        """Fold a batch of events into the features already cached; returns how many profiles
        were updated. A profile not cached stays absent: it is rebuilt from the event store
        (where this batch already is) when it is next read, so it is never partial.

        Read-modify-write through get_many/put_many; a backend may do it in place."""
        present = self.get_many(tenant, cols.profiles)
        if not present:
            return 0
        updated = apply_batch(present, restrict(cols, set(present)))
        self.put_many(tenant, updated)
        return len(updated)

    @abc.abstractmethod
    def invalidate(self, tenant: str, universal_ids: Iterable[str]) -> None: ...

    @abc.abstractmethod
    def clear_tenant(self, tenant: str) -> None: ...

    @abc.abstractmethod
    def health(self) -> BackendHealth: ...

    def close(self) -> None:
        return None
