"""Klaviyo events -> canonical events, on payloads built from the spec's schema examples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendflowr.connectors.klaviyo.constants import METRIC_ALIASES, METRIC_EVENT_TYPES
from sendflowr.connectors.klaviyo.normalize import (
    EXTERNAL_ID_NAMESPACE,
    MACHINE_OPEN_FLAGS,
    IdentifierCache,
    NormalizationError,
    UnknownMetricError,
    event_type_for,
    normalize_event,
    normalize_page,
    normalize_webhook_item,
)
from sendflowr.events import CanonicalEvent, EventType
from sendflowr.identity.hashing import hash_email
from tests.klaviyo.spec_validate import event_resource, metric_resource, profile_resource

KEY = b"test-hash-key-0123456789abcdef"
TENANT = "acme"
SPEC_EMAIL = "sarah.mason@klaviyo-demo.com"  # the spec's profile example
SPEC_PROFILE_ID = "01GDDKASAP8TKDDA2GRZDSVP4H"


def norm(resource: Any, metric: str = "Opened Email", profile: Any = None) -> Any:
    return normalize_event(
        resource, metric_name=metric, profile=profile, tenant=TENANT, hash_key=KEY
    )


ALL_METRICS = {**METRIC_EVENT_TYPES, **METRIC_ALIASES}


@pytest.mark.parametrize(("metric", "event_type"), sorted(ALL_METRICS.items()))
def test_each_metric_becomes_its_event_type(metric: str, event_type: EventType) -> None:
    resource = event_resource("4vRpBT", properties={"$message": "01J0MSG", "Subject": "Hi"})
    event = norm(resource, metric, profile_resource())
    assert event.event_type is event_type
    assert (event.esp, event.esp_event_id, event.tenant) == ("klaviyo", "4vRpBT", TENANT)
    assert event.occurred_at == datetime(2022, 11, 8, 1, 23, 45, tzinfo=UTC)  # spec example
    ids = event.identifiers
    assert ids.email_hash == hash_email(KEY, SPEC_EMAIL)
    assert ids.esp_profile_id == SPEC_PROFILE_ID
    assert ids.phone == "+15005550006"
    assert event.message_id == event.campaign_id == "01J0MSG"
    assert event.flow_id is None
    assert event.properties == {"$message": "01J0MSG", "Subject": "Hi", "$metric": metric}
    assert not event.is_machine_open
    assert SPEC_EMAIL not in msgspec.json.encode(event).decode()  # never stored in clear


def test_unknown_metric_is_an_error() -> None:
    with pytest.raises(UnknownMetricError) as info:
        norm(event_resource("e1"), "Viewed Hologram", profile_resource())
    assert info.value.loc == ("relationships", "metric")
    assert "Viewed Hologram" in info.value.msg
    assert info.value.metric == "Viewed Hologram"
    # through a webhook it keeps its class (callers skip unmapped topics) under its path
    item = webhook_item()
    item["payload"]["included"][1]["attributes"]["name"] = "Viewed Hologram"
    with pytest.raises(UnknownMetricError) as hook_info:
        normalize_webhook_item(item, tenant=TENANT, hash_key=KEY)
    assert hook_info.value.loc == ("payload", "data", "relationships", "metric")
    assert hook_info.value.metric == "Viewed Hologram"
    with pytest.raises(NormalizationError):
        event_type_for("opened email")  # names are exact


@pytest.mark.parametrize("flag", MACHINE_OPEN_FLAGS)
@pytest.mark.parametrize("value", [True, "true", "True", 1, "1", "yes"])
def test_apple_mpp_flags_mark_machine_opens(flag: str, value: Any) -> None:
    event = norm(event_resource("e1", properties={flag: value}), profile=profile_resource())
    assert event.is_machine_open
    assert event.properties[flag] == value  # the raw flag is kept


@pytest.mark.parametrize("value", [False, "false", 0, "0", None, "", [], {}])
def test_falsy_mpp_flags_are_not_machine_opens(value: Any) -> None:
    props = dict.fromkeys(MACHINE_OPEN_FLAGS, value)
    assert not norm(
        event_resource("e1", properties=props), profile=profile_resource()
    ).is_machine_open


def test_only_opens_can_be_machine_opens() -> None:
    resource = event_resource("e1", properties={"machine_open": True})
    assert not norm(resource, "Clicked Email", profile_resource()).is_machine_open


def test_orders_keep_value_items_discounts_and_utm_untouched() -> None:
    props = {
        "$value": 129.95,
        "Currency": "EUR",
        "$currency_code": "EUR",
        "Items": [
            {"ProductID": 1111, "ProductName": "Winnie the Pooh", "Quantity": 2, "ItemPrice": 9.99}
        ],
        "ItemNames": ["Winnie the Pooh"],
        "Discount Codes": ["WELCOME10"],
        "Discount Value": 13.0,
        "utm_source": "klaviyo",
        "utm_medium": "email",
        "utm_campaign": "bf-2022",
        "$attributed_flow": "XyZ123",
        "$extra": {"nested": {"deep": [1, 2, 3]}},
    }
    event = norm(event_resource("order-1", properties=props), "Placed Order", profile_resource())
    assert event.event_type is EventType.ORDERED
    assert event.properties == {**props, "$metric": "Placed Order"}
    assert event.message_id is None
    assert event.campaign_id is None


def test_flow_and_campaign_attribution() -> None:
    flow = norm(event_resource("e1", properties={"$message": "M1", "$flow": "F1"}), profile=None)
    assert (flow.message_id, flow.flow_id, flow.campaign_id) == ("M1", "F1", None)
    campaign = norm(event_resource("e2", properties={"$message": "M2"}), profile=None)
    assert (campaign.message_id, campaign.flow_id, campaign.campaign_id) == ("M2", None, "M2")
    neither = norm(event_resource("e3", properties={"$message": {"odd": 1}}), profile=None)
    assert (neither.message_id, neither.campaign_id) == (None, None)


def test_missing_profile_uses_the_relationship_or_fails_naming_it() -> None:
    event = norm(event_resource("e1", profile_id="P1"), profile=None)
    assert event.identifiers.esp_profile_id == "P1"
    assert event.identifiers.email_hash is None
    with pytest.raises(NormalizationError) as info:
        norm(event_resource("e1", profile_id=None), profile=None)
    assert info.value.loc == ("relationships", "profile")
    # the profile resource alone is enough
    event = norm(event_resource("e1", profile_id=None), profile=profile_resource("P9"))
    assert event.identifiers.esp_profile_id == "P9"


def test_other_identifiers() -> None:
    profile = profile_resource(
        "P1", email="  Someone@Example.COM ", phone_number="+44 20 7946 0958", external_id="shop-77"
    )
    ids = norm(event_resource("e1"), profile=profile).identifiers
    assert ids.email_hash == hash_email(KEY, "someone@example.com")
    assert ids.phone == "+442079460958"
    assert ids.external_ids == {EXTERNAL_ID_NAMESPACE: "shop-77"}
    assert ids.esp_profile_id == SPEC_PROFILE_ID  # the event's relationship wins
    bad = profile_resource("P1", email="not-an-address", phone_number="12345", external_id=None)
    ids = norm(event_resource("e1", profile_id=None), profile=bad).identifiers
    assert (ids.email_hash, ids.phone, ids.external_ids) == (None, None, {})
    assert ids.esp_profile_id == "P1"
    anon = norm(event_resource("e1", profile_id=None, properties={"_kx": "kx-abc"}), profile=None)
    assert anon.identifiers.anonymous_id == "kx-abc"


@pytest.mark.parametrize(
    ("attributes", "loc", "reason"),
    [
        ({"datetime": "yesterday"}, ("attributes", "datetime"), "ISO 8601"),
        ({"datetime": "2022-11-08T01:23:45"}, ("attributes", "datetime"), "UTC offset"),
        ({"datetime": 1667870625}, ("attributes", "datetime"), "ISO 8601"),
        ({"datetime": "1990-01-01T00:00:00+00:00"}, ("attributes", "datetime"), "outside"),
        ({}, ("attributes", "datetime"), "missing"),
        ({"timestamp": "soon"}, ("attributes", "timestamp"), "Unix seconds"),
        ({"timestamp": 10**20}, ("attributes", "timestamp"), "out of range"),
        ({"datetime": None, "event_properties": []}, ("attributes", "event_properties"), "object"),
    ],
)
def test_bad_times_and_shapes_name_the_path(
    attributes: dict[str, Any], loc: tuple[str, ...], reason: str
) -> None:
    resource = event_resource("e1")
    resource["attributes"] = {"event_properties": {}, **attributes}
    if "datetime" not in attributes:
        resource["attributes"].pop("datetime", None)
    with pytest.raises(NormalizationError) as info:
        norm(resource, profile=profile_resource())
    assert info.value.loc == loc
    assert reason in info.value.msg


def test_timestamp_is_used_when_datetime_is_absent() -> None:
    resource = event_resource("e1", timestamp=1667870625)
    del resource["attributes"]["datetime"]
    assert norm(resource, profile=None).occurred_at == datetime(2022, 11, 8, 1, 23, 45, tzinfo=UTC)
    offset = event_resource("e2", datetime="2022-11-08T02:23:45+01:00")
    assert norm(offset, profile=None).occurred_at == datetime(2022, 11, 8, 1, 23, 45, tzinfo=UTC)


@dataclass
class Page:
    events: list[Any]
    profiles: dict[str, Any] = field(default_factory=dict)


def test_normalize_page_keeps_the_good_and_reports_the_bad() -> None:
    page = Page(
        events=[
            event_resource("ok1", metric_id="M_OPEN", profile_id="P1"),
            event_resource("ok2", metric_id=None, profile_id="P2", properties={"$value": 5}),
            event_resource("bad1", metric_id="M_UNKNOWN", profile_id="P1"),
            event_resource("bad2", metric_id="M_OPEN", profile_id="P1", datetime="garbage"),
            "not a resource",
        ],
        profiles={
            "P1": profile_resource("P1", email="a@example.com"),
            "P2": profile_resource("P2"),
        },
    )
    good, bad = normalize_page(
        page,
        {"M_OPEN": "Opened Email", "M_ORDER": "Placed Order"},
        tenant=TENANT,
        hash_key=KEY,
        metric_id="M_ORDER",  # the page's metric, for events whose relationship has no data
    )
    assert [(e.esp_event_id, e.event_type) for e in good] == [
        ("ok1", EventType.OPENED),
        ("ok2", EventType.ORDERED),
    ]
    assert good[0].identifiers.email_hash == hash_email(KEY, "a@example.com")
    assert [(raw if isinstance(raw, str) else raw["id"], err.loc) for raw, err in bad] == [
        ("bad1", ("data", 2, "relationships", "metric", "data", "id")),
        ("bad2", ("data", 3, "attributes", "datetime")),
        ("not a resource", ("data", 4)),
    ]


def webhook_item(**overrides: Any) -> dict[str, Any]:
    event = event_resource("4vRpBT", metric_id="RESQ6t", properties={"$message": "M1"})
    return {
        "external_id": "01J0DELIVERY",
        "topic": "event:klaviyo.opened_email",
        "payload": {
            "data": event,
            "included": [profile_resource(), metric_resource("RESQ6t", "Opened Email")],
        },
        **overrides,
    }


def test_webhook_items() -> None:
    event = normalize_webhook_item(webhook_item(), tenant=TENANT, hash_key=KEY)
    assert (event.esp_event_id, event.event_type, event.message_id) == (
        "4vRpBT",
        EventType.OPENED,
        "M1",
    )
    assert event.identifiers.email_hash == hash_email(KEY, SPEC_EMAIL)
    # the same event through the API and through a webhook is the same canonical event
    api = norm(event_resource("4vRpBT", properties={"$message": "M1"}), profile=profile_resource())
    assert event == api

    item = webhook_item()
    item["payload"]["included"] = [profile_resource()]
    with pytest.raises(NormalizationError) as info:
        normalize_webhook_item(item, tenant=TENANT, hash_key=KEY)
    assert info.value.loc == ("payload", "included")
    item = webhook_item()
    item["payload"]["data"]["attributes"]["datetime"] = "nope"
    with pytest.raises(NormalizationError) as info:
        normalize_webhook_item(item, tenant=TENANT, hash_key=KEY)
    assert info.value.loc == ("payload", "data", "attributes", "datetime")
    with pytest.raises(NormalizationError) as info:
        normalize_webhook_item({"payload": None}, tenant=TENANT, hash_key=KEY)
    assert info.value.loc == ("payload",)


def test_bad_tenant_is_named() -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_event(
            event_resource("e1"),
            metric_name="Opened Email",
            profile=None,
            tenant="Not A Slug",
            hash_key=KEY,
        )
    assert info.value.loc == ("tenant",)


# --- property tests: arbitrary JSON only ever raises NormalizationError --------------------------
#
# Two kinds of input: arbitrary JSON (robustness at the top), and a valid payload with one
# member replaced by arbitrary JSON or removed (reaches every field's own checks, and the
# success path often enough to check it too).

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ids = st.text(alphabet="abcdefXYZ0123456789", min_size=1, max_size=8)
flag_keys = st.sampled_from([*MACHINE_OPEN_FLAGS, "$message", "$flow", "_kx", "$anonymous", "x"])
known_metrics = st.sampled_from(sorted(ALL_METRICS))


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    at = draw(st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30)))
    return event_resource(
        draw(ids),
        metric_id=draw(ids),
        profile_id=draw(st.none() | ids),
        properties=draw(st.dictionaries(flag_keys, json_values, max_size=5)),
        datetime=at.replace(tzinfo=UTC).isoformat(),
        timestamp=draw(st.none() | st.integers(0, 2**40)),
    )


@st.composite
def valid_profiles(draw: st.DrawFn) -> dict[str, Any]:
    return profile_resource(
        draw(ids),
        email=draw(st.emails() | st.text(max_size=20)),
        phone_number=draw(
            st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True) | st.text(max_size=12)
        ),
        external_id=draw(st.none() | st.text(max_size=10)),
    )


EVENT_PATHS = [
    ("id",),
    ("attributes",),
    ("attributes", "datetime"),
    ("attributes", "timestamp"),
    ("attributes", "event_properties"),
    ("attributes", "event_properties", "$message"),
    ("attributes", "event_properties", "$flow"),
    ("attributes", "event_properties", "machine_open"),
    ("relationships",),
    ("relationships", "profile"),
    ("relationships", "profile", "data"),
    ("relationships", "profile", "data", "id"),
    ("relationships", "metric", "data", "id"),
]
PROFILE_PATHS = [
    ("id",),
    ("attributes",),
    ("attributes", "email"),
    ("attributes", "phone_number"),
    ("attributes", "external_id"),
    ("attributes", "anonymous_id"),
]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any], paths: list[tuple[str, ...]]) -> Any:
    """A valid payload with at most one member replaced by arbitrary JSON or removed."""
    value = draw(base)
    path = draw(st.none() | st.sampled_from(paths))
    if path is None:
        return value
    node = value
    for key in path[:-1]:
        if not isinstance(node, dict):
            return value
        node = node.setdefault(key, {})
    if isinstance(node, dict):
        if draw(st.booleans()):
            node.pop(path[-1], None)
        else:
            node[path[-1]] = draw(json_values)
    return value


events_in = st.one_of(mutated(valid_events(), EVENT_PATHS), json_values)
profiles_in = st.one_of(st.none(), mutated(valid_profiles(), PROFILE_PATHS), json_values)
metric_names = st.one_of(known_metrics, st.text(max_size=10))


def attempt(
    fn: Callable[[], CanonicalEvent],
) -> tuple[CanonicalEvent | None, NormalizationError | None]:
    """The event, or the NormalizationError (any other exception propagates and fails)."""
    try:
        return fn(), None
    except NormalizationError as exc:
        return None, exc


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(resource=events_in, profile=profiles_in, metric=metric_names)
def test_fuzz_normalize_event_raises_only_normalization_errors(
    resource: Any, profile: Any, metric: str
) -> None:
    event, error = attempt(lambda: norm(resource, metric, profile))
    if error is not None:
        assert isinstance(error.loc, tuple)
        assert error.msg
        return
    assert event is not None
    assert event.esp == "klaviyo"
    assert event.properties["$metric"] == metric
    assert event.esp_event_id == resource["id"].strip()


@FUZZ
@given(
    events=st.lists(events_in, max_size=4),
    profiles=st.dictionaries(ids, profiles_in, max_size=3),
)
def test_fuzz_normalize_page_never_raises(events: list[Any], profiles: dict[str, Any]) -> None:
    good, bad = normalize_page(
        Page(events, profiles), {"m": "Opened Email"}, tenant=TENANT, hash_key=KEY, metric_id="m"
    )
    assert len(good) + len(bad) == len(events)


@FUZZ
@given(
    events=st.lists(events_in, max_size=4),
    profiles=st.dictionaries(ids, profiles_in, max_size=3),
)
def test_fuzz_the_identifier_cache_changes_nothing(
    events: list[Any], profiles: dict[str, Any]
) -> None:
    page = Page(events, profiles)

    def run(cache: IdentifierCache | None) -> tuple[list[Any], list[str]]:
        good, bad = normalize_page(
            page, {"m": "Opened Email"}, tenant=TENANT, hash_key=KEY, metric_id="m", cache=cache
        )
        return good, [str(exc) for _, exc in bad]

    cache = IdentifierCache()
    plain = run(None)
    assert run(cache) == plain
    assert run(cache) == plain  # answered from the cache the second time


def test_the_identifier_cache_follows_changed_attributes_and_is_bounded() -> None:
    cache = IdentifierCache(max_entries=2)

    def email_hash(email: str) -> Any:
        profile = profile_resource("P1", email=email)
        event = normalize_event(
            event_resource("e1"),
            metric_name="Opened Email",
            profile=profile,
            tenant=TENANT,
            hash_key=KEY,
            cache=cache,
        )
        return event.identifiers.email_hash

    assert email_hash("a@example.com") == hash_email(KEY, "a@example.com")
    assert email_hash("b@example.com") == hash_email(KEY, "b@example.com")  # same id, new email
    assert len(cache) == 2
    assert email_hash("c@example.com") == hash_email(KEY, "c@example.com")
    assert len(cache) == 1  # full: cleared, then this one remembered
    assert email_hash("a@example.com") == hash_email(KEY, "a@example.com")


WEBHOOK_PATHS = [
    ("payload",),
    ("payload", "data"),
    ("payload", "included"),
    ("payload", "data", "relationships", "metric"),
    ("payload", "data", "attributes", "datetime"),
]


@st.composite
def valid_webhook_items(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(mutated(valid_events(), EVENT_PATHS))
    included = [draw(profiles_in), metric_resource(draw(ids), draw(metric_names))]
    return {
        "external_id": draw(ids),
        "topic": "event:klaviyo.opened_email",
        "payload": {"data": event, "included": draw(st.permutations(included))},
    }


@FUZZ
@given(item=st.one_of(mutated(valid_webhook_items(), WEBHOOK_PATHS), json_values))
def test_fuzz_webhook_items_raise_only_normalization_errors(item: Any) -> None:
    event, error = attempt(lambda: normalize_webhook_item(item, tenant=TENANT, hash_key=KEY))
    if error is not None:
        assert error.loc == () or error.loc[0] == "payload"
        return
    assert event is not None
    assert event.esp == "klaviyo"
