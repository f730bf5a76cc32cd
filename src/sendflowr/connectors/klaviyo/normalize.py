"""Klaviyo events -> canonical events. Pure: no I/O, no clock; the hashing key is passed in.

Input shapes (Klaviyo's spec, revision `constants.REVISION`):
- an event resource (`EventResponseObjectResource`): `id`, `attributes.datetime` (ISO 8601)
  or `attributes.timestamp` (Unix seconds), `attributes.event_properties`,
  `relationships.profile.data.id`, `relationships.metric.data.id`;
- its profile (`ProfileResponseObjectResource`, from `included`): `id`,
  `attributes.email`, `attributes.phone_number`, `attributes.external_id`;
- a webhook delivery item: `{"external_id", "topic", "payload": {"data": <event>,
  "included": [<profile>, <metric>]}}`, the payload shaped like
  GET /api/events/{id}?include=profile,metric.

Mapping:
- event type from the metric name (`METRIC_EVENT_TYPES`, then `METRIC_ALIASES`); an unknown
  metric is an error, never a guess;
- identifiers: the keyed hash of the profile's email (the address itself is never kept),
  the Klaviyo profile id, the phone in E.164 (when `phonenumbers` accepts it), the profile's
  external id as `external_ids["klaviyo_external_id"]`, an anonymous id (`ANONYMOUS_ID_KEYS`).
  An email or phone that does not parse is dropped, not fatal; an event left with no
  identifier at all is an error;
- `message_id` = `$message`, `flow_id` = `$flow`, `campaign_id` = `$message` when there is no
  `$flow` (Klaviyo puts the campaign's message id in `$message`);
- `is_machine_open` for an Opened Email when any flag in `MACHINE_OPEN_FLAGS` is truthy;
- `properties` = the raw `event_properties`, untouched (orders keep `$value`, currency,
  items, discounts and UTM parameters), plus `"$metric"`: the metric name.

Every failure is a `NormalizationError(loc, msg)` naming the JSON path in the input, never a
bare KeyError/TypeError (property-tested with arbitrary JSON).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeGuard

from sendflowr.connectors.klaviyo.constants import ESP, METRIC_ALIASES, METRIC_EVENT_TYPES
from sendflowr.events import CanonicalEvent, EventType, EventValidationError, parse_event
from sendflowr.identity.hashing import hash_email
from sendflowr.identity.identifiers import normalise_phone

EXTERNAL_ID_NAMESPACE: Final = "klaviyo_external_id"

# Apple Mail Privacy Protection: Klaviyo (and integrations relaying its events) mark opens
# that Apple's proxy fetched, not a person, with one of these event properties. The names
# differ between Klaviyo's own property, older exports and third-party relays; any truthy
# one makes the open a machine open. Truthy: true, a non-zero number, or "true"/"1"/"yes".
MACHINE_OPEN_FLAGS: Final = (
    "machine_open",
    "$machine_open",
    "Apple Privacy Open",
    "is_machine_open",
)

# Where an anonymous (web tracking) id can appear: profile attributes, then event properties.
ANONYMOUS_ID_KEYS: Final = ("anonymous_id", "_kx", "$anonymous", "$_kx", "$exchange_id")

# Every attribute the normaliser reads, named as Klaviyo's sparse fieldsets name them: a
# backfill asks GET /api/events for these only (`fields[event]`, `fields[profile]`), which
# cuts the bytes of a page's `included` profiles by about a third. `timestamp` is read only
# when `datetime` is null. (ANONYMOUS_ID_KEYS are read from profile attributes too, but they
# are no attribute of Klaviyo's profile schema, so a sparse fieldset cannot name them; they
# come from webhook relays.) tests/klaviyo/test_normalize.py checks that the normaliser reads
# nothing else.
EVENT_FIELDS: Final = ("datetime", "event_properties", "timestamp")
PROFILE_FIELDS: Final = ("email", "external_id", "phone_number")

# IdentifierCache's key spells these out: keep the two in step.
assert ANONYMOUS_ID_KEYS == ("anonymous_id", "_kx", "$anonymous", "$_kx", "$exchange_id")

_TRUTHY_STRINGS: Final = frozenset({"true", "1", "yes"})
_MAX_ID_LEN: Final = 256

Loc = tuple[str | int, ...]


class NormalizationError(ValueError):
    """A payload could not become a canonical event: `loc` is the JSON path, `msg` why."""

    def __init__(self, loc: Loc, msg: str) -> None:
        self.loc = tuple(loc)
        self.msg = msg
        super().__init__(f"{'.'.join(map(str, self.loc)) or '$'}: {msg}")

    def prefixed(self, prefix: Loc) -> NormalizationError:
        """The same error (same class) located under `prefix`."""
        err = NormalizationError.__new__(type(self))
        NormalizationError.__init__(err, (*prefix, *self.loc), self.msg)
        err.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("loc", "msg")})
        return err


class UnknownMetricError(NormalizationError):
    """The metric is not one SendFlowr maps (a caller may skip it rather than dead-letter it)."""

    def __init__(self, loc: Loc, msg: str, *, metric: object = None) -> None:
        super().__init__(loc, msg)
        self.metric = metric


class PageLike(Protocol):
    """What `normalize_page` needs from a page (`client.EventsPage` fits)."""

    @property
    def events(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def profiles(self) -> Mapping[str, Mapping[str, Any]]: ...


def event_type_for(metric_name: str) -> EventType:
    """The canonical type of a Klaviyo metric; NormalizationError when it is not one we map."""
    if isinstance(metric_name, str):
        found = METRIC_EVENT_TYPES.get(metric_name) or METRIC_ALIASES.get(metric_name)
        if found is not None:
            return found
    raise UnknownMetricError(
        ("relationships", "metric"),
        f"unknown metric {metric_name!r}: not a mapped Klaviyo metric",
        metric=metric_name,
    )


def _is_map(value: object) -> TypeGuard[Mapping[str, Any]]:
    # JSON decodes to dicts: the exact type check first (an ABC isinstance costs ~1 µs).
    return type(value) is dict or isinstance(value, Mapping)


def _mapping(value: Any, loc: Loc, what: str) -> Mapping[str, Any]:
    if not _is_map(value):
        raise NormalizationError(loc, f"{what} must be an object, got {type(value).__name__}")
    return value


def _text(value: Any) -> str | None:
    """A usable id-like string: non-empty str (or an integer, as Klaviyo sometimes sends)."""
    if value is None:
        return None
    if type(value) is str:  # the common case first
        text = value.strip()
        return text if text and len(text) <= _MAX_ID_LEN and text.isprintable() else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return None
    text = str(value) if isinstance(value, int) else value
    if isinstance(text, str):
        text = text.strip()
        if text and len(text) <= _MAX_ID_LEN and text.isprintable():
            return text
    return None


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0 and value == value  # NaN is not a flag
    if isinstance(value, str):
        return value.strip().lower() in _TRUTHY_STRINGS
    return False


def _occurred_at(attributes: Mapping[str, Any]) -> datetime:
    return _occurred_at_of(attributes.get("datetime"), attributes.get("timestamp"))


def _occurred_at_of(raw: Any, ts: Any) -> datetime:
    """When the event happened: `datetime` (ISO 8601), else `timestamp` (Unix seconds)."""
    if raw is not None:
        loc: Loc = ("attributes", "datetime")
        if not isinstance(raw, str):
            raise NormalizationError(loc, f"expected an ISO 8601 string, got {type(raw).__name__}")
        try:
            at = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise NormalizationError(loc, f"{raw[:64]!r} is not an ISO 8601 datetime") from None
        if at.tzinfo is None or at.utcoffset() is None:
            raise NormalizationError(loc, f"{raw[:64]!r} has no UTC offset")
        try:
            return at.astimezone(UTC)
        except (OverflowError, ValueError):
            raise NormalizationError(loc, f"{raw[:64]!r} is out of range") from None
    loc = ("attributes", "timestamp")
    if ts is None:
        raise NormalizationError(("attributes", "datetime"), "missing (and no timestamp)")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise NormalizationError(loc, f"expected Unix seconds, got {type(ts).__name__}")
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        raise NormalizationError(loc, f"{ts!r} is out of range") from None


def _profile_id(resource: Mapping[str, Any], profile: Mapping[str, Any] | None) -> str | None:
    rels = resource.get("relationships")
    rel = rels.get("profile") if _is_map(rels) else None
    data = rel.get("data") if _is_map(rel) else None
    from_rel = _text(data.get("id")) if _is_map(data) else None
    if from_rel is not None:
        return from_rel
    return _text(profile.get("id")) if profile is not None else None


_ProfileKey = tuple[Any, ...]


class IdentifierCache:
    """What a profile's attributes give (hashed email, E.164 phone, ids), remembered per
    profile id and those attributes' values, so a profile seen on many events is hashed and
    parsed once. Bounded: cleared when it holds `max_entries`. Pure (no I/O)."""

    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[_ProfileKey, tuple[dict[str, Any], bool]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def get(
        self,
        profile_id: str | None,
        attrs: Mapping[str, Any],
        hash_key: bytes,
    ) -> tuple[dict[str, Any], bool]:
        get = attrs.get
        key = (  # the attributes `_profile_identifiers` reads (ANONYMOUS_ID_KEYS spelt out)
            profile_id,
            hash_key,
            get("email"),
            get("phone_number"),
            get("external_id"),
            get("anonymous_id"),
            get("_kx"),
            get("$anonymous"),
            get("$_kx"),
            get("$exchange_id"),
        )
        try:
            found = self._entries.get(key)
        except TypeError:  # an unhashable attribute value: nothing to remember
            return _profile_identifiers(profile_id, attrs, hash_key)
        if found is None:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            found = self._entries[key] = _profile_identifiers(profile_id, attrs, hash_key)
        return found


def _profile_identifiers(
    profile_id: str | None, attrs: Mapping[str, Any], hash_key: bytes
) -> tuple[dict[str, Any], bool]:
    """The identifiers a profile gives, and whether they include an anonymous id."""
    ids: dict[str, Any] = {}
    email = attrs.get("email")
    if isinstance(email, str) and email.strip():
        # Not an address: dropped; the other identifiers still place the person.
        with contextlib.suppress(ValueError):
            ids["email_hash"] = hash_email(hash_key, email)
    if profile_id is not None:
        ids["esp_profile_id"] = profile_id
    phone = attrs.get("phone_number")
    if isinstance(phone, str) and phone.strip() and len(phone) <= 64:
        with contextlib.suppress(ValueError):
            ids["phone"] = normalise_phone(phone)
    external = _text(attrs.get("external_id"))
    if external is not None:
        ids["external_ids"] = {EXTERNAL_ID_NAMESPACE: external}
    anon = _anonymous_id(attrs)
    if anon is not None:
        ids["anonymous_id"] = anon
    return ids, anon is not None


def _anonymous_id(source: Mapping[str, Any]) -> str | None:
    for key in ANONYMOUS_ID_KEYS:
        if key in source:
            anon = _text(source[key])
            if anon is not None:
                return anon
    return None


def _identifiers(
    profile_id: str | None,
    profile: Mapping[str, Any] | None,
    event_properties: Mapping[str, Any],
    hash_key: bytes,
    cache: IdentifierCache | None = None,
) -> dict[str, Any]:
    attrs = profile.get("attributes") if profile is not None else None
    if not _is_map(attrs):
        attrs = {}
    if cache is None:
        base, has_anon = _profile_identifiers(profile_id, attrs, hash_key)
    else:
        base, has_anon = cache.get(profile_id, attrs, hash_key)
    return _event_identifiers(base, has_anon, event_properties)


def _event_identifiers(
    base: dict[str, Any], has_anon: bool, event_properties: Mapping[str, Any]
) -> dict[str, Any]:
    """An event's own copy of its profile's identifiers, plus the event's anonymous id."""
    ids = dict(base)
    external = ids.get("external_ids")
    if external is not None:
        ids["external_ids"] = dict(external)
    if not has_anon:
        anon = _anonymous_id(event_properties)
        if anon is not None:
            ids["anonymous_id"] = anon
    return ids


# Canonical field -> where it came from in the Klaviyo event resource.
_SOURCE_LOC: Final[dict[str, Loc]] = {
    "tenant": ("tenant",),
    "esp_event_id": ("id",),
    "event_id": ("id",),
    "occurred_at": ("attributes", "datetime"),
    "identifiers": ("relationships", "profile"),
    "message_id": ("attributes", "event_properties", "$message"),
    "campaign_id": ("attributes", "event_properties", "$message"),
    "flow_id": ("attributes", "event_properties", "$flow"),
    "properties": ("attributes", "event_properties"),
    "is_machine_open": ("attributes", "event_properties"),
}


def normalize_event(
    resource: Mapping[str, Any],
    *,
    metric_name: str,
    profile: Mapping[str, Any] | None,
    tenant: str,
    hash_key: bytes,
    cache: IdentifierCache | None = None,
) -> CanonicalEvent:
    """One Klaviyo event resource (and its profile, when known) as a canonical event;
    `cache` remembers what each profile's identifiers are (see `IdentifierCache`)."""
    resource = _mapping(resource, (), "an event resource")
    event_type = event_type_for(metric_name)
    event_id = _text(resource.get("id"))
    if event_id is None:
        raise NormalizationError(("id",), "missing or not a usable id")
    attributes = _mapping(resource.get("attributes"), ("attributes",), "attributes")
    props_raw = attributes.get("event_properties")
    props = (
        {}
        if props_raw is None
        else _mapping(props_raw, ("attributes", "event_properties"), "event_properties")
    )
    occurred_at = _occurred_at(attributes)
    if profile is not None and not _is_map(profile):
        raise NormalizationError(("profile",), "the profile must be an object")
    identifiers = _identifiers(_profile_id(resource, profile), profile, props, hash_key, cache)
    return _canonical(event_type, metric_name, event_id, props, occurred_at, identifiers, tenant)


def _canonical(
    event_type: EventType,
    metric_name: str,
    event_id: str,
    props: Mapping[str, Any],
    occurred_at: datetime,
    identifiers: dict[str, Any],
    tenant: str,
) -> CanonicalEvent:
    """The canonical event from what `normalize_event` (or `normalize_records`) read."""
    if not identifiers:
        raise NormalizationError(
            ("relationships", "profile"),
            "no identifier: no profile id, email, phone, external id or anonymous id",
        )
    message_id = _text(props.get("$message"))
    flow_id = _text(props.get("$flow"))
    properties = dict(props)
    properties["$metric"] = metric_name
    data: dict[str, Any] = {
        "tenant": tenant,
        "esp": ESP,
        "esp_event_id": event_id,
        "event_type": event_type.value,
        "occurred_at": occurred_at,
        "identifiers": identifiers,
        "message_id": message_id,
        "flow_id": flow_id,
        "campaign_id": message_id if flow_id is None else None,
        "is_machine_open": event_type is EventType.OPENED
        and any(_truthy(props.get(flag)) for flag in MACHINE_OPEN_FLAGS),
        "properties": properties,
    }
    try:
        return parse_event(data)
    except EventValidationError as exc:
        err = exc.errors[0]
        head = err.loc[0] if err.loc else ""
        loc = _SOURCE_LOC.get(str(head), ())
        raise NormalizationError(loc, f"{'.'.join(map(str, err.loc))}: {err.msg}") from None


def _metric_id(resource: Mapping[str, Any]) -> str | None:
    rels = resource.get("relationships")
    rel = rels.get("metric") if _is_map(rels) else None
    data = rel.get("data") if _is_map(rel) else None
    return _text(data.get("id")) if _is_map(data) else None


def normalize_page(
    page: PageLike,
    metric_names: Mapping[str, str],
    *,
    tenant: str,
    hash_key: bytes,
    metric_id: str | None = None,
    cache: IdentifierCache | None = None,
) -> tuple[list[CanonicalEvent], list[tuple[Any, NormalizationError]]]:
    """A page of events: the good ones, and each bad one with its error (never raises for one).

    The metric of an event is its `relationships.metric.data.id`, or `metric_id` (the metric
    the page was requested for) when the relationship carries no data.
    """
    good: list[CanonicalEvent] = []
    bad: list[tuple[Any, NormalizationError]] = []
    for i, raw in enumerate(page.events):
        try:
            good.append(
                normalize_resource(
                    raw,
                    page.profiles.get,
                    metric_names,
                    tenant=tenant,
                    hash_key=hash_key,
                    metric_id=metric_id,
                    cache=cache,
                )
            )
        except NormalizationError as exc:
            bad.append((raw, exc.prefixed(("data", i))))
    return good, bad


def normalize_resource(
    raw: Any,
    profile_of: Callable[[str], Mapping[str, Any] | None],
    metric_names: Mapping[str, str],
    *,
    tenant: str,
    hash_key: bytes,
    metric_id: str | None = None,
    cache: IdentifierCache | None = None,
) -> CanonicalEvent:
    """One event resource of a page (its metric as `normalize_page` finds it, its profile
    from `profile_of`); raises NormalizationError located within the resource."""
    resource = _mapping(raw, (), "an event resource")
    mid = _metric_id(resource) or metric_id
    if mid is None:
        raise NormalizationError(("relationships", "metric"), "no metric id")
    name = metric_names.get(mid)
    if name is None:
        raise NormalizationError(
            ("relationships", "metric", "data", "id"), f"metric id {mid!r} is not known"
        )
    pid = _profile_id(resource, None)
    return normalize_event(
        resource,
        metric_name=name,
        profile=profile_of(pid) if pid is not None else None,
        tenant=tenant,
        hash_key=hash_key,
        cache=cache,
    )


# The webhook receivers' cache, one per process (their threads share it: a race costs at most
# a second hash of the same profile). It holds plaintext identifiers, so a data-subject
# erasure clears it (identity/erasure.py). 50,000 profiles: about 35 MB at most.
WEBHOOK_IDENTIFIERS = IdentifierCache(max_entries=50_000)


def normalize_webhook_item(
    item: Mapping[str, Any],
    *,
    tenant: str,
    hash_key: bytes,
    cache: IdentifierCache | None = None,
) -> CanonicalEvent:
    """One webhook `data[]` item: its payload's event, profile and metric from `included`;
    `cache` as for `normalize_event`."""
    item = _mapping(item, (), "a webhook item")
    payload = _mapping(item.get("payload"), ("payload",), "payload")
    try:
        event = _mapping(payload.get("data"), ("data",), "data")
        included_raw = payload.get("included")
        included = included_raw if isinstance(included_raw, list) else []
        by_type: dict[tuple[str, str], Mapping[str, Any]] = {}
        for res in included:
            if _is_map(res):
                rtype, rid = _text(res.get("type")), _text(res.get("id"))
                if rtype is not None and rid is not None:
                    by_type[(rtype, rid)] = res
        metrics = [r for (t, _), r in by_type.items() if t == "metric"]
        mid = _metric_id(event)
        metric = by_type.get(("metric", mid)) if mid is not None else None
        if metric is None and len(metrics) == 1:
            metric = metrics[0]
        if metric is None:
            raise NormalizationError(("included",), "no metric resource for the event")
        mattrs = metric.get("attributes")
        name = mattrs.get("name") if _is_map(mattrs) else None
        if not isinstance(name, str):
            raise NormalizationError(("included",), "the metric has no name")
        pid = _profile_id(event, None)
        profile = by_type.get(("profile", pid)) if pid is not None else None
        if profile is None:
            profiles = [r for (t, _), r in by_type.items() if t == "profile"]
            profile = profiles[0] if len(profiles) == 1 else None
        try:
            return normalize_event(
                event,
                metric_name=name,
                profile=profile,
                tenant=tenant,
                hash_key=hash_key,
                cache=cache,
            )
        except NormalizationError as exc:
            raise exc.prefixed(("data",)) from None
    except NormalizationError as exc:
        raise exc.prefixed(("payload",)) from None


__all__ = [
    "ANONYMOUS_ID_KEYS",
    "ESP",
    "EVENT_FIELDS",
    "EXTERNAL_ID_NAMESPACE",
    "MACHINE_OPEN_FLAGS",
    "PROFILE_FIELDS",
    "WEBHOOK_IDENTIFIERS",
    "IdentifierCache",
    "NormalizationError",
    "PageLike",
    "UnknownMetricError",
    "event_type_for",
    "normalize_event",
    "normalize_page",
    "normalize_webhook_item",
]
