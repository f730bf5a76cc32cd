"""Person-level operations that span ports: features with rebuild on a miss, and a split that
moves the events it must."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sendflowr.identity.identifiers import (
    ANON,
    EMAIL,
    ESP_PREFIX,
    EXT_PREFIX,
    PHONE,
    Identifier,
    sort_by_priority,
)
from sendflowr.identity.store import IdentityGraphStore, SplitResult
from sendflowr.storage.events.base import EventStore, StoredEvent
from sendflowr.storage.features.base import FeatureCache
from sendflowr.timing.activity import ActivityParams
from sendflowr.timing.features import FoldContext, ProfileFeatures, features_from_events, zone_tag

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_UTC = ZoneInfo("UTC")
MAX_HISTORY = 50_000  # events read to rebuild one person's features


def features_for(
    tenant: str,
    universal_id: str,
    events: EventStore,
    cache: FeatureCache,
    identity: IdentityGraphStore,
    zone: ZoneInfo = _UTC,
    now: int | None = None,
    params: ActivityParams | None = None,
) -> ProfileFeatures:
    """From the cache, else rebuilt from every event stored under the person's aliases (and
    cached). `zone`: the tenant's; a cached profile kept in another zone is rebuilt."""
    hit = cache.get_many(tenant, [universal_id]).get(universal_id)
    if hit is not None:
        if hit.zone_tag == zone_tag(zone):
            return hit
        cache.invalidate(tenant, [universal_id])  # kept in another zone: replaced below
    with cache.rebuilding(tenant) as rebuild:  # before the read: see FeatureCache.ingesting
        stored = events.profile_events(
            tenant, identity.aliases(tenant, universal_id), limit=MAX_HISTORY
        )
        at = int(datetime.now(UTC).timestamp()) if now is None else now
        features = features_from_events(
            [e.event_type for e in stored],
            [(e.occurred_at - _EPOCH) // _MS for e in stored],  # exact, unlike float seconds
            [e.is_machine_open for e in stored],
            FoldContext(zone, at, params or ActivityParams()),
        )
        rebuild.put_many({universal_id: features})
    return features


def stored_identifiers(event: StoredEvent) -> list[Identifier]:
    found: list[Identifier] = []
    if event.email_hash:
        found.append(Identifier(EMAIL, event.email_hash))
    if event.esp_profile_id:
        found.append(Identifier(ESP_PREFIX + event.esp, event.esp_profile_id))
    if event.phone:
        found.append(Identifier(PHONE, event.phone))
    for name, value in sorted((event.external_ids or {}).items()):
        found.append(Identifier(EXT_PREFIX + name.lower(), value))
    if event.anonymous_id:
        found.append(Identifier(ANON, event.anonymous_id))
    return sort_by_priority(found)


@dataclass(frozen=True, slots=True)
class SplitOutcome:
    split: SplitResult
    events_moved: int


def split_merge(
    tenant: str,
    merge_id: int,
    operator: str,
    events: EventStore,
    cache: FeatureCache,
    identity: IdentityGraphStore,
) -> SplitOutcome:
    """Undo a merge, then move to the restored person the events stored under the survivor
    since the merge whose identifiers now belong to the restored person."""
    result = identity.split(tenant, merge_id, operator)
    survivor, restored = result.merge.survivor, result.restored
    survivor_root = identity.root(tenant, survivor) or survivor
    moving: list[str] = []
    for event in events.profile_events(tenant, [survivor_root], limit=1_000_000):
        for ident in stored_identifiers(event):
            owner = identity.owner(tenant, ident)
            if owner is not None:
                if (identity.root(tenant, owner) or owner) == restored:
                    moving.append(event.event_id)
                break
    moved = events.reassign_events(tenant, survivor_root, restored, moving)
    cache.invalidate(tenant, [survivor_root, restored])
    return SplitOutcome(result, moved)
