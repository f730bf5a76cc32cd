"""The canonical event model: validation, field-level errors, deterministic ids, JSON Schema."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sendflowr.cli import app
from sendflowr.events import (
    EVENT_ID_NAMESPACE,
    SCHEMA_VERSION,
    CanonicalEvent,
    EventType,
    EventValidationError,
    FieldError,
    Identifiers,
    derive_event_id,
    encode_events,
    json_schema,
    parse_event,
    parse_event_json,
    parse_events,
)

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "canonical_event.v1.json"
EMAIL_HASH = "0123456789abcdef" * 4
WARSAW = ZoneInfo("Europe/Warsaw")
NEW_YORK = ZoneInfo("America/New_York")


def _payload(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tenant": "acme",
        "esp": "klaviyo",
        "esp_event_id": "evt-1",
        "event_type": "opened",
        "occurred_at": "2024-03-10T12:00:00Z",
        "identifiers": {"email_hash": EMAIL_HASH},
    }
    data.update(overrides)
    return data


def _uuid5(esp: str, esp_event_id: str) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{esp}:{esp_event_id}"))


def _errors(data: dict[str, Any]) -> tuple[FieldError, ...]:
    with pytest.raises(EventValidationError) as info:
        parse_event(data)
    return info.value.errors


# --- valid events -------------------------------------------------------------------------


def test_minimal_event_gets_defaults_and_derived_id() -> None:
    event = parse_event(_payload())
    assert event.tenant == "acme"
    assert event.esp == "klaviyo"
    assert event.event_type is EventType.OPENED
    assert event.occurred_at == datetime(2024, 3, 10, 12, tzinfo=UTC)
    assert event.occurred_at.tzinfo is UTC
    assert event.identifiers == Identifiers(email_hash=EMAIL_HASH)
    assert event.event_id == _uuid5("klaviyo", "evt-1")
    assert event.campaign_id is None
    assert event.flow_id is None
    assert event.message_id is None
    assert event.is_machine_open is False
    assert event.properties == {}
    assert event.schema_version == SCHEMA_VERSION == 1


def test_full_event_keeps_every_field() -> None:
    data = _payload(
        event_id=_uuid5("klaviyo", "evt-1"),
        campaign_id="camp-9",
        flow_id="welcome",
        message_id="msg-3",
        is_machine_open=True,
        properties={"subject": "Hi", "nested": {"list": [1, 2.5, None, True]}},
        schema_version=1,
        identifiers={
            "email_hash": EMAIL_HASH,
            "esp_profile_id": "prof-1",
            "phone": "+48123456789",
            "external_ids": {"crm": "c-1", "shop": "s-2"},
            "anonymous_id": "anon-1",
        },
    )
    event = parse_event(data)
    assert event.event_id == _uuid5("klaviyo", "evt-1")
    assert event.campaign_id == "camp-9"
    assert event.flow_id == "welcome"
    assert event.message_id == "msg-3"
    assert event.is_machine_open is True
    assert event.properties == {"subject": "Hi", "nested": {"list": [1, 2.5, None, True]}}
    assert event.identifiers.esp_profile_id == "prof-1"
    assert event.identifiers.phone == "+48123456789"
    assert event.identifiers.external_ids == {"crm": "c-1", "shop": "s-2"}
    assert event.identifiers.anonymous_id == "anon-1"


@pytest.mark.parametrize(
    ("occurred_at", "expected_utc"),
    [
        ("2024-03-10T12:00:00+05:45", datetime(2024, 3, 10, 6, 15, tzinfo=UTC)),
        ("2024-03-10T12:00:00-03:30", datetime(2024, 3, 10, 15, 30, tzinfo=UTC)),
        ("2024-12-31T22:00:00-03:30", datetime(2025, 1, 1, 1, 30, tzinfo=UTC)),
        ("2024-01-01T03:00:00+05:45", datetime(2023, 12, 31, 21, 15, tzinfo=UTC)),
        ("2024-03-10T12:00:00+00:00", datetime(2024, 3, 10, 12, tzinfo=UTC)),
        (
            datetime(2024, 3, 10, 12, tzinfo=timezone(timedelta(hours=5, minutes=45))),
            datetime(2024, 3, 10, 6, 15, tzinfo=UTC),
        ),
    ],
    ids=["+05:45", "-03:30", "-03:30-new-year", "+05:45-previous-day", "+00:00", "aware-dt"],
)
def test_offsets_are_stored_as_the_utc_instant(
    occurred_at: str | datetime, expected_utc: datetime
) -> None:
    event = parse_event(_payload(occurred_at=occurred_at))
    assert event.occurred_at == expected_utc
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("occurred_at", "expected_utc"),
    [
        # Europe/Warsaw, spring forward 2024-03-31 02:00 CET -> 03:00 CEST.
        (datetime(2024, 3, 31, 1, 59, 59, tzinfo=WARSAW), datetime(2024, 3, 31, 0, 59, 59)),
        (datetime(2024, 3, 31, 3, 0, tzinfo=WARSAW), datetime(2024, 3, 31, 1, 0)),
        # Fall back 2024-10-27 03:00 CEST -> 02:00 CET: 02:30 happens twice.
        (datetime(2024, 10, 27, 2, 30, tzinfo=WARSAW), datetime(2024, 10, 27, 0, 30)),
        (datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=WARSAW), datetime(2024, 10, 27, 1, 30)),
        ("2024-10-27T02:30:00+02:00", datetime(2024, 10, 27, 0, 30)),
        ("2024-10-27T02:30:00+01:00", datetime(2024, 10, 27, 1, 30)),
        # America/New_York, spring forward 2024-03-10 02:00 EST -> 03:00 EDT.
        (datetime(2024, 3, 10, 1, 59, tzinfo=NEW_YORK), datetime(2024, 3, 10, 6, 59)),
        (datetime(2024, 3, 10, 3, 0, tzinfo=NEW_YORK), datetime(2024, 3, 10, 7, 0)),
        # Fall back 2024-11-03 02:00 EDT -> 01:00 EST: 01:30 happens twice.
        (datetime(2024, 11, 3, 1, 30, tzinfo=NEW_YORK), datetime(2024, 11, 3, 5, 30)),
        (datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=NEW_YORK), datetime(2024, 11, 3, 6, 30)),
        ("2024-11-03T01:30:00-04:00", datetime(2024, 11, 3, 5, 30)),
        ("2024-11-03T01:30:00-05:00", datetime(2024, 11, 3, 6, 30)),
    ],
    ids=[
        "warsaw-before-gap",
        "warsaw-after-gap",
        "warsaw-ambiguous-first",
        "warsaw-ambiguous-second",
        "warsaw-iso-cest",
        "warsaw-iso-cet",
        "ny-before-gap",
        "ny-after-gap",
        "ny-ambiguous-first",
        "ny-ambiguous-second",
        "ny-iso-edt",
        "ny-iso-est",
    ],
)
def test_dst_edges_store_the_right_instant(
    occurred_at: str | datetime, expected_utc: datetime
) -> None:
    event = parse_event(_payload(occurred_at=occurred_at))
    assert event.occurred_at == expected_utc.replace(tzinfo=UTC)
    assert event.occurred_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("occurred_at", "expected_ms"),
    [
        ("2024-03-10T12:00:00.123999Z", 123),
        ("2024-03-10T12:00:00.000999Z", 0),
        ("2024-03-10T12:00:00.999999+05:45", 999),
        (datetime(2024, 3, 10, 12, 0, 0, 456789, tzinfo=WARSAW), 456),
    ],
)
def test_microseconds_are_truncated_to_milliseconds(
    occurred_at: str | datetime, expected_ms: int
) -> None:
    event = parse_event(_payload(occurred_at=occurred_at))
    assert event.occurred_at.microsecond == expected_ms * 1000
    assert event.occurred_at_ms % 1000 == expected_ms


@pytest.mark.parametrize(
    ("occurred_at", "expected_ms"),
    [
        ("2000-01-01T00:00:00Z", 946_684_800_000),
        # float timestamp() * 1000 gives ...323 for these two
        ("2004-06-08T16:26:48.324Z", 1_086_712_008_324),
        ("2004-01-20T20:47:11.468Z", 1_074_631_631_468),
        ("2099-12-31T23:59:59.999Z", 4_102_444_799_999),
    ],
)
def test_occurred_at_ms_is_exact(occurred_at: str, expected_ms: int) -> None:
    assert parse_event(_payload(occurred_at=occurred_at)).occurred_at_ms == expected_ms


@pytest.mark.parametrize(
    "occurred_at",
    [
        "2000-01-01T00:00:00Z",
        "1999-12-31T23:30:00-01:00",
        "2099-12-31T23:59:59.999Z",
        "2100-01-01T00:30:00+01:00",
    ],
)
def test_occurred_at_bounds_apply_to_the_utc_instant(occurred_at: str) -> None:
    event = parse_event(_payload(occurred_at=occurred_at))
    assert datetime(2000, 1, 1, tzinfo=UTC) <= event.occurred_at < datetime(2100, 1, 1, tzinfo=UTC)


# --- event ids ------------------------------------------------------------------------------


def test_event_id_is_deterministic_uuid5() -> None:
    first = parse_event(_payload())
    again = parse_event(_payload(occurred_at="2025-01-01T00:00:00Z", event_type="clicked"))
    assert first.event_id == again.event_id == _uuid5("klaviyo", "evt-1")
    other_esp = parse_event(_payload(esp="mailchimp"))
    other_id = parse_event(_payload(esp_event_id="evt-2"))
    assert len({first.event_id, other_esp.event_id, other_id.event_id}) == 3


@given(
    esp=st.from_regex(r"\A[a-z][a-z0-9_]{1,31}\Z"),
    esp_event_id=st.text(min_size=1, max_size=256),
)
@settings(max_examples=100, database=None, deadline=None)
def test_derive_event_id_equals_uuid5(esp: str, esp_event_id: str) -> None:
    derived = derive_event_id(esp, esp_event_id)
    assert derived == _uuid5(esp, esp_event_id)
    assert uuid.UUID(derived).version == 5


def test_mismatching_event_id_is_rejected_naming_event_id() -> None:
    wrong = _uuid5("klaviyo", "evt-2")
    errors = _errors(_payload(event_id=wrong))
    assert [e.loc for e in errors] == [("event_id",)]
    assert _uuid5("klaviyo", "evt-1") in errors[0].msg
    assert wrong in errors[0].msg


def test_direct_construction_derives_the_id_and_normalises_time() -> None:
    event = CanonicalEvent(
        tenant="acme",
        esp="klaviyo",
        esp_event_id="evt-1",
        event_type=EventType.CLICKED,
        occurred_at=datetime(2024, 1, 1, 1, 0, 0, 1999, tzinfo=WARSAW),
        identifiers=Identifiers(phone="+48123456789"),
    )
    assert event.event_id == _uuid5("klaviyo", "evt-1")
    assert event.occurred_at == datetime(2024, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)


# --- invalid events: each names its field ---------------------------------------------------

_REMOVE = object()

INVALID_CASES: list[tuple[str, dict[str, Any], tuple[str | int, ...]]] = [
    ("tenant-upper-case", {"tenant": "Acme"}, ("tenant",)),
    ("tenant-leading-dash", {"tenant": "-acme"}, ("tenant",)),
    ("tenant-too-long", {"tenant": "a" * 64}, ("tenant",)),
    ("tenant-empty", {"tenant": ""}, ("tenant",)),
    ("tenant-trailing-newline", {"tenant": "acme\n"}, ("tenant",)),
    ("tenant-int", {"tenant": 5}, ("tenant",)),
    ("tenant-missing", {"tenant": _REMOVE}, ("tenant",)),
    ("esp-upper-case", {"esp": "Klaviyo"}, ("esp",)),
    ("esp-one-char", {"esp": "k"}, ("esp",)),
    ("esp-leading-digit", {"esp": "1esp"}, ("esp",)),
    ("esp-dash", {"esp": "my-esp"}, ("esp",)),
    ("esp-trailing-newline", {"esp": "klaviyo\n"}, ("esp",)),
    ("esp-event-id-empty", {"esp_event_id": ""}, ("esp_event_id",)),
    ("esp-event-id-too-long", {"esp_event_id": "x" * 257}, ("esp_event_id",)),
    ("esp-event-id-int", {"esp_event_id": 7}, ("esp_event_id",)),
    ("event-type-unknown", {"event_type": "viewed"}, ("event_type",)),
    ("event-type-upper-case", {"event_type": "OPENED"}, ("event_type",)),
    ("naive-iso", {"occurred_at": "2024-03-10T12:00:00"}, ("occurred_at",)),
    ("naive-datetime", {"occurred_at": datetime(2024, 3, 10, 12)}, ("occurred_at",)),
    ("not-a-date", {"occurred_at": "yesterday"}, ("occurred_at",)),
    ("before-2000", {"occurred_at": "1999-12-31T23:59:59.999Z"}, ("occurred_at",)),
    ("before-2000-by-offset", {"occurred_at": "2000-01-01T00:30:00+01:00"}, ("occurred_at",)),
    ("at-2100", {"occurred_at": "2100-01-01T00:00:00Z"}, ("occurred_at",)),
    ("after-2100-by-offset", {"occurred_at": "2099-12-31T23:30:00-01:00"}, ("occurred_at",)),
    ("identifiers-empty", {"identifiers": {}}, ("identifiers",)),
    ("identifiers-all-null", {"identifiers": {"email_hash": None}}, ("identifiers",)),
    ("identifiers-empty-external", {"identifiers": {"external_ids": {}}}, ("identifiers",)),
    ("identifiers-list", {"identifiers": [EMAIL_HASH]}, ("identifiers",)),
    (
        "esp-profile-id-empty",
        {"identifiers": {"esp_profile_id": ""}},
        ("identifiers", "esp_profile_id"),
    ),
    (
        "email-hash-upper-case",
        {"identifiers": {"email_hash": EMAIL_HASH.upper()}},
        ("identifiers", "email_hash"),
    ),
    (
        "email-hash-short",
        {"identifiers": {"email_hash": EMAIL_HASH[:-1]}},
        ("identifiers", "email_hash"),
    ),
    (
        "email-hash-raw-address",
        {"identifiers": {"email_hash": "alice@example.com"}},
        ("identifiers", "email_hash"),
    ),
    (
        "email-hash-trailing-newline",
        {"identifiers": {"email_hash": EMAIL_HASH + "\n"}},
        ("identifiers", "email_hash"),
    ),
    ("phone-no-plus", {"identifiers": {"phone": "48123456789"}}, ("identifiers", "phone")),
    ("phone-leading-zero", {"identifiers": {"phone": "+0123456789"}}, ("identifiers", "phone")),
    ("phone-spaces", {"identifiers": {"phone": "+48 123 456 789"}}, ("identifiers", "phone")),
    ("phone-too-short", {"identifiers": {"phone": "+123456"}}, ("identifiers", "phone")),
    ("phone-too-long", {"identifiers": {"phone": "+1234567890123456"}}, ("identifiers", "phone")),
    (
        "phone-trailing-newline",
        {"identifiers": {"phone": "+48123456789\n"}},
        ("identifiers", "phone"),
    ),
    (
        "external-ids-empty-key",
        {"identifiers": {"external_ids": {"": "c-1"}}},
        ("identifiers", "external_ids"),
    ),
    ("unknown-top-level-field", {"campaign": "c-1"}, ("campaign",)),
    (
        "unknown-nested-field",
        {"identifiers": {"email_hash": EMAIL_HASH, "email": "a@b.co"}},
        ("identifiers", "email"),
    ),
    (
        "machine-open-on-click",
        {"event_type": "clicked", "is_machine_open": True},
        ("is_machine_open",),
    ),
    ("machine-open-string", {"is_machine_open": "yes"}, ("is_machine_open",)),
    ("schema-version-future", {"schema_version": 2}, ("schema_version",)),
    ("schema-version-zero", {"schema_version": 0}, ("schema_version",)),
    ("properties-list", {"properties": [1, 2]}, ("properties",)),
    ("campaign-id-empty", {"campaign_id": ""}, ("campaign_id",)),
]


@pytest.mark.parametrize(
    ("overrides", "expected_loc"),
    [pytest.param(o, loc, id=name) for name, o, loc in INVALID_CASES],
)
def test_invalid_event_names_the_field(
    overrides: dict[str, Any], expected_loc: tuple[str | int, ...]
) -> None:
    data = _payload(**overrides)
    for key in [k for k, v in overrides.items() if v is _REMOVE]:
        del data[key]
    errors = _errors(data)
    assert [e.loc for e in errors] == [expected_loc]
    assert errors[0].msg
    assert errors[0].as_dict() == {
        "loc": list(expected_loc),
        "msg": errors[0].msg,
        "type": "value_error",
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tenant": 5}, "Expected `str`, got `int`"),
        ({"tenant": _REMOVE}, "field required"),
        ({"event_type": "viewed"}, "Invalid enum value 'viewed'"),
        ({"occurred_at": "2024-03-10T12:00:00"}, "timezone"),
        ({"occurred_at": "1999-12-31T23:59:59Z"}, "outside [2000-01-01, 2100-01-01)"),
        ({"identifiers": {}}, "at least one of email_hash"),
        ({"campaign": "c-1"}, "unknown field"),
        ({"event_type": "clicked", "is_machine_open": True}, "only an 'opened' event"),
        ({"identifiers": {"external_ids": {"": "c-1"}}}, "invalid key"),
    ],
)
def test_invalid_event_message_says_why(overrides: dict[str, Any], message: str) -> None:
    data = _payload(**overrides)
    for key in [k for k, v in overrides.items() if v is _REMOVE]:
        del data[key]
    (error,) = _errors(data)
    assert message in error.msg


def test_error_string_joins_path_and_reason() -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event(_payload(identifiers={"phone": "123"}))
    assert str(info.value).startswith("identifiers.phone: Expected `str` matching regex")
    assert isinstance(info.value, ValueError)


# --- batches and JSON -----------------------------------------------------------------------


def test_parse_events_keeps_good_items_and_reports_bad_indexes() -> None:
    items = [
        _payload(esp_event_id="a"),
        _payload(esp_event_id="b", tenant="Bad Tenant"),
        _payload(esp_event_id="c"),
        _payload(esp_event_id="d", identifiers={"email_hash": EMAIL_HASH, "bogus": 1}),
        _payload(esp_event_id="e", occurred_at="1990-01-01T00:00:00Z"),
        _payload(esp_event_id="f"),
    ]
    batch = parse_events(iter(items))
    assert [e.esp_event_id for e in batch.events] == ["a", "c", "f"]
    assert [i for i, _ in batch.rejected] == [1, 3, 4]
    assert [err.errors[0].loc for _, err in batch.rejected] == [
        ("tenant",),
        ("identifiers", "bogus"),
        ("occurred_at",),
    ]


def test_parse_events_all_good_and_empty() -> None:
    batch = parse_events([_payload(esp_event_id=str(i)) for i in range(5)])
    assert [e.esp_event_id for e in batch.events] == ["0", "1", "2", "3", "4"]
    assert batch.rejected == []
    empty = parse_events([])
    assert empty.events == []
    assert empty.rejected == []


def test_parse_events_all_bad() -> None:
    batch = parse_events([_payload(esp="X"), _payload(event_type="nope")])
    assert batch.events == []
    assert [(i, err.errors[0].loc) for i, err in batch.rejected] == [
        (0, ("esp",)),
        (1, ("event_type",)),
    ]


@pytest.mark.parametrize("raw", [b"{", b"", b"not json", b'{"tenant": "acme",}', b"\xff\xfe"])
def test_parse_event_json_malformed(raw: bytes) -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event_json(raw)
    (error,) = info.value.errors
    assert error.loc == ()
    assert error.msg.startswith("malformed JSON: ")


def test_parse_event_json_wrong_shape_is_not_malformed() -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event_json(b"[]")
    (error,) = info.value.errors
    assert error.loc == ()
    assert "malformed" not in error.msg
    assert "Expected `object`, got `array`" in error.msg


def test_parse_event_json_names_the_field() -> None:
    raw = json.dumps(_payload(tenant=5)).encode()
    with pytest.raises(EventValidationError) as info:
        parse_event_json(raw)
    assert [e.loc for e in info.value.errors] == [("tenant",)]


def test_parse_event_json_matches_parse_event() -> None:
    data = _payload(occurred_at="2024-10-27T02:30:00+01:00", campaign_id="c")
    assert parse_event_json(json.dumps(data).encode()) == parse_event(data)


def test_encode_events_is_json_lines() -> None:
    events = [parse_event(_payload(esp_event_id=str(i))) for i in range(3)]
    raw = encode_events(events)
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    assert [parse_event_json(line) for line in lines[:-1]] == events
    first = json.loads(lines[0])
    assert first["occurred_at"] == "2024-03-10T12:00:00Z"
    assert first["event_id"] == _uuid5("klaviyo", "0")
    assert "is_machine_open" not in first  # defaults are omitted
    assert encode_events([]) == b""


# --- property: any valid event survives JSON ------------------------------------------------

_TIMEZONES = st.sampled_from(
    [
        UTC,
        WARSAW,
        NEW_YORK,
        ZoneInfo("Asia/Kathmandu"),
        timezone(timedelta(hours=-3, minutes=-30)),
    ]
)
_INSTANTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59, 999_999)
).map(lambda d: d.replace(tzinfo=UTC))
_NON_EMPTY = st.text(min_size=1, max_size=30)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_IDENTIFIERS = st.fixed_dictionaries(
    {},
    optional={
        "email_hash": st.from_regex(r"\A[0-9a-f]{64}\Z"),
        "esp_profile_id": _NON_EMPTY,
        "phone": st.from_regex(r"\A\+[1-9][0-9]{6,14}\Z"),
        "external_ids": st.dictionaries(_NON_EMPTY, _NON_EMPTY, max_size=3),
        "anonymous_id": _NON_EMPTY,
    },
).filter(lambda ids: any(ids.values()))


@st.composite
def _valid_payloads(draw: st.DrawFn) -> tuple[dict[str, Any], datetime]:
    instant = draw(_INSTANTS)
    local = instant.astimezone(draw(_TIMEZONES))
    event_type = draw(st.sampled_from(list(EventType)))
    esp = draw(st.from_regex(r"\A[a-z][a-z0-9_]{1,31}\Z"))
    esp_event_id = draw(st.text(min_size=1, max_size=64))
    data: dict[str, Any] = {
        "tenant": draw(st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z")),
        "esp": esp,
        "esp_event_id": esp_event_id,
        "event_type": event_type.value,
        "occurred_at": draw(st.sampled_from([local, local.isoformat()])),
        "identifiers": draw(_IDENTIFIERS),
    }
    optional = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "event_id": st.just(_uuid5(esp, esp_event_id)),
                "campaign_id": _NON_EMPTY,
                "flow_id": _NON_EMPTY,
                "message_id": _NON_EMPTY,
                "is_machine_open": st.booleans(),
                "properties": st.dictionaries(st.text(max_size=8), _JSON, max_size=4),
                "schema_version": st.just(1),
            },
        )
    )
    if event_type is not EventType.OPENED:
        optional.pop("is_machine_open", None)
    data.update(optional)
    return data, instant


@given(_valid_payloads())
@settings(max_examples=100, database=None, deadline=None)
def test_any_valid_event_survives_json(case: tuple[dict[str, Any], datetime]) -> None:
    data, instant = case
    event = parse_event(data)
    assert event.occurred_at == instant.replace(microsecond=instant.microsecond // 1000 * 1000)
    assert event.event_id == _uuid5(data["esp"], data["esp_event_id"])

    raw = encode_events([event])
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == 1
    decoded = parse_event_json(raw)
    assert decoded == event
    assert decoded.occurred_at_ms == event.occurred_at_ms

    replayed = parse_event(data)
    assert replayed.event_id == event.event_id
    assert replayed == event


# --- the published JSON Schema --------------------------------------------------------------


def test_committed_schema_file_equals_json_schema() -> None:
    text = SCHEMA_FILE.read_text()
    assert json.loads(text) == json_schema()
    assert text == json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def test_schema_command_prints_the_committed_file() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    assert result.stdout == SCHEMA_FILE.read_text()


def test_schema_command_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    result = CliRunner().invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == SCHEMA_FILE.read_text()


def test_schema_structure() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"canonical_event.v{SCHEMA_VERSION}.json")
    assert schema["$ref"] == "#/$defs/CanonicalEvent"
    defs = schema["$defs"]
    event = defs["CanonicalEvent"]
    assert event["required"] == [
        "tenant",
        "esp",
        "esp_event_id",
        "event_type",
        "occurred_at",
        "identifiers",
    ]
    assert event["additionalProperties"] is False
    assert set(event["properties"]) == set(CanonicalEvent.__struct_fields__)
    assert event["properties"]["event_type"] == {"$ref": "#/$defs/EventType"}
    assert event["properties"]["identifiers"] == {"$ref": "#/$defs/Identifiers"}
    assert event["properties"]["occurred_at"] == {"format": "date-time", "type": "string"}
    assert event["properties"]["schema_version"]["maximum"] == SCHEMA_VERSION
    assert defs["EventType"]["enum"] == sorted(t.value for t in EventType)
    ids = defs["Identifiers"]
    assert ids["additionalProperties"] is False
    assert set(ids["properties"]) == set(Identifiers.__struct_fields__)


@pytest.mark.parametrize(
    ("path", "good", "bad"),
    [
        (("CanonicalEvent", "tenant"), "acme_shop-2", "Acme"),
        (("CanonicalEvent", "esp"), "klaviyo", "k"),
        (("Identifiers", "email_hash"), EMAIL_HASH, EMAIL_HASH.upper()),
        (("Identifiers", "phone"), "+48123456789", "48123456789"),
    ],
)
def test_schema_patterns_agree_with_the_model(path: tuple[str, str], good: str, bad: str) -> None:
    definition, field = path
    prop = json_schema()["$defs"][definition]["properties"][field]
    pattern = prop.get("pattern") or next(p["pattern"] for p in prop["anyOf"] if "pattern" in p)
    assert re.search(pattern, good)
    assert not re.search(pattern, bad)
