"""The feature-cache interface."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping

from sendflowr.storage.health import BackendHealth
from sendflowr.timing.features import ProfileFeatures


class FeatureCache(abc.ABC):
    backend: str = "?"

    @abc.abstractmethod
    def get_many(self, tenant: str, universal_ids: Iterable[str]) -> dict[str, ProfileFeatures]:
        """Features of those ids that are cached (missing ids are simply absent)."""

    @abc.abstractmethod
    def put_many(self, tenant: str, features: Mapping[str, ProfileFeatures]) -> None: ...

    @abc.abstractmethod
    def invalidate(self, tenant: str, universal_ids: Iterable[str]) -> None: ...

    @abc.abstractmethod
    def clear_tenant(self, tenant: str) -> None: ...

    @abc.abstractmethod
    def health(self) -> BackendHealth: ...

    def close(self) -> None:
        return None
