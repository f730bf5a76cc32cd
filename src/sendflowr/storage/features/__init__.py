"""The feature-cache port: per-person features, always rebuildable from the event store."""

from sendflowr.storage.features.base import FeatureCache
from sendflowr.storage.features.factory import open_feature_cache

__all__ = ["FeatureCache", "open_feature_cache"]
