"""decode_events_json (the bus consumer's batch decoder) gives exactly parse_events_json's
result: the same events (normalised the same way) and the same rejections, for good batches
and for every check CanonicalEvent's and Identifiers' __post_init__ make."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson
import pytest

from sendflowr.event_batch import decode_events_json
from sendflowr.events import CanonicalEvent, ParsedBatch, derive_event_id, parse_events_json
from tests.factories import email_hash, payload

_enc = msgspec.json.Encoder()


def _same(lines: list[bytes]) -> ParsedBatch:
    fast, strict = decode_events_json(lines), parse_events_json(lines)
    assert [_enc.encode(e) for e in fast.events] == [_enc.encode(e) for e in strict.events]
    assert [(e.event_id, e.occurred_at, e.occurred_at.tzinfo) for e in fast.events] == [
        (e.event_id, e.occurred_at, e.occurred_at.tzinfo) for e in strict.events
    ]
    assert all(isinstance(e, CanonicalEvent) for e in fast.events)
    assert [(i, str(err)) for i, err in fast.rejected] == [
        (i, str(err)) for i, err in strict.rejected
    ]
    return fast


def _lines(*bodies: dict[str, Any] | bytes) -> list[bytes]:
    # json (not orjson): it writes a lone surrogate as its \\u escape, as a sender could.
    return [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]


def test_a_good_batch_is_decoded_and_normalised() -> None:
    bodies = [payload(i) for i in range(50)]
    bodies[3] = payload(3, occurred_at="2026-03-02T10:00:00.123456+02:00")  # to UTC, to the ms
    bodies[4] = payload(4, event_id=derive_event_id("klaviyo", "evt-4"))
    bodies[5] = payload(5, identifiers={"external_ids": {"shop": "Łukasz-7"}})  # non-ASCII ok
    bodies[6] = payload(6, properties={"n": 1, "s": "x"}, campaign_id="c1", flow_id="f")
    bodies[7] = payload(7, is_machine_open=True)
    out = _same(_lines(*bodies))
    assert len(out.events) == 50
    assert not out.rejected
    assert out.events[3].occurred_at.microsecond == 123000
    assert out.events[0].event_id == derive_event_id("klaviyo", "evt-0")


# Digits that are not [0-9] (which, in the patterns, means ASCII digits only).
_ARABIC_INDIC_DIGITS = "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"

BAD: list[tuple[str, dict[str, Any] | bytes]] = [
    ("not json", b"\xff\xfe not json"),
    ("two documents", b'{"a": 1} {"b": 2}'),
    ("empty", b""),
    ("unknown field", payload(1, nonsense=True)),
    ("bad type", payload(1, event_type="teleported")),
    ("tenant newline", payload(1, tenant="acme\n")),
    ("esp newline", payload(1, esp="klaviyo\n")),
    ("hash newline", payload(1, identifiers={"email_hash": email_hash(1) + "\n"})),
    ("phone newline", payload(1, identifiers={"phone": "+48123456789\n"})),
    ("surrogate id", payload(1, esp_event_id="a\ud800b")),
    ("surrogate profile", payload(1, identifiers={"esp_profile_id": "\udc00"})),
    ("surrogate external", payload(1, identifiers={"external_ids": {"x": "\ud800"}})),
    ("surrogate campaign", payload(1, campaign_id="\ud800")),
    ("no identifier", payload(1, identifiers={})),
    ("empty external", payload(1, identifiers={"external_ids": {}})),
    ("wrong event_id", payload(1, event_id=derive_event_id("klaviyo", "other"))),
    ("too early", payload(1, occurred_at="1999-12-31T23:59:59Z")),
    ("too late", payload(1, occurred_at="2100-01-01T00:00:00Z")),
    ("late by offset", payload(1, occurred_at="2099-12-31T23:30:00-01:00")),
    ("naive time", payload(1, occurred_at="2026-03-02T10:00:00")),
    ("machine click", payload(1, event_type="clicked", is_machine_open=True)),
    # The patterns, checked batch-wise on the fast path.
    ("tenant upper case", payload(1, tenant="Acme")),
    ("tenant too long", payload(1, tenant="a" * 64)),
    ("tenant leading dash", payload(1, tenant="-acme")),
    ("esp digit first", payload(1, esp="1klaviyo")),
    ("esp one letter", payload(1, esp="k")),
    ("esp dash", payload(1, esp="kla-viyo")),
    ("hash upper case", payload(1, identifiers={"email_hash": email_hash(1).upper()})),
    ("hash short", payload(1, identifiers={"email_hash": email_hash(1)[:63]})),
    ("hash long", payload(1, identifiers={"email_hash": email_hash(1) + "a"})),
    ("hash empty", payload(1, identifiers={"email_hash": ""})),
    ("hash not hex", payload(1, identifiers={"email_hash": "g" * 64})),
    ("hash non-ASCII", payload(1, identifiers={"email_hash": "é" + email_hash(1)[1:]})),
    ("hash digit", payload(1, identifiers={"email_hash": "\u0663" + email_hash(1)[1:]})),
    ("phone no plus", payload(1, identifiers={"phone": "48123456789"})),
    ("phone leading zero", payload(1, identifiers={"phone": "+0123456789"})),
    ("phone too short", payload(1, identifiers={"phone": "+12345"})),
    ("phone too long", payload(1, identifiers={"phone": "+1234567890123456"})),
    ("phone letters", payload(1, identifiers={"phone": "+4812345678x"})),
    ("phone other digits", payload(1, identifiers={"phone": "+48" + _ARABIC_INDIC_DIGITS})),
]


@pytest.mark.parametrize(("case", "bad"), BAD, ids=[c for c, _ in BAD])
def test_a_bad_document_is_rejected_alone_as_parse_events_json_does(
    case: str, bad: dict[str, Any] | bytes
) -> None:
    bodies: list[dict[str, Any] | bytes] = [payload(i) for i in range(10)]
    bodies[4] = bad
    out = _same(_lines(*bodies))
    assert len(out.events) == 9, case
    assert [i for i, _ in out.rejected] == [4], case


def test_big_integers_in_properties_are_rejected_alone() -> None:
    body = orjson.dumps(payload(2))[:-1] + b',"properties":{"n":123456789012345678901234567890}}'
    out = _same([orjson.dumps(payload(1)), body, orjson.dumps(payload(3))])
    assert [i for i, _ in out.rejected] == [1]


def test_an_empty_batch() -> None:
    assert _same([]) == ParsedBatch([], [])


def test_patterned_values_on_the_edge_are_accepted() -> None:
    bodies = [payload(i) for i in range(6)]
    bodies[0] = payload(0, tenant="a")
    bodies[1] = payload(1, tenant="a" * 63, esp="k" + "z" * 31)
    bodies[2] = payload(2, tenant="0-a_b", esp="m2", identifiers={"phone": "+1234567"})
    bodies[3] = payload(3, identifiers={"phone": "+123456789012345", "email_hash": "0" * 64})
    bodies[4] = payload(4, identifiers={"email_hash": "abcdef0123456789" * 4})
    out = _same(_lines(*bodies))
    assert len(out.events) == 6
    assert not out.rejected


def test_several_esps_in_one_batch_get_their_own_event_ids() -> None:
    bodies = [payload(i, esp="klaviyo" if i % 2 else "mailchimp") for i in range(8)]
    bodies[3] = payload(3, esp="sendgrid", event_id=derive_event_id("sendgrid", "evt-3"))
    out = _same(_lines(*bodies))
    assert [e.event_id for e in out.events] == [
        derive_event_id(b["esp"], b["esp_event_id"]) for b in bodies
    ]
    wrong = [*bodies]
    wrong[5] = payload(5, esp="mailchimp", event_id=derive_event_id("klaviyo", "evt-5"))
    assert [i for i, _ in _same(_lines(*wrong)).rejected] == [5]
