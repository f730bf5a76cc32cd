"""Choose the feature-cache backend from its URL."""

from __future__ import annotations

from sendflowr.settings import CacheURL
from sendflowr.storage.features.base import FeatureCache


class BackendNotAvailableError(RuntimeError):
    pass


def open_feature_cache(url: CacheURL) -> FeatureCache:
    match url.kind:
        case "memory":
            from sendflowr.storage.features.memory import MemoryFeatureCache

            return MemoryFeatureCache()
        case "redis":
            raise BackendNotAvailableError(
                "SENDFLOWR_FEATURE_CACHE_URL: the redis backend is not implemented yet "
                "(use 'memory')"
            )
