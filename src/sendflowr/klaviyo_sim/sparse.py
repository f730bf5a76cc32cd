"""Sparse fieldsets (`fields[<type>]=a,b`), as Klaviyo applies them to GET /api/events.

A listed resource type keeps only the listed attributes in each of its resources'
`attributes` (`type`, `id`, `relationships` and `links` stay); a dotted name (`location.city`)
keeps one member of an object attribute. `id` may be listed and selects no attribute. The
allowed names are the spec's enums for the operation; anything else is a 400 naming the
parameter. A type that is not listed is rendered whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from sendflowr.klaviyo_sim.errors import bad_parameter

Fields = tuple[str, ...]

# GET /api/events and GET /api/events/{id}: the spec's `fields[...]` enums (revision 2026-07-15).
EVENT_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "event": frozenset({"datetime", "event_properties", "id", "timestamp", "uuid"}),
    "profile": frozenset(
        {
            "created",
            "email",
            "external_id",
            "first_name",
            "id",
            "image",
            "last_event_date",
            "last_name",
            "locale",
            "location",
            "location.address1",
            "location.address2",
            "location.city",
            "location.country",
            "location.ip",
            "location.latitude",
            "location.longitude",
            "location.region",
            "location.timezone",
            "location.zip",
            "organization",
            "phone_number",
            "properties",
            "title",
            "updated",
        }
    ),
    "metric": frozenset({"created", "id", "integration", "name", "updated"}),
    "attribution": frozenset({"id"}),
}


def parse_fields(
    query: Mapping[str, str], allowed: Mapping[str, frozenset[str]]
) -> dict[str, Fields]:
    """resource type -> the attribute names asked for (sorted, no duplicates); 400 naming
    `fields[<type>]` for a name the operation does not document."""
    out: dict[str, Fields] = {}
    for kind, names in allowed.items():
        param = f"fields[{kind}]"
        raw = query.get(param)
        if raw is None:
            continue
        wanted = {part.strip() for part in raw.split(",") if part.strip()}
        unknown = wanted - names
        if unknown or not wanted:
            what = ", ".join(sorted(unknown)) if unknown else "(empty)"
            raise bad_parameter(
                param,
                f"Invalid field(s) {what!r} for {param}; allowed: {', '.join(sorted(names))}.",
            )
        out[kind] = tuple(sorted(wanted))
    return out


def narrowing(kind: str, fields: Fields | None) -> Fields | None:
    """`fields` when they leave out some attribute of `kind`, else None (render whole)."""
    if fields is None:
        return None
    every = {n for n in EVENT_FIELDS[kind] if "." not in n and n != "id"}
    return None if every <= set(fields) else fields


def sparse_attributes(attributes: Mapping[str, Any], fields: Fields) -> dict[str, Any]:
    """The attributes `fields` select, in their original order (absent ones stay absent)."""
    whole = {f for f in fields if "." not in f}
    members: dict[str, set[str]] = {}
    for f in fields:
        head, dot, tail = f.partition(".")
        if dot and head not in whole:
            members.setdefault(head, set()).add(tail)
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if key in whole:
            out[key] = value
        elif key in members and isinstance(value, Mapping):
            out[key] = {k: v for k, v in value.items() if k in members[key]}
    return out


def sparse_resource(resource: Mapping[str, Any], fields: Fields) -> dict[str, Any]:
    out = dict(resource)
    attributes = resource.get("attributes")
    if isinstance(attributes, Mapping):
        out["attributes"] = sparse_attributes(attributes, fields)
    return out


def sparse_rendered(rendered: bytes, fields: Fields | None) -> bytes:
    """A rendered resource with only `fields` in its attributes (itself when `fields` is
    None). Parses and renders it again: ~7 µs an event (the sim's cost of `fields[event]`)."""
    if fields is None:
        return rendered
    return orjson.dumps(sparse_resource(orjson.loads(rendered), fields))
