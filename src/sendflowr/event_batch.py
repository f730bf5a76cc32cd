"""Decoding a batch of canonical events from JSON, fast, with exactly `parse_events_json`'s
results (what a bus consumer does with tens of thousands of message values a second).

`parse_events_json` decodes each document into a `CanonicalEvent`, whose `__post_init__`
(and the nested `Identifiers.__post_init__`) run a few Python checks per event: that is more
than half of the decoding time. Here each document is first decoded into subclasses whose
`__post_init__` does nothing (msgspec still checks every type, pattern, bound and unknown
field, as for the real classes), then the post-init checks run once over the whole batch
(joined strings for the character checks, one loop for the rest) and the normalisations
(derived `event_id`, `occurred_at` in UTC to the millisecond) are applied.

Anything the batch checks cannot vouch for (a document msgspec refuses, a line break or a
non-ASCII character where the post-init checks look, an identifier-less event, a bad
`event_id`, an `occurred_at` out of range, a machine open that is not an open, properties
JSON cannot hold) sends the whole batch through `parse_events_json`, which names the
problem of each bad document and keeps the good ones. So the result is always the one
`parse_events_json` gives; tests/unit/test_event_batch.py checks it case by case.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Final

import msgspec
import orjson

from sendflowr.events import (
    MAX_OCCURRED_AT,
    MIN_OCCURRED_AT,
    CanonicalEvent,
    EventType,
    Identifiers,
    ParsedBatch,
    derive_event_id,
    parse_events_json,
)


class _UncheckedIdentifiers(Identifiers, frozen=True, gc=False):
    def __post_init__(self) -> None:  # checked batch-wise in decode_events_json
        return None


class _UncheckedEvent(CanonicalEvent, frozen=True, gc=False):
    identifiers: _UncheckedIdentifiers

    def __post_init__(self) -> None:  # checked batch-wise in decode_events_json
        return None


_decoder: Final = msgspec.json.Decoder(_UncheckedEvent)
_set: Final = msgspec.structs.force_setattr
_OPENED: Final = EventType.OPENED


def decode_events_json(lines: Sequence[bytes]) -> ParsedBatch:
    """Decode and validate JSON documents, one event each: `parse_events_json(lines)`."""
    if not lines:
        return ParsedBatch([], [])
    decode = _decoder.decode
    try:
        events = [decode(line) for line in lines]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return parse_events_json(lines)
    if not _checks_pass(events):
        return parse_events_json(lines)
    good: list[CanonicalEvent] = [*events]
    return ParsedBatch(good, [])


def _checks_pass(events: list[_UncheckedEvent]) -> bool:
    """CanonicalEvent's and Identifiers' __post_init__ over the batch; applies their
    normalisations and returns True, or returns False when any event might fail one.
    Written with map/attrgetter and joined strings, so most of it runs in C."""
    ids = list(map(_identifiers, events))
    # Patterned fields: msgspec's '$' also matches before a final '\n' (the only place one
    # can be); a line break anywhere in them is a candidate for that error.
    patterned = "".join(
        [
            *map(_tenant, events),
            *map(_esp, events),
            *filter(None, map(_email_hash, ids)),
            *filter(None, map(_phone, ids)),
        ]
    )
    if "\n" in patterned:
        return False
    # Lone UTF-16 surrogates: only in a non-ASCII string, and then encoding fails.
    free_text = "".join(
        [
            *map(_esp_event_id, events),
            *filter(None, map(_campaign_id, events)),
            *filter(None, map(_flow_id, events)),
            *filter(None, map(_message_id, events)),
            *filter(None, map(_esp_profile_id, ids)),
            *filter(None, map(_anonymous_id, ids)),
            *(k + v for x in filter(None, map(_external_ids, ids)) for k, v in x.items()),
        ]
    )
    if not free_text.isascii():
        try:
            free_text.encode()
        except UnicodeEncodeError:
            return False
    # At least one identifier each.
    if not all(
        map(
            any,
            zip(
                map(_email_hash, ids),
                map(_esp_profile_id, ids),
                map(_phone, ids),
                map(_external_ids, ids),
                map(_anonymous_id, ids),
                strict=True,
            ),
        )
    ):
        return False
    # Properties JSON can hold (e.g. no integer beyond 64 bits): all of them in one call.
    try:
        orjson.dumps(list(filter(None, map(_properties, events))))
    except (TypeError, orjson.JSONEncodeError):
        return False
    # Only an 'opened' event can be a machine open.
    if any(map(_is_machine_open, events)) and any(
        e.event_type is not _OPENED for e in events if e.is_machine_open
    ):
        return False
    # event_id: uuid5 of esp and esp_event_id; filled in when not given.
    expected = list(map(derive_event_id, map(_esp, events), map(_esp_event_id, events)))
    given = list(map(_event_id, events))
    if given != expected:
        for e, want, have in zip(events, expected, given, strict=True):
            if not have:
                _set(e, "event_id", want)
            elif have != want:
                return False
    # occurred_at: in UTC, to the millisecond, within the bounds the store can hold.
    at: list[datetime] = list(map(_occurred_at, events))
    if set(map(_tzinfo, at)) != {UTC} or any(m % 1000 for m in map(_microsecond, at)):
        for e in events:
            t = e.occurred_at.astimezone(UTC)
            _set(e, "occurred_at", t.replace(microsecond=t.microsecond - t.microsecond % 1000))
        at = list(map(_occurred_at, events))
    return min(at) >= MIN_OCCURRED_AT and max(at) < MAX_OCCURRED_AT


_identifiers: Final = attrgetter("identifiers")
_tenant: Final = attrgetter("tenant")
_esp: Final = attrgetter("esp")
_esp_event_id: Final = attrgetter("esp_event_id")
_event_id: Final = attrgetter("event_id")
_campaign_id: Final = attrgetter("campaign_id")
_flow_id: Final = attrgetter("flow_id")
_message_id: Final = attrgetter("message_id")
_properties: Final = attrgetter("properties")
_is_machine_open: Final = attrgetter("is_machine_open")
_occurred_at: Final = attrgetter("occurred_at")
_email_hash: Final = attrgetter("email_hash")
_esp_profile_id: Final = attrgetter("esp_profile_id")
_phone: Final = attrgetter("phone")
_external_ids: Final = attrgetter("external_ids")
_anonymous_id: Final = attrgetter("anonymous_id")
_tzinfo: Final = attrgetter("tzinfo")
_microsecond: Final = attrgetter("microsecond")
