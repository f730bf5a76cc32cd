"""The pipeline: one function over a batch. normalise -> identity -> store -> feature update.

A bad item never sinks its batch: it goes to the dead letters with its reason. A failed store
write raises (the caller must not acknowledge the batch), and features are only touched after the
write returned, so what features count is always in the store.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sendflowr.errors import NotFoundError
from sendflowr.event_batch import decode_events_json
from sendflowr.events import (
    CanonicalEvent,
    EventValidationError,
    FieldError,
    ParsedBatch,
    parse_events,
    to_builtins,
)
from sendflowr.gcpause import gc_paused
from sendflowr.identity.resolver import IdentityResolver
from sendflowr.identity.store import BatchResolution
from sendflowr.metrics import observe_ingest
from sendflowr.storage.events.base import EventStore
from sendflowr.storage.events.rows import events_to_arrow
from sendflowr.storage.features.base import FeatureCache
from sendflowr.storage.metadata.store import DeadLetter, MetadataStore
from sendflowr.timing.activity import ActivityParams
from sendflowr.timing.features import BatchColumns, FoldContext, type_indexes

log = logging.getLogger("sendflowr.pipeline")
_tenant = attrgetter("tenant")
_occurred_at = attrgetter("occurred_at")


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int
    errors: tuple[FieldError, ...]


@dataclass(slots=True)
class IngestResult:
    received: int = 0
    stored: int = 0
    profiles_updated: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def merge(self, other: IngestResult) -> None:
        self.received += other.received
        self.stored += other.stored
        self.profiles_updated += other.profiles_updated
        self.rejected.extend(other.rejected)


@dataclass(slots=True)
class PreparedBatch:
    """A batch validated and resolved, ready to be stored (`Pipeline.prepare_json`, then
    `Pipeline.store`): the two halves of `process_json`, so a consumer can prepare the next
    batch while this one is written."""

    source: str
    result: IngestResult  # received and rejected so far; store() adds stored and profiles
    tenants: list[tuple[str, BatchResolution, pa.Table]]


class RecentEventIds:
    """Event ids seen lately, so a replayed event is not counted twice in incremental features.

    Stores 64-bit hashes in sorted numpy arrays (8 bytes an id, not ~100 for a str in a set), in
    two generations: when the newer one reaches `capacity` the older is dropped. Bounded memory;
    a bulk rebuild of features from the store is exact whatever this forgot.
    """

    def __init__(self, capacity: int = 2_000_000) -> None:
        self._capacity = capacity
        self._old = np.empty(0, np.int64)
        self._chunks: list[npt.NDArray[np.int64]] = []
        self._current = np.empty(0, np.int64)

    def first_seen(self, event_ids: Sequence[str]) -> npt.NDArray[np.bool_]:
        keys = np.fromiter(map(hash, event_ids), np.int64, len(event_ids))
        # Sorted once: the binary searches below then walk the big arrays in order (numpy
        # narrows each search from the previous key's position), several times faster than
        # the same searches in arrival order, and the fresh keys come out sorted.
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        fresh = np.ones(len(keys), bool)
        fresh[1:] = ordered[1:] != ordered[:-1]  # a repeat within the batch: its first only
        for seen in (self._old, self._current, *self._chunks):
            fresh &= ~_contains(seen, ordered)
        self._chunks.append(ordered[fresh])
        if len(self._chunks) >= 16:
            self._current = np.sort(np.concatenate([self._current, *self._chunks]))
            self._chunks = []
            if len(self._current) >= self._capacity:
                self._old, self._current = self._current, np.empty(0, np.int64)
        out = np.empty(len(keys), bool)
        out[order] = fresh
        return out


def _contains(
    sorted_keys: npt.NDArray[np.int64], keys: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """Membership by binary search: O(n log m), never re-sorting the big side."""
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    found: npt.NDArray[np.bool_] = sorted_keys[at] == keys
    return found


class Pipeline:
    def __init__(
        self,
        events: EventStore,
        features: FeatureCache,
        identity: IdentityResolver,
        metadata: MetadataStore,
        *,
        max_future_skew: timedelta = timedelta(days=1),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.events = events
        self.features = features
        self.identity = identity
        self.metadata = metadata
        self.max_future_skew = max_future_skew
        self.clock = clock
        self._recent = RecentEventIds()
        # The feature fold's activity parameters: the timing service's (EngineParams().activity).
        self.activity_params = ActivityParams()
        # Called with (tenant, stored events) after each tenant's events are durable; a
        # listener's failure is logged and never fails the ingest (the data is stored).
        self.listeners: list[Callable[[str, pa.Table], None]] = []

    def process_payloads(self, source: str, payloads: Sequence[Mapping[str, Any]]) -> IngestResult:
        """Validate canonical-event payloads (as decoded JSON), then process them."""
        with gc_paused():
            parsed = parse_events(payloads)
            return self._store(self._prepare_parsed(source, list(payloads), parsed))

    def process_json(self, source: str, lines: Sequence[bytes]) -> IngestResult:
        """Decode and validate canonical events from JSON documents (one event each), then
        process them: what a bus consumer does with message values."""
        return self.store(self.prepare_json(source, lines))

    def prepare_json(self, source: str, lines: Sequence[bytes]) -> PreparedBatch:
        """The first half of `process_json`: decode and validate (the bad documents go to the
        dead letters), resolve identities, build each tenant's rows. Nothing is stored yet."""
        with gc_paused():
            parsed = decode_events_json(lines)  # = parse_events_json(lines), batch-wise
            raw = {i: lines[i].decode("utf-8", "replace") for i, _ in parsed.rejected}
            return self._prepare_parsed(source, raw, parsed)

    def store(self, prepared: PreparedBatch) -> IngestResult:
        """The second half of `process_json`: write the rows, then fold them into features.
        Prepared batches must be stored in the order they were prepared."""
        with gc_paused():
            return self._store(prepared)

    def _prepare_parsed(
        self,
        source: str,
        originals: Sequence[Any] | Mapping[int, Any],
        parsed: ParsedBatch,
    ) -> PreparedBatch:
        total = len(parsed.events) + len(parsed.rejected)
        prepared = self._prepare(parsed.events, source)
        result = prepared.result
        # Indexes in `result.rejected` refer to parsed.events; map them back to the input.
        bad_index = {b for b, _ in parsed.rejected}
        good_index = [i for i in range(total) if i not in bad_index]
        remapped = [Rejected(good_index[r.index], r.errors) for r in result.rejected]
        bad = [Rejected(i, err.errors) for i, err in parsed.rejected]
        self._dead_letter(source, [(originals[r.index], r) for r in bad])
        result.rejected = sorted(bad + remapped, key=lambda r: r.index)
        result.received = total
        return prepared

    def process(self, batch: Sequence[CanonicalEvent], source: str = "pipeline") -> IngestResult:
        """Store a batch of canonical events and fold them into features."""
        with gc_paused():
            return self._store(self._prepare(batch, source))

    def _prepare(self, batch: Sequence[CanonicalEvent], source: str) -> PreparedBatch:
        result = IngestResult(received=len(batch))
        by_tenant: Mapping[str, Sequence[CanonicalEvent]]
        tenants = set(map(_tenant, batch))
        if len(tenants) == 1 and max(map(_occurred_at, batch)) <= self._horizon():
            by_tenant = {tenants.pop(): batch}  # the usual batch: one tenant, none too late
        else:
            late = {r.index: r for r in self.future_rejections(batch)}
            grouped: dict[str, list[CanonicalEvent]] = defaultdict(list)
            future: list[tuple[Mapping[str, Any], Rejected]] = []
            for i, event in enumerate(batch):
                if i in late:
                    result.rejected.append(late[i])
                    future.append((to_builtins(event), late[i]))
                else:
                    grouped[event.tenant].append(event)
            self._dead_letter(source, future)
            by_tenant = grouped
        rows = []
        for tenant, events in by_tenant.items():
            resolution = self.identity.resolve_events(tenant, events)
            rows.append((tenant, resolution, events_to_arrow(events, resolution.universal_ids)))
        return PreparedBatch(source, result, rows)

    def _store(self, prepared: PreparedBatch) -> IngestResult:
        stored = profiles = 0  # counted afresh: a store retried after a failure counts once
        for tenant, resolution, table in prepared.tenants:
            # a feature rebuild reading the store meanwhile must not cache these people
            with self.features.ingesting(tenant, resolution.universal_ids):
                stored += self.events.insert_events(table)
                if resolution.merged:
                    # Merged people are rebuilt from the store (both histories) on next read.
                    merged = [u for s, gone in resolution.merged.items() for u in (s, *gone)]
                    self.features.invalidate(tenant, merged)
                profiles += self._update_features(tenant, table)
            for listener in self.listeners:
                try:
                    listener(tenant, table)
                except Exception:
                    log.exception("pipeline listener %r failed", listener)
        observe_ingest(prepared.source, stored=stored)  # metrics hook (issue 7)
        result = prepared.result
        result.stored, result.profiles_updated = stored, profiles
        return result

    def future_rejections(self, batch: Sequence[CanonicalEvent]) -> list[Rejected]:
        """Events dated further ahead than the allowed clock skew (a sender's clock is wrong)."""
        horizon = self._horizon()
        reason = f"is more than {self.max_future_skew} in the future"
        return [
            Rejected(i, (FieldError(("occurred_at",), reason),))
            for i, event in enumerate(batch)
            if event.occurred_at > horizon
        ]

    def _horizon(self) -> datetime:
        return self.clock() + self.max_future_skew

    def _update_features(self, tenant: str, table: pa.Table) -> int:
        fresh = self._recent.first_seen(table.column("event_id").to_pylist())
        if not fresh.any():
            return 0
        if not fresh.all():
            table = table.filter(pa.array(fresh))
        uid_codes = pc.dictionary_encode(table.column("universal_id")).combine_chunks()
        profiles: list[str] = uid_codes.dictionary.to_pylist()
        type_codes = pc.dictionary_encode(table.column("event_type")).combine_chunks()
        type_map = type_indexes(type_codes.dictionary.to_pylist())
        cols = BatchColumns(
            profile_index=uid_codes.indices.to_numpy().astype(np.int64),
            profiles=profiles,
            type_index=type_map[type_codes.indices.to_numpy()],
            occurred_ms=table.column("occurred_at").cast(pa.int64()).to_numpy(),
            is_machine_open=table.column("is_machine_open").to_numpy(zero_copy_only=False),
        )
        # Local time is the tenant's: profiles are kept in its zone (a profile kept in another
        # zone is dropped by the fold and rebuilt on its next read).
        try:  # the tenant's row as the decision path reads it: at most 2 s old
            zone = ZoneInfo(self.metadata.hot_tenant(tenant).timezone)
        except NotFoundError:
            zone = ZoneInfo("UTC")
        ctx = FoldContext(zone, int(self.clock().timestamp()), self.activity_params)
        return self.features.fold(tenant, cols, ctx)

    def _dead_letter(self, source: str, items: Sequence[tuple[Any, Rejected]]) -> None:
        """Keep each rejected item (a payload, or raw text that did not decode) with why."""
        if not items:
            return
        observe_ingest(source, dead_lettered=len(items))  # metrics hook (issue 7)
        known: dict[str, bool] = {}
        letters = []
        for payload, rej in items:
            tenant = payload.get("tenant") if isinstance(payload, Mapping) else None
            if isinstance(tenant, str) and tenant not in known:
                known[tenant] = self.metadata.find_tenant(tenant) is not None
            text = payload if isinstance(payload, str) else orjson.dumps(payload, default=str)
            letters.append(
                DeadLetter(
                    source=source,
                    payload=text if isinstance(text, str) else text.decode(),
                    reason=str(EventValidationError(rej.errors)),
                    tenant=tenant if isinstance(tenant, str) and known[tenant] else None,
                )
            )
        self.metadata.add_dead_letters(letters)
