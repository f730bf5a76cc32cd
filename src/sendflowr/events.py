"""The canonical event: what every ESP payload becomes before it is stored.

Pure: no I/O, no clock. Validation errors name the field and the reason.
Published as JSON Schema (`schemas/canonical_event.v1.json`, see `sendflowr schema`).
"""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import msgspec
import orjson

SCHEMA_VERSION: Final = 1

# Namespace for deterministic event ids: uuid5(NS, f"{esp}:{esp_event_id}").
EVENT_ID_NAMESPACE: Final = uuid.UUID("5e4df10e-7c1a-4b7e-9a51-6f1c0de0e5e1")

# Bounds the store can represent and that make sense for email engagement.
MIN_OCCURRED_AT: Final = datetime(2000, 1, 1, tzinfo=UTC)
MAX_OCCURRED_AT: Final = datetime(2100, 1, 1, tzinfo=UTC)

Slug = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="lower-case letters, digits, '_' and '-', 1 to 63 characters",
    ),
]
EspName = Annotated[
    str,
    msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{1,31}$", description="ESP name, e.g. 'klaviyo'"),
]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
EmailHash = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9a-f]{64}$",
        description="keyed HMAC-SHA256 of the trimmed, lower-cased email (64 hex characters)",
    ),
]
E164 = Annotated[
    str, msgspec.Meta(pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164 phone number")
]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class EventType(enum.StrEnum):
    RECEIVED = "received"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"
    SPAM_COMPLAINT = "spam_complaint"
    ORDERED = "ordered"
    SITE_VISIT = "site_visit"
    PRODUCT_VIEW = "product_view"


# Signals of real attention (machine opens are filtered separately).
ENGAGEMENT_TYPES: Final = frozenset(
    {
        EventType.OPENED,
        EventType.CLICKED,
        EventType.ORDERED,
        EventType.SITE_VISIT,
        EventType.PRODUCT_VIEW,
    }
)


def _reject_trailing_newline(obj: msgspec.Struct, names: tuple[str, ...]) -> None:
    # msgspec matches patterns with re.search, where '$' also matches before a final '\n'.
    for name in names:
        value = getattr(obj, name)
        if value is not None and value.endswith("\n"):
            raise ValueError(f"{name}: must not end with a line break")


def _require_utf8(obj: msgspec.Struct, names: tuple[str, ...]) -> None:
    # A JSON "\ud800" escape decodes to a lone surrogate, which no store can hold.
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ValueError(f"{name}: contains a lone UTF-16 surrogate") from None


def _check_properties(properties: dict[str, Any]) -> None:
    """Properties are stored as JSON: refuse what JSON storage cannot hold, naming why."""
    try:
        orjson.dumps(properties)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ValueError(f"properties: cannot be stored as JSON ({exc})") from None


class Identifiers(
    msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, omit_defaults=True
):
    """Who the event is about. At least one identifier is required."""

    email_hash: EmailHash | None = None
    esp_profile_id: NonEmpty | None = None
    phone: E164 | None = None
    external_ids: dict[NonEmpty, NonEmpty] = {}
    anonymous_id: NonEmpty | None = None

    def __post_init__(self) -> None:
        _reject_trailing_newline(self, ("email_hash", "phone"))
        _require_utf8(self, ("esp_profile_id", "anonymous_id"))
        for key, value in self.external_ids.items():
            if not (key + value).isascii():
                try:
                    (key + value).encode()
                except UnicodeEncodeError:
                    raise ValueError("external_ids: contains a lone UTF-16 surrogate") from None
        if not (
            self.email_hash
            or self.esp_profile_id
            or self.phone
            or self.external_ids
            or self.anonymous_id
        ):
            raise ValueError(
                "at least one of email_hash, esp_profile_id, phone, external_ids, "
                "anonymous_id is required"
            )


class CanonicalEvent(
    msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, omit_defaults=True
):
    """One engagement or commerce event, independent of the ESP it came from.

    `event_id` is derived from (esp, esp_event_id); a supplied value must match it, so a
    replayed event is always the same event.
    """

    tenant: Slug
    esp: EspName
    esp_event_id: NonEmpty
    event_type: EventType
    occurred_at: AwareDatetime
    identifiers: Identifiers
    event_id: str = ""
    campaign_id: NonEmpty | None = None
    flow_id: NonEmpty | None = None
    message_id: NonEmpty | None = None
    is_machine_open: bool = False
    properties: dict[str, Any] = {}
    schema_version: Annotated[int, msgspec.Meta(ge=1, le=SCHEMA_VERSION)] = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _reject_trailing_newline(self, ("tenant", "esp"))
        _require_utf8(self, ("esp_event_id", "campaign_id", "flow_id", "message_id"))
        if self.properties:
            _check_properties(self.properties)
        expected = derive_event_id(self.esp, self.esp_event_id)
        if not self.event_id:
            msgspec.structs.force_setattr(self, "event_id", expected)
        elif self.event_id != expected:
            raise ValueError(
                "event_id: must equal uuid5 of esp and esp_event_id "
                f"({expected}), got {self.event_id!r}"
            )
        at = self.occurred_at
        if at.tzinfo is not UTC:
            at = at.astimezone(UTC)
        if at.microsecond % 1000:
            at = at.replace(microsecond=at.microsecond - at.microsecond % 1000)
        if not MIN_OCCURRED_AT <= at < MAX_OCCURRED_AT:
            raise ValueError(
                f"occurred_at: {at.isoformat()} is outside "
                f"[{MIN_OCCURRED_AT.date()}, {MAX_OCCURRED_AT.date()})"
            )
        if at is not self.occurred_at:
            msgspec.structs.force_setattr(self, "occurred_at", at)
        if self.is_machine_open and self.event_type is not EventType.OPENED:
            raise ValueError("is_machine_open: only an 'opened' event can be a machine open")

    @property
    def occurred_at_ms(self) -> int:
        # Integer arithmetic: float timestamp() * 1000 is sometimes 1 ms short.
        return (self.occurred_at - _UNIX_EPOCH) // _ONE_MS


_UNIX_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


_NS_BYTES: Final = EVENT_ID_NAMESPACE.bytes


def derive_event_id(esp: str, esp_event_id: str) -> str:
    """uuid5(EVENT_ID_NAMESPACE, "esp:esp_event_id"), without uuid.UUID's per-call overhead."""
    h = hashlib.sha1(_NS_BYTES + f"{esp}:{esp_event_id}".encode()).hexdigest()  # noqa: S324 - uuid5 is SHA-1 by definition
    variant = _VARIANT[h[16]]
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


# RFC 4122 variant bits (10xx) applied to the first hex digit of the clock sequence.
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation problem: where it is (a path of keys and indexes) and why."""

    loc: tuple[str | int, ...]
    msg: str

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": "value_error"}


class EventValidationError(ValueError):
    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"{'.'.join(map(str, e.loc)) or '$'}: {e.msg}" for e in errors))


def _field_error(exc: msgspec.ValidationError, prefix: tuple[str | int, ...] = ()) -> FieldError:
    """Turn msgspec's 'reason - at `$.a[0].b`' into a FieldError with a path."""
    text = str(exc)
    reason, sep, where = text.rpartition(" - at `")
    if not sep:
        reason, where = text, ""
    loc: list[str | int] = list(prefix)
    # A bad mapping key is reported as "at `key` in `$.path`".
    key_in, key_sep, where_key = where.partition("key` in `")
    if key_sep and not key_in:
        where, reason = where_key, f"invalid key: {reason}"
    path = where.rstrip("`").removeprefix("$")
    token = ""
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == ".":
            if token:
                loc.append(token)
            token = ""
        elif ch == "[":
            if token:
                loc.append(token)
            token = ""
            end = path.index("]", i)
            inner = path[i + 1 : end]
            loc.append(int(inner) if inner.isdigit() else inner.strip("'\""))
            i = end
        else:
            token += ch
        i += 1
    if token:
        loc.append(token)
    # A __post_init__ message already starting with "field: " names a more precise field.
    head, colon, rest = reason.partition(": ")
    if colon and head.isidentifier() and head not in loc:
        loc.append(head)
        reason = rest
    unknown = _UNKNOWN_FIELD.match(reason)
    if unknown:
        loc.append(unknown.group(1))
        reason = "unknown field (not part of the canonical event schema)"
    missing = _MISSING_FIELD.match(reason)
    if missing:
        loc.append(missing.group(1))
        reason = "field required"
    return FieldError(tuple(loc), reason)


_UNKNOWN_FIELD: Final = re.compile(r"Object contains unknown field `([^`]*)`")
_MISSING_FIELD: Final = re.compile(r"Object missing required field `([^`]*)`")


_decoder = msgspec.json.Decoder(CanonicalEvent)


def parse_event(data: Mapping[str, Any]) -> CanonicalEvent:
    """Validate one event from plain Python data (as decoded from JSON)."""
    try:
        return msgspec.convert(data, CanonicalEvent)
    except msgspec.ValidationError as exc:
        raise EventValidationError([_field_error(exc)]) from None


def parse_event_json(raw: bytes) -> CanonicalEvent:
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise EventValidationError([_field_error(exc)]) from None
    except msgspec.DecodeError as exc:
        raise EventValidationError([FieldError((), f"malformed JSON: {exc}")]) from None


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    events: list[CanonicalEvent]
    # (index in the input, what was wrong) for each rejected item
    rejected: list[tuple[int, EventValidationError]]


def parse_events(items: Iterable[Mapping[str, Any]]) -> ParsedBatch:
    """Validate many events; one bad item never rejects the others."""
    materialised = list(items)
    try:
        return ParsedBatch(msgspec.convert(materialised, list[CanonicalEvent]), [])
    except msgspec.ValidationError:
        pass
    good: list[CanonicalEvent] = []
    bad: list[tuple[int, EventValidationError]] = []
    for i, item in enumerate(materialised):
        try:
            good.append(msgspec.convert(item, CanonicalEvent))
        except msgspec.ValidationError as exc:
            bad.append((i, EventValidationError([_field_error(exc)])))
    return ParsedBatch(good, bad)


def parse_events_json(lines: Sequence[bytes]) -> ParsedBatch:
    """Decode and validate JSON documents, one event each; bad ones are reported by index."""
    good: list[CanonicalEvent] = []
    bad: list[tuple[int, EventValidationError]] = []
    for i, raw in enumerate(lines):
        try:
            good.append(_decoder.decode(raw))
        except msgspec.ValidationError as exc:
            bad.append((i, EventValidationError([_field_error(exc)])))
        except msgspec.DecodeError as exc:
            bad.append((i, EventValidationError([FieldError((), f"malformed JSON: {exc}")])))
    return ParsedBatch(good, bad)


def to_builtins(event: CanonicalEvent) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(event)
    return out


def encode_events(events: Iterable[CanonicalEvent]) -> bytes:
    """JSON Lines, one event a line."""
    enc = msgspec.json.Encoder()
    return b"".join(enc.encode(e) + b"\n" for e in events)


def json_schema() -> dict[str, Any]:
    schema: dict[str, Any] = msgspec.json.schema(CanonicalEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://sendflowr.dev/schemas/canonical_event.v{SCHEMA_VERSION}.json"
    schema["title"] = f"SendFlowr canonical event v{SCHEMA_VERSION}"
    # "At least one identifier" (checked in Identifiers.__post_init__) as JSON Schema.
    schema["$defs"]["Identifiers"]["anyOf"] = [
        {"required": ["email_hash"]},
        {"required": ["esp_profile_id"]},
        {"required": ["phone"]},
        {"required": ["external_ids"], "properties": {"external_ids": {"minProperties": 1}}},
        {"required": ["anonymous_id"]},
    ]
    return schema
