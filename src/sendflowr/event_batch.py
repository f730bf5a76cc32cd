"""Decoding a batch of canonical events from JSON, fast, with exactly `parse_events_json`'s
results (what a bus consumer does with tens of thousands of message values a second).

`parse_events_json` decodes each document into a `CanonicalEvent`, whose `__post_init__`
(and the nested `Identifiers.__post_init__`) run a few Python checks per event, and msgspec
runs a Python regular expression for each patterned field (tenant, esp, email_hash, phone):
together that is most of the decoding time. Here each document is first decoded into
subclasses whose `__post_init__` does nothing and whose patterned fields only have length
bounds (msgspec still checks every type, bound and unknown field), then the checks run once
over the whole batch, column by column (`event_columns.columns`: one C-level transposition):
the patterns over the distinct tenants, ESPs and phones and over all email hashes joined,
joined strings for the character checks, the event ids derived in bulk (one SHA-1 call an
event, the uuid layout done with numpy) and compared as one string. The normalisations
(derived `event_id`, `occurred_at` in UTC to the millisecond) are applied, and the columns
are kept (`event_columns.remember`) for the Arrow conversion and identity resolution.

Anything the batch checks cannot vouch for (a document msgspec refuses, a value a pattern
refuses, a lone surrogate where the post-init checks look, an identifier-less event, a bad
`event_id`, an `occurred_at` out of range, a machine open that is not an open, properties
JSON cannot hold) sends the whole batch through `parse_events_json`, which names the
problem of each bad document and keeps the good ones. So the result is always the one
`parse_events_json` gives; tests/unit/test_event_batch.py checks it case by case.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Annotated, Final

import msgspec
import numpy as np
import orjson

from sendflowr.event_columns import columns, remember
from sendflowr.events import (
    EVENT_ID_NAMESPACE,
    MAX_OCCURRED_AT,
    MIN_OCCURRED_AT,
    CanonicalEvent,
    EventType,
    Identifiers,
    ParsedBatch,
    parse_events_json,
)


class _UncheckedIdentifiers(Identifiers, frozen=True, gc=False):
    # The patterns are checked batch-wise (msgspec runs a Python regex a value).
    email_hash: Annotated[str, msgspec.Meta(min_length=64, max_length=64)] | None = None
    phone: Annotated[str, msgspec.Meta(min_length=8, max_length=16)] | None = None

    def __post_init__(self) -> None:  # checked batch-wise in decode_events_json
        return None


class _UncheckedEvent(CanonicalEvent, frozen=True, gc=False):
    tenant: Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
    esp: Annotated[str, msgspec.Meta(min_length=2, max_length=32)]
    identifiers: _UncheckedIdentifiers

    def __post_init__(self) -> None:  # checked batch-wise in decode_events_json
        return None


_decoder: Final = msgspec.json.Decoder(_UncheckedEvent)
_set: Final = msgspec.structs.force_setattr
_OPENED: Final = EventType.OPENED
# CanonicalEvent's patterns, anchored at both ends: stricter than msgspec's re.search with '$'
# (which also matches before a final '\n'), so a value one of them refuses may still be one
# msgspec takes; such a batch goes through parse_events_json, which decides.
_SLUG: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ESP_NAME: Final = re.compile(r"[a-z][a-z0-9_]{1,31}")
_E164: Final = re.compile(r"\+[1-9][0-9]{6,14}")
_HEX_DIGITS: Final = b"0123456789abcdef"
_HEX_LUT: Final = np.frombuffer(_HEX_DIGITS, np.uint8)
_NS_BYTES: Final = EVENT_ID_NAMESPACE.bytes


def decode_events_json(lines: Sequence[bytes]) -> ParsedBatch:
    """Decode and validate JSON documents, one event each: `parse_events_json(lines)`."""
    if not lines:
        return ParsedBatch([], [])
    decode = _decoder.decode
    try:
        events = list(map(decode, lines))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return parse_events_json(lines)
    if not _checks_pass(events):
        return parse_events_json(lines)
    good: list[CanonicalEvent] = [*events]
    return ParsedBatch(good, [])


def _checks_pass(events: list[_UncheckedEvent]) -> bool:
    """The field patterns, CanonicalEvent's and Identifiers' __post_init__ over the batch;
    applies their normalisations, remembers the columns and returns True, or returns False
    when any event might fail one. Works on columns, so most of it runs in C."""
    col = dict(columns(events))
    idc = columns(col["identifiers"])
    # Patterns: few distinct tenants and ESPs; email hashes (64 characters, decoded with that
    # length) all at once; phones one by one (rare).
    if not all(map(_SLUG.fullmatch, set(col["tenant"]))):
        return False
    esps = set(col["esp"])
    if not all(map(_ESP_NAME.fullmatch, esps)):
        return False
    hashes = "".join([h for h in idc["email_hash"] if h is not None])
    if not hashes.isascii() or hashes.encode().translate(None, _HEX_DIGITS):
        return False
    if not all(map(_E164.fullmatch, {p for p in idc["phone"] if p is not None})):
        return False
    # Lone UTF-16 surrogates: only in a non-ASCII string, and then encoding fails.
    free_text = "".join(
        [
            *col["esp_event_id"],
            *filter(None, col["campaign_id"]),
            *filter(None, col["flow_id"]),
            *filter(None, col["message_id"]),
            *filter(None, idc["esp_profile_id"]),
            *filter(None, idc["anonymous_id"]),
            *(k + v for x in filter(None, idc["external_ids"]) for k, v in x.items()),
        ]
    )
    if not free_text.isascii():
        try:
            free_text.encode()
        except UnicodeEncodeError:
            return False
    # At least one identifier each.
    if not all(map(any, zip(*idc.values(), strict=True))):
        return False
    # Properties JSON can hold (e.g. no integer beyond 64 bits): all of them in one call.
    try:
        orjson.dumps(list(filter(None, col["properties"])))
    except (TypeError, orjson.JSONEncodeError):
        return False
    # Only an 'opened' event can be a machine open.
    if True in col["is_machine_open"] and any(
        e.event_type is not _OPENED for e in events if e.is_machine_open
    ):
        return False
    # event_id: uuid5 of esp and esp_event_id; filled in when not given.
    expected = _event_ids(esps, col["esp"], col["esp_event_id"])
    given: tuple[str, ...] = col["event_id"]
    joined = "".join(given)
    if len(joined) != len(expected) or not joined.isascii() or joined.encode() != expected:
        wanted = expected.decode()
        for i, (e, have) in enumerate(zip(events, given, strict=True)):
            want = wanted[36 * i : 36 * i + 36]
            if not have:
                _set(e, "event_id", want)
            elif have != want:
                return False
        col["event_id"] = tuple(map(_event_id, events))
    # occurred_at: in UTC, to the millisecond, within the bounds the store can hold.
    at: list[datetime] = list(col["occurred_at"])
    if set(map(_tzinfo, at)) != {UTC} or any(m % 1000 for m in map(_microsecond, at)):
        for e in events:
            t = e.occurred_at.astimezone(UTC)
            _set(e, "occurred_at", t.replace(microsecond=t.microsecond - t.microsecond % 1000))
        at = list(map(_occurred_at, events))
        col["occurred_at"] = tuple(at)
    if min(at) < MIN_OCCURRED_AT or max(at) >= MAX_OCCURRED_AT:
        return False
    # Finished: the Arrow conversion and identity resolution read these columns again.
    remember(events, col)
    remember(col["identifiers"], idc)
    return True


def _event_ids(esps: set[str], esp: Sequence[str], esp_event_id: Sequence[str]) -> bytes:
    """`derive_event_id` of each event, the 36-character ids concatenated: one SHA-1 call
    an event, the uuid layout (version and variant bits, hex, dashes) done with numpy."""
    sha1 = hashlib.sha1
    if len(esps) == 1:
        prefix = _NS_BYTES + f"{next(iter(esps))}:".encode()
        digests = b"".join([sha1(prefix + x.encode()).digest() for x in esp_event_id])
    else:
        digests = b"".join(
            [
                sha1(_NS_BYTES + f"{e}:{x}".encode()).digest()
                for e, x in zip(esp, esp_event_id, strict=True)
            ]
        )
    n = len(esp_event_id)
    d = np.frombuffer(digests, np.uint8).reshape(n, 20)[:, :16].copy()
    d[:, 6] = (d[:, 6] & 0x0F) | 0x50  # version 5
    d[:, 8] = (d[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = np.empty((n, 32), np.uint8)
    hexed[:, 0::2] = _HEX_LUT[d >> 4]
    hexed[:, 1::2] = _HEX_LUT[d & 0x0F]
    out = np.full((n, 36), ord("-"), np.uint8)
    out[:, 0:8] = hexed[:, 0:8]
    out[:, 9:13] = hexed[:, 8:12]
    out[:, 14:18] = hexed[:, 12:16]
    out[:, 19:23] = hexed[:, 16:20]
    out[:, 24:36] = hexed[:, 20:32]
    return out.tobytes()


_occurred_at: Final = attrgetter("occurred_at")
_event_id: Final = attrgetter("event_id")
_tzinfo: Final = attrgetter("tzinfo")
_microsecond: Final = attrgetter("microsecond")
