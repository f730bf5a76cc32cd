"""Opening every port from settings, in one place, for the API, the CLI and the tests."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sendflowr.archive.store import RawArchive, open_archive
from sendflowr.bus import Bus, open_bus
from sendflowr.decisions import TimingService
from sendflowr.identity.identifiers import (
    DEFAULT_BLOCKED_PATTERNS,
    DEFAULT_BLOCKED_VALUES,
    Blocklist,
)
from sendflowr.identity.rules import DEFAULT_LIMITS, Limits
from sendflowr.identity.store import IdentityGraphStore
from sendflowr.intake import Intake
from sendflowr.pipeline import Pipeline
from sendflowr.secrets import SecretBox, load_secret_box
from sendflowr.settings import Settings
from sendflowr.storage.events import EventStore, open_event_store
from sendflowr.storage.features import FeatureCache, open_feature_cache
from sendflowr.storage.features.rebuild import WarmResult, warm_tenant
from sendflowr.storage.health import BackendHealth
from sendflowr.storage.metadata import MetadataStore, open_metadata_store
from sendflowr.storage.metadata.accounts import AccountStore
from sendflowr.storage.metadata.backfill import BackfillStore
from sendflowr.storage.metadata.catalog import CatalogStore
from sendflowr.storage.metadata.intents import IntentStore
from sendflowr.storage.metadata.triggers import TriggerStore

if TYPE_CHECKING:
    from sendflowr.scheduling.hotpath import HotPathWatcher

log = logging.getLogger(__name__)


def load_hash_key(settings: Settings) -> bytes:
    """The key for hashing identifiers: from settings, else generated once under data_dir.

    It must never change for a deployment (every hashed email depends on it), so the generated
    key is written with owner-only permissions and reused.
    """
    if settings.hash_key is not None:
        return settings.hash_key.get_secret_value().encode()
    path = Path(settings.data_dir) / "hash.key"
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def identity_limits(settings: Settings) -> Limits:
    families = dict(DEFAULT_LIMITS)
    kinds: dict[str, int] = {}
    for kind, limit in settings.identity_limits.items():
        (kinds if ":" in kind else families)[kind] = limit
    return Limits(per_family=families, per_kind=kinds)


def identity_blocklist(settings: Settings) -> Blocklist:
    return Blocklist(
        values=DEFAULT_BLOCKED_VALUES
        | {v.strip().lower() for v in settings.identity_blocked_values},
        patterns=DEFAULT_BLOCKED_PATTERNS + tuple(settings.identity_blocked_patterns),
    )


@dataclass
class Runtime:
    settings: Settings
    events: EventStore
    metadata: MetadataStore
    features: FeatureCache
    identity: IdentityGraphStore
    pipeline: Pipeline
    bus: Bus
    hash_key: bytes
    timing: TimingService
    box: SecretBox
    accounts: AccountStore
    backfills: BackfillStore
    catalog: CatalogStore
    intents: IntentStore
    triggers: TriggerStore
    hot_paths: HotPathWatcher | None = None
    archive: RawArchive | None = None  # the raw archive (issue 7); None when switched off
    intake: Intake = field(init=False)  # archive + bus for accepted batches, group-committed

    @classmethod
    def open(
        cls, settings: Settings, *, migrate: bool = True, create_secret_key: bool = False
    ) -> Runtime:
        """Open every port. `create_secret_key`: generate a development encryption key under
        data_dir when none is configured (only `sendflowr run`'s embedded demo does this)."""
        hash_key = load_hash_key(settings)
        raw_key = settings.secret_key.get_secret_value() if settings.secret_key else None
        box = load_secret_box(raw_key, Path(settings.data_dir), create=create_secret_key)
        metadata = open_metadata_store(settings.metadata)
        events = open_event_store(settings.event_store)
        try:
            if migrate:
                metadata.migrate()
                events.migrate()
                events.set_explanation_retention(settings.explanation_retention_days)
            features = open_feature_cache(settings.feature_cache, settings)
            identity = IdentityGraphStore(
                metadata, hash_key, identity_limits(settings), identity_blocklist(settings)
            )
            pipeline = Pipeline(
                events,
                features,
                identity,
                metadata,
                max_future_skew=timedelta(seconds=settings.max_future_skew_seconds),
            )
            bus = open_bus(settings.bus, pipeline, settings)
            timing = TimingService(events, identity, features=features)
        except BaseException:
            events.close()
            metadata.close()
            raise
        runtime = cls(
            settings,
            events,
            metadata,
            features,
            identity,
            pipeline,
            bus,
            hash_key,
            timing,
            box,
            AccountStore(metadata, box),
            BackfillStore(metadata),
            CatalogStore(metadata),
            IntentStore(metadata),
            TriggerStore(metadata),
        )
        from sendflowr.scheduling.hotpath import HotPathWatcher

        runtime.hot_paths = HotPathWatcher(runtime)
        runtime.archive = open_archive(settings.raw_archive_url, Path(settings.data_dir), metadata)
        pipeline.listeners.append(runtime.hot_paths)
        runtime.intake = Intake(runtime)
        return runtime

    def warm_features(self) -> list[WarmResult]:
        """Fill an in-process feature cache from the event store, tenant by tenant (one columnar
        query each; see storage.features.rebuild.warm_tenant). Safe while the service runs."""
        if not self.features.in_process:
            return []
        done = []
        for tenant in self.metadata.list_tenants():
            result = warm_tenant(
                self.events,
                self.features,
                self.identity,
                tenant.id,
                ZoneInfo(tenant.timezone),
                params=self.timing.params.activity,
            )
            log.info(
                "feature cache warmed for tenant %s: %d of %d people from %d events in %.1f s",
                tenant.id,
                result.cached,
                result.profiles,
                result.events,
                result.seconds,
            )
            done.append(result)
        return done

    def health(self) -> list[BackendHealth]:
        return [
            self.events.health(),
            self.metadata.health(),
            self.bus.health(),
            self.features.health(),
        ]

    def close(self) -> None:
        self.bus.close()
        self.features.close()
        self.events.close()
        self.metadata.close()
