"""Embedded feature cache: a dict per tenant in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from sendflowr.storage.features.base import FeatureCache
from sendflowr.storage.health import BackendHealth
from sendflowr.timing.features import ProfileFeatures


class MemoryFeatureCache(FeatureCache):
    backend = "memory"

    def __init__(self) -> None:
        self._data: dict[str, dict[str, ProfileFeatures]] = {}
        self._lock = threading.Lock()

    def get_many(self, tenant: str, universal_ids: Iterable[str]) -> dict[str, ProfileFeatures]:
        with self._lock:
            table = self._data.get(tenant, {})
            return {u: table[u] for u in universal_ids if u in table}

    def put_many(self, tenant: str, features: Mapping[str, ProfileFeatures]) -> None:
        with self._lock:
            self._data.setdefault(tenant, {}).update(features)

    def invalidate(self, tenant: str, universal_ids: Iterable[str]) -> None:
        with self._lock:
            table = self._data.get(tenant, {})
            for u in universal_ids:
                table.pop(u, None)

    def clear_tenant(self, tenant: str) -> None:
        with self._lock:
            self._data.pop(tenant, None)

    def health(self) -> BackendHealth:
        with self._lock:
            size = sum(len(t) for t in self._data.values())
        return BackendHealth("feature_cache", self.backend, "ok", info={"profiles": size})
