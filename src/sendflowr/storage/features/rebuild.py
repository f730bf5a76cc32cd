"""Bulk rebuild of a tenant's feature cache from the event store: one columnar query per tenant
(`EventStore.engagement_arrays`), folded with the same vectorised update the pipeline uses, and
written to the cache in one `put_table`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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


def resolve_aliases(aliases: Mapping[str, str], uid: str) -> str:
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


@dataclass(frozen=True, slots=True)
class Folded:
    """People's features folded from the store: row i of `table` is `profiles[i]`."""

    events: int
    profiles: list[str]
    table: FeatureTable
    read_s: float  # the query, to numpy
    fold_s: float  # aliases, offsets, observe


def fold_stored(
    events: EventStore,
    identity: IdentityGraphStore,
    tenant: str,
    ctx: FoldContext,
    people: Sequence[str] | None = None,
) -> Folded:
    """Every person's features from the tenant's stored events, in ONE columnar query; with
    `people`, only theirs (their events under every alias) and row i is people[i] (empty when
    they have no events)."""
    t0 = time.perf_counter()
    aliases = identity.alias_map(tenant)
    stored = None
    if people is not None:
        want = set(people)
        stored = [*people, *(a for a in aliases if resolve_aliases(aliases, a) in want)]
    arrays = events.engagement_arrays(tenant, universal_ids=stored)
    t1 = time.perf_counter()
    found, table = fold_arrays(arrays, aliases, ctx)
    if people is not None:  # in the order asked for, empty rows for people without events
        at = {u: i for i, u in enumerate(people)}
        src = np.fromiter((i for i, u in enumerate(found) if u in at), np.int64)
        dst = np.fromiter((at[found[i]] for i in src.tolist()), np.int64, len(src))
        aligned = FeatureTable.empty(len(people), zone_tag(ctx.zone))
        aligned.activity.copy_rows(dst, table.activity, src)
        aligned.counts[dst] = table.counts[src]
        aligned.first_seen_ms[dst] = table.first_seen_ms[src]
        found, table = list(people), aligned
    return Folded(len(arrays), found, table, t1 - t0, time.perf_counter() - t1)


def _context(zone: ZoneInfo, now: int | None, params: ActivityParams | None) -> FoldContext:
    return FoldContext(zone, int(time.time()) if now is None else now, params or ActivityParams())


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
    folded = fold_stored(events, identity, tenant, _context(zone, now, params))
    t0 = time.perf_counter()
    cache.clear_tenant(tenant)
    cache.put_table(tenant, folded.profiles, folded.table)
    write_s = time.perf_counter() - t0
    return RebuildResult(
        tenant, folded.events, len(folded.profiles), folded.read_s, folded.fold_s, write_s
    )


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
    with cache.rebuilding(tenant) as rebuild:  # before the read
        folded = fold_stored(events, identity, tenant, _context(zone, now, params))
        cached = rebuild.put_table(folded.profiles, folded.table)
    return WarmResult(tenant, folded.events, len(folded.profiles), cached, time.perf_counter() - t0)
