"""Bulk rebuild of a tenant's feature cache from the event store: one columnar query per tenant
(`EventStore.engagement_arrays`), folded with the same vectorised update the pipeline uses, and
written to the cache in one `put_table`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np

from sendflowr.identity.store import IdentityGraphStore
from sendflowr.storage.events.base import EngagementArrays, EventStore
from sendflowr.storage.features.base import FeatureCache
from sendflowr.timing.activity import ActivityParams
from sendflowr.timing.features import (
    BatchColumns,
    FeatureTable,
    FoldContext,
    fold_batch,
    type_codes,
    zone_tag,
)


@dataclass(frozen=True, slots=True)
class RebuildResult:
    tenant: str
    events: int
    profiles: int
    read_s: float  # the query, to numpy
    fold_s: float  # aliases, offsets, observe
    write_s: float  # into the cache


def resolve_aliases(aliases: dict[str, str], uid: str) -> str:
    """The surviving id of a (possibly repeatedly) merged person."""
    seen = 0
    while uid in aliases and seen < 64:
        uid, seen = aliases[uid], seen + 1
    return uid


def fold_arrays(
    arrays: EngagementArrays, aliases: dict[str, str], ctx: FoldContext
) -> tuple[list[str], FeatureTable]:
    """Every person's features from a tenant's event columns (events of merged-away ids count
    for the person they were merged into). Pure: no I/O."""
    position: dict[str, int] = {}
    root_code = np.fromiter(
        (
            position.setdefault(resolve_aliases(aliases, u), len(position))
            for u in arrays.universal_ids
        ),
        np.int64,
        len(arrays.universal_ids),
    )
    profiles = list(position)
    type_index = type_codes(arrays.event_types)[arrays.type_code]
    counted = type_index >= 0
    cols = BatchColumns(
        profile_index=root_code[arrays.uid_code[counted]] if len(root_code) else root_code,
        profiles=profiles,
        type_index=type_index[counted],
        occurred_ms=arrays.utc_ms[counted],
        is_machine_open=arrays.is_machine_open[counted],
    )
    table = FeatureTable.empty(len(profiles), zone_tag(ctx.zone))
    fold_batch(table, np.arange(len(profiles), dtype=np.int64), cols, ctx)
    return profiles, table


def rebuild_tenant(
    events: EventStore,
    cache: FeatureCache,
    identity: IdentityGraphStore,
    tenant: str,
    zone: ZoneInfo,
    now: int | None = None,
    params: ActivityParams | None = None,
) -> RebuildResult:
    """Replace the tenant's cached features with ones rebuilt from every stored event.

    Events ingested while this runs are in the store but may miss the rebuilt profiles until
    their next rebuild (run it when ingest is quiet, or invalidate the people concerned)."""
    ctx = FoldContext(zone, int(time.time()) if now is None else now, params or ActivityParams())
    t0 = time.perf_counter()
    arrays = events.engagement_arrays(tenant)
    t1 = time.perf_counter()
    profiles, table = fold_arrays(arrays, identity.alias_map(tenant), ctx)
    t2 = time.perf_counter()
    cache.clear_tenant(tenant)
    cache.put_table(tenant, profiles, table)
    t3 = time.perf_counter()
    return RebuildResult(tenant, len(arrays), len(profiles), t1 - t0, t2 - t1, t3 - t2)


@dataclass(frozen=True, slots=True)
class WarmResult:
    tenant: str
    events: int
    profiles: int  # rebuilt from the store
    cached: int  # of which written: not those stored, folded or cached meanwhile
    seconds: float


def warm_tenant(
    events: EventStore,
    cache: FeatureCache,
    identity: IdentityGraphStore,
    tenant: str,
    zone: ZoneInfo,
    now: int | None = None,
    params: ActivityParams | None = None,
) -> WarmResult:
    """Fill the cache with the tenant's people rebuilt from the store (one columnar query), while
    ingest and decisions go on: unlike `rebuild_tenant` it replaces nothing, and it leaves out
    the people whose events were being stored or folded meanwhile (FeatureCache.rebuilding), so
    no event counts twice or goes missing; those are rebuilt on their next read as before."""
    t0 = time.perf_counter()
    with cache.rebuilding(tenant) as rebuild:
        ctx = FoldContext(
            zone, int(time.time()) if now is None else now, params or ActivityParams()
        )
        arrays = events.engagement_arrays(tenant)
        profiles, table = fold_arrays(arrays, identity.alias_map(tenant), ctx)
        cached = rebuild.put_table(profiles, table)
    return WarmResult(tenant, len(arrays), len(profiles), cached, time.perf_counter() - t0)
