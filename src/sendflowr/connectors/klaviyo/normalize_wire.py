"""Klaviyo events -> canonical events, from pages decoded by `wire` (the backfill's hot path).

The same mapping as `normalize.normalize_page`, and the same results and errors (tested on
simulator pages and on malformed events), read from `wire.WireEvent` Structs instead of
dicts, with the per-event work that only depends on the page hoisted out of the loop: the
event type of each metric id, and each profile's identifiers (hashed email, E.164 phone...)
are found once per page. An event that `wire` could only decode as a dict goes through
`normalize.normalize_event` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sendflowr.connectors.klaviyo.normalize import (
    IdentifierCache,
    NormalizationError,
    _canonical,
    _event_identifiers,
    _is_map,
    _occurred_at_of,
    _profile_identifiers,
    _text,
    event_type_for,
    normalize_resource,
)
from sendflowr.connectors.klaviyo.wire import EventRecord, ProfileRecord, WireEvent
from sendflowr.events import CanonicalEvent, EventType


@dataclass(slots=True)
class Normalized:
    """A page's (or a batch's) outcome: `events[i]` came from `records[accepted[i]]`;
    `rejected` holds each refused event (as a resource dict) with its error, located under
    `data.<index>` as `normalize_page` locates it."""

    events: list[CanonicalEvent] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    rejected: list[tuple[Any, NormalizationError]] = field(default_factory=list)


def _rel_id(event: WireEvent, name: str) -> str | None:
    rels = event.relationships
    if rels is None:
        return None
    rel = rels.profile if name == "profile" else rels.metric
    if rel is None or rel.data is None:
        return None
    return _text(rel.data.id)


def normalize_records(
    records: Sequence[EventRecord],
    profiles: Mapping[str, ProfileRecord],
    metric_names: Mapping[str, str],
    *,
    tenant: str,
    hash_key: bytes,
    metric_id: str | None = None,
    cache: IdentifierCache | None = None,
) -> Normalized:
    """A page of events as `normalize.normalize_page` would normalise the same resources
    (never raises for one event)."""
    out = Normalized()
    types: dict[str, tuple[str, EventType]] = {}
    identifiers_of: dict[str | None, tuple[dict[str, Any], bool]] = {}

    def identifiers(pid: str | None) -> tuple[dict[str, Any], bool]:
        found = identifiers_of.get(pid)
        if found is None:
            prof = profiles.get(pid) if pid is not None else None
            attrs = prof.attributes if prof is not None else {}
            if cache is None:
                found = _profile_identifiers(pid, attrs, hash_key)
            else:
                found = cache.get(pid, attrs, hash_key)
            identifiers_of[pid] = found
        return found

    for i, record in enumerate(records):
        try:
            ev = record.event
            if isinstance(ev, WireEvent):
                event = _from_wire(ev, metric_names, metric_id, types, identifiers, tenant)
            else:
                event = _from_dict(ev, profiles, metric_names, metric_id, tenant, hash_key, cache)
        except NormalizationError as exc:
            out.rejected.append((record.resource(), exc.prefixed(("data", i))))
            continue
        out.events.append(event)
        out.accepted.append(i)
    return out


def _metric(
    mid: str | None,
    metric_names: Mapping[str, str],
    types: dict[str, tuple[str, EventType]],
) -> tuple[str, EventType]:
    if mid is None:
        raise NormalizationError(("relationships", "metric"), "no metric id")
    found = types.get(mid)
    if found is None:
        name = metric_names.get(mid)
        if name is None:
            raise NormalizationError(
                ("relationships", "metric", "data", "id"), f"metric id {mid!r} is not known"
            )
        found = types[mid] = (name, event_type_for(name))
    return found


def _from_wire(
    ev: WireEvent,
    metric_names: Mapping[str, str],
    metric_id: str | None,
    types: dict[str, tuple[str, EventType]],
    identifiers: Callable[[str | None], tuple[dict[str, Any], bool]],
    tenant: str,
) -> CanonicalEvent:
    name, event_type = _metric(_rel_id(ev, "metric") or metric_id, metric_names, types)
    event_id = _text(ev.id)
    if event_id is None:
        raise NormalizationError(("id",), "missing or not a usable id")
    attributes = ev.attributes
    props_raw = attributes.event_properties
    if props_raw is None:
        props: Mapping[str, Any] = {}
    elif _is_map(props_raw):
        props = props_raw
    else:
        raise NormalizationError(
            ("attributes", "event_properties"),
            f"event_properties must be an object, got {type(props_raw).__name__}",
        )
    occurred_at = _occurred_at_of(attributes.datetime, attributes.timestamp)
    base, has_anon = identifiers(_rel_id(ev, "profile"))
    ids = _event_identifiers(base, has_anon, props)
    return _canonical(event_type, name, event_id, props, occurred_at, ids, tenant)


def _from_dict(
    resource: Mapping[str, Any],
    profiles: Mapping[str, ProfileRecord],
    metric_names: Mapping[str, str],
    metric_id: str | None,
    tenant: str,
    hash_key: bytes,
    cache: IdentifierCache | None,
) -> CanonicalEvent:
    """An event `wire` kept as a dict: exactly `normalize_page`'s steps for one item."""

    def profile_of(pid: str) -> Mapping[str, Any] | None:
        prof = profiles.get(pid)
        return prof.resource() if prof is not None else None

    return normalize_resource(
        resource,
        profile_of,
        metric_names,
        tenant=tenant,
        hash_key=hash_key,
        metric_id=metric_id,
        cache=cache,
    )
