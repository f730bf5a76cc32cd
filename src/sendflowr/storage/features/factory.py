"""Choose the feature-cache backend from its URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sendflowr.settings import CacheURL
from sendflowr.storage.features.base import FeatureCache

if TYPE_CHECKING:
    from sendflowr.settings import Settings


def open_feature_cache(url: CacheURL, settings: Settings | None = None) -> FeatureCache:
    """`settings`: the Redis options (prefix, TTL, timeouts); their defaults when None."""
    match url.kind:
        case "memory":
            from sendflowr.storage.features.memory import MemoryFeatureCache

            return MemoryFeatureCache()
        case "redis":
            from sendflowr.storage.features.redis import RedisFeatureCache

            if settings is None:
                return RedisFeatureCache(url.url)
            return RedisFeatureCache(
                url.url,
                prefix=settings.feature_cache_prefix,
                ttl_seconds=settings.feature_cache_ttl_seconds,
                socket_timeout=settings.feature_cache_socket_timeout_seconds,
                connect_timeout=settings.feature_cache_connect_timeout_seconds,
                retry_seconds=settings.feature_cache_retry_seconds,
            )
