"""GET /api/events pages decoded straight from bytes: msgspec Structs for what the normaliser
reads, the raw bytes of every resource for the archive. Pure: no I/O.

A page of 1,000 events is ~2 MB and ~60,000 JSON values; decoded into dicts they are tens of
thousands of GC-tracked objects per page, and in a process whose heap is large the cyclic GC's
full collections over them cost several times the decoding itself. Here the page splits into
each resource's raw bytes (`msgspec.Raw`), and each resource decodes into small Structs that
skip every member the normaliser does not read (links, relationship links, other attributes)
and are not tracked by the GC (`gc=False`: decoded JSON holds no reference cycle; the
`event_properties` dicts and lists they hold are tracked as usual).

Anything whose shape the Structs do not describe exactly (a relationship that is not a
to-one object, attributes that are not an object, a non-string `type`...) decodes as the dict
the old path built (`orjson.loads`) and goes through the same checks (`jsonapi`), so what is a
protocol error, and what the normaliser reports for a bad event, is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec
import orjson

from sendflowr.connectors.klaviyo import jsonapi
from sendflowr.connectors.klaviyo.jsonapi import JsonApiError, Resource


class ShapeError(JsonApiError):
    """A well-formed JSON:API document whose resources are not (the client does not retry
    it, as before: the same page would come back the same)."""


class _Object(msgspec.Struct, gc=False):
    """Any JSON object, its members skipped (a shape check that builds nothing)."""


class _Id(msgspec.Struct, gc=False):
    id: Any = None


class _ToOne(msgspec.Struct, gc=False):
    data: _Id | None = None


class _Relationships(msgspec.Struct, gc=False):
    profile: _ToOne | None = None
    metric: _ToOne | None = None


class EventAttributes(msgspec.Struct, gc=False):
    datetime: Any = None
    timestamp: Any = None
    event_properties: Any = None


class WireEvent(msgspec.Struct, gc=False):
    """An event resource: what `normalize.normalize_records` reads of it."""

    type: str
    id: str
    attributes: EventAttributes
    relationships: _Relationships | None = None
    links: _Object | None = None


class ProfileAttributes(msgspec.Struct, gc=False):
    """A profile's attributes that the normaliser reads (absent and null alike: None).

    The anonymous-id names (`normalize.ANONYMOUS_ID_KEYS`) are no attribute of Klaviyo's
    profile schema, but the dict path reads them, so this one does too."""

    email: Any = None
    phone_number: Any = None
    external_id: Any = None
    anonymous_id: Any = None
    kx: Any = msgspec.field(default=None, name="_kx")
    anonymous: Any = msgspec.field(default=None, name="$anonymous")
    dollar_kx: Any = msgspec.field(default=None, name="$_kx")
    exchange_id: Any = msgspec.field(default=None, name="$exchange_id")

    def as_dict(self) -> dict[str, Any]:
        """The attributes as the dict path would read them (same keys, None when absent)."""
        return {
            "email": self.email,
            "phone_number": self.phone_number,
            "external_id": self.external_id,
            "anonymous_id": self.anonymous_id,
            "_kx": self.kx,
            "$anonymous": self.anonymous,
            "$_kx": self.dollar_kx,
            "$exchange_id": self.exchange_id,
        }


class _Included(msgspec.Struct, gc=False):
    type: str
    id: str
    attributes: ProfileAttributes | None = None
    relationships: _Object | None = None
    links: _Object | None = None


class _Links(msgspec.Struct, gc=False):
    next: Any = None


class _Document(msgspec.Struct, gc=False):
    data: list[msgspec.Raw]
    included: list[msgspec.Raw] | None = None
    links: _Links | None = None


_DOCUMENT: Final = msgspec.json.Decoder(_Document)
_EVENT: Final = msgspec.json.Decoder(WireEvent)
_INCLUDED: Final = msgspec.json.Decoder(_Included)


class EventRecord(msgspec.Struct, gc=False):
    """One event of a page: its bytes as received, and the decoded event (a `WireEvent`, or
    the resource dict when its shape is unusual). Untracked by the GC, as the Structs."""

    raw: bytes
    event: WireEvent | Resource

    def profile_ref(self) -> str | None:
        """`relationships.profile.data.id` as the archive keys it (`str()`, unstripped)."""
        ev = self.event
        if isinstance(ev, WireEvent):
            rels = ev.relationships
            rel = rels.profile if rels is not None else None
            pid = rel.data.id if rel is not None and rel.data is not None else None
        else:
            rels_d = ev.get("relationships")
            rel_d = rels_d.get("profile") if isinstance(rels_d, dict) else None
            data = rel_d.get("data") if isinstance(rel_d, dict) else None
            pid = data.get("id") if isinstance(data, dict) else None
        return str(pid) if pid is not None else None

    def resource(self) -> Resource:
        """The event as a dict (decoded from the raw bytes on demand)."""
        if isinstance(self.event, WireEvent):
            decoded: Resource = orjson.loads(self.raw)
            return decoded
        return self.event


class ProfileRecord(msgspec.Struct, gc=False):
    """One included profile: its bytes as received and the attributes the normaliser reads."""

    raw: bytes
    attributes: dict[str, Any]
    dict_resource: Resource | None = None  # when decoded as a dict

    def resource(self) -> Resource:
        if self.dict_resource is not None:
            return self.dict_resource
        decoded: Resource = orjson.loads(self.raw)
        return decoded


@dataclass(slots=True)
class DecodedPage:
    events: list[EventRecord]
    profiles: dict[str, ProfileRecord]
    next_link: str | None


def _event(raw: bytes, i: int) -> EventRecord:
    try:
        return EventRecord(raw, _EVENT.decode(raw))
    except msgspec.ValidationError:
        return EventRecord(raw, check_resource(orjson.loads(raw), f"data[{i}]"))


def _profile(raw: bytes, i: int, profiles: dict[str, ProfileRecord]) -> None:
    try:
        inc = _INCLUDED.decode(raw)
    except msgspec.ValidationError:
        resource = check_resource(orjson.loads(raw), f"included[{i}]")
        if resource["type"] == "profile":
            attrs = resource.get("attributes")
            profiles[resource["id"]] = ProfileRecord(
                raw, attrs if isinstance(attrs, dict) else {}, resource
            )
        return
    if inc.type == "profile":
        attrs = inc.attributes.as_dict() if inc.attributes is not None else {}
        profiles[inc.id] = ProfileRecord(raw, attrs)


def check_resource(value: Any, where: str) -> Resource:
    try:
        return jsonapi.check_resource(value, where)
    except JsonApiError as exc:
        raise ShapeError(str(exc)) from None


def _slow(body: bytes, content_type: str) -> DecodedPage:
    """The dict path, for a document whose outline the Structs do not describe: the errors
    are the ones callers always saw (a bad document: JsonApiError; bad resources in a good
    document: ShapeError)."""
    doc = jsonapi.decode_document(body, content_type)
    try:
        resources = jsonapi.primary_resources(doc)
        included = jsonapi.included_resources(doc, "profile")
        nxt = jsonapi.next_link(doc)
    except JsonApiError as exc:
        raise ShapeError(str(exc)) from None
    events = [EventRecord(orjson.dumps(r), r) for r in resources]
    profiles = {
        rid: ProfileRecord(
            orjson.dumps(r), a if isinstance(a := r.get("attributes"), dict) else {}, r
        )
        for rid, r in included.items()
    }
    return DecodedPage(events, profiles, nxt)


def decode_events_page(body: bytes, content_type: str) -> DecodedPage:
    """A GET /api/events document: JsonApiError when the body is not a JSON:API document
    (as `jsonapi.decode_document`), ShapeError when its resources or links are malformed."""
    if jsonapi.media_type(content_type) not in jsonapi.ACCEPTED_CONTENT_TYPES:
        return _slow(body, content_type)  # raises the content-type error
    try:
        doc = _DOCUMENT.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _slow(body, content_type)
    events = [_event(bytes(raw), i) for i, raw in enumerate(doc.data)]
    profiles: dict[str, ProfileRecord] = {}
    for i, raw in enumerate(doc.included or ()):
        _profile(bytes(raw), i, profiles)
    nxt = doc.links.next if doc.links is not None else None
    if nxt is None or nxt == "":
        return DecodedPage(events, profiles, None)
    if not isinstance(nxt, str):
        raise ShapeError(f"links.next: expected a string, got {type(nxt).__name__}")
    return DecodedPage(events, profiles, nxt)
