"""The backfill's hot path (`wire` + `normalize_wire`) gives exactly what the dict path
(`jsonapi` + `normalize_page`) gave, on simulator pages (whole and with the sparse fieldsets
the backfill asks for) and on malformed events; and it reads only what the sparse fieldsets
ask for."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from sendflowr.archive.klaviyo import (
    backfill_rows,
    backfill_rows_from_bytes,
    event_from_backfill_row,
)
from sendflowr.connectors.klaviyo import jsonapi
from sendflowr.connectors.klaviyo.constants import JSON_API
from sendflowr.connectors.klaviyo.normalize import (
    ANONYMOUS_ID_KEYS,
    EVENT_FIELDS,
    PROFILE_FIELDS,
    IdentifierCache,
    normalize_event,
    normalize_page,
)
from sendflowr.connectors.klaviyo.normalize_wire import Normalized, normalize_records
from sendflowr.connectors.klaviyo.wire import (
    DecodedPage,
    ShapeError,
    WireEvent,
    decode_events_page,
)
from sendflowr.klaviyo_sim import Brand, create_sim_app
from tests.klaviyo.spec import load_spec
from tests.klaviyo_sim.conftest import HEADERS, small_config

KEY = b"test-hash-key-0123456789abcdef"
TENANT = "acme"


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[TestClient, Brand]]:
    from sendflowr.klaviyo_sim import build_brand

    brand = build_brand(small_config(profiles=300, days=7).sim_config())
    app = create_sim_app(small_config(profiles=300, days=7), brand=brand)
    with TestClient(app, base_url="http://sim.test") as client:
        yield client, brand


def _page(client: TestClient, brand: Brand, metric: str, sparse: bool) -> bytes:
    metric_id = next(m.id for m in brand.metrics if m.name == metric)
    params = {
        "filter": f"equals(metric_id,'{metric_id}')",
        "page[size]": "1000",
        "include": "profile",
    }
    if sparse:
        params["fields[event]"] = ",".join(EVENT_FIELDS)
        params["fields[profile]"] = ",".join(PROFILE_FIELDS)
    response = client.get("/api/events", params=params, headers=HEADERS)
    assert response.status_code == 200, response.text
    body: bytes = response.content
    return body


@dataclass
class _DictPage:
    events: list[Any]
    profiles: dict[str, Any] = field(default_factory=dict)


def _old(body: bytes, names: dict[str, str], metric_id: str | None) -> tuple[Any, Any]:
    """What the backfill did before: orjson dicts through `normalize_page`."""
    doc = jsonapi.decode_document(body, JSON_API)
    page = _DictPage(jsonapi.primary_resources(doc), jsonapi.included_resources(doc, "profile"))
    return normalize_page(
        page, names, tenant=TENANT, hash_key=KEY, metric_id=metric_id, cache=IdentifierCache()
    )


def _new(
    body: bytes, names: dict[str, str], metric_id: str | None
) -> tuple[DecodedPage, Normalized]:
    page = decode_events_page(body, JSON_API)
    return page, normalize_records(
        page.events,
        page.profiles,
        names,
        tenant=TENANT,
        hash_key=KEY,
        metric_id=metric_id,
        cache=IdentifierCache(),
    )


def _same(body: bytes, names: dict[str, str], metric_id: str | None = None) -> DecodedPage:
    good, bad = _old(body, names, metric_id)
    page, result = _new(body, names, metric_id)
    assert result.events == good
    assert [(raw, str(e), e.loc, type(e)) for raw, e in result.rejected] == [
        (raw, str(e), e.loc, type(e)) for raw, e in bad
    ]
    refused = {int(e.loc[1]) for _, e in bad}
    assert result.accepted == [i for i in range(len(page.events)) if i not in refused]
    return page


@pytest.mark.parametrize("metric", ["Opened Email", "Received Email", "Clicked Email"])
def test_simulator_pages_normalise_as_before_whole_or_sparse(
    sim: tuple[TestClient, Brand], metric: str
) -> None:
    client, brand = sim
    names = {m.id: m.name for m in brand.metrics}
    whole = _page(client, brand, metric, sparse=False)
    sparse = _page(client, brand, metric, sparse=True)
    assert len(sparse) < len(whole) * 0.85  # the profiles' other attributes are gone
    page = _same(whole, names)
    assert len(page.events) > 20
    assert all(isinstance(r.event, WireEvent) for r in page.events)  # the fast path ran
    _same(sparse, names)
    # Whole or sparse, the same canonical events.
    assert _new(whole, names, None)[1].events == _new(sparse, names, None)[1].events


def _event(i: int, **changes: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "type": "event",
        "id": f"ev{i}",
        "attributes": {
            "timestamp": 1_767_600_000 + i,
            "event_properties": {"$message": f"m{i}", "$flow": None},
            "datetime": "2026-01-05T08:00:00+00:00",
            "uuid": "u",
        },
        "relationships": {
            "profile": {"data": {"type": "profile", "id": f"P{i % 3}"}},
            "metric": {"data": {"type": "metric", "id": "M1"}},
        },
        "links": {"self": "x"},
    }
    for path, value in changes.items():
        node = ev
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        if value is _DROP:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return ev


_DROP = object()


def _profile(pid: str, **attrs: Any) -> dict[str, Any]:
    return {"type": "profile", "id": pid, "attributes": attrs, "links": {"self": "y"}}


def test_malformed_and_unusual_events_normalise_as_before() -> None:
    events = [
        _event(0),
        _event(1, attributes__datetime="yesterday"),
        _event(2, attributes__datetime=None),  # the timestamp then
        _event(3, attributes__datetime=None, attributes__timestamp=True),
        _event(4, id="   "),
        _event(5, attributes__event_properties=["a"]),
        _event(6, attributes__event_properties=None),
        _event(7, relationships__metric__data__id="M2"),  # unknown metric id
        _event(8, relationships__metric=_DROP),  # falls back to the page's metric
        _event(9, relationships__profile__data=[{"type": "profile", "id": "P0"}]),  # dict path
        _event(10, attributes=None),  # dict path
        _event(11, relationships__profile=_DROP, attributes__event_properties={"_kx": "k1"}),
        _event(12, relationships__profile__data__id=" P1 "),
        _event(13, relationships__metric__data__id="M3"),  # a metric we do not map
        _event(14, attributes__event_properties={"machine_open": "yes", "$flow": "F1"}),
        _event(15, attributes__datetime="2026-01-05T08:00:00"),  # no offset
        _event(16, attributes__event_properties={"$message": 5, "$value": 1e308}),
        _event(17, relationships=_DROP, attributes__event_properties={}),
    ]
    profiles = [
        _profile("P0", email="a@example.com", phone_number="+1 415 555 0100", external_id=7),
        _profile("P1", email="not an address", anonymous_id="anon-1", first_name="A"),
        {"type": "profile", "id": "P2", "attributes": None},
        {"type": "metric", "id": "M1", "attributes": {"name": "Opened Email"}},
    ]
    body = orjson.dumps({"data": events, "included": profiles, "links": {"next": None}})
    names = {"M1": "Opened Email", "M3": "Some Custom Metric"}
    page = _same(body, names, metric_id="M1")
    kinds = [isinstance(r.event, WireEvent) for r in page.events]
    assert kinds.count(False) == 2  # the two the Structs do not describe went the dict way
    _, result = _new(body, names, "M1")
    assert len(result.rejected) >= 6
    # Without the page's metric, the event with no metric relationship is refused too.
    _same(body, names, metric_id=None)


def test_archived_rows_are_the_bytes_received_and_replay_to_the_same_events(
    sim: tuple[TestClient, Brand],
) -> None:
    client, brand = sim
    metric = next(m for m in brand.metrics if m.name == "Clicked Email")
    body = _page(client, brand, metric.name, sparse=True)
    page, result = _new(body, {metric.id: metric.name}, metric.id)
    accepted = []
    for i in result.accepted:
        record = page.events[i]
        pid = record.profile_ref()
        profile = page.profiles.get(pid) if pid is not None else None
        accepted.append((record.raw, profile.raw if profile is not None else None))
    payloads, contexts = backfill_rows_from_bytes(
        accepted, metric_id=metric.id, metric_name=metric.name
    )
    # The same rows as the dict path wrote (same JSON, byte for byte: orjson both ways).
    doc = jsonapi.decode_document(body, JSON_API)
    old = backfill_rows(
        jsonapi.primary_resources(doc),
        jsonapi.included_resources(doc, "profile"),
        [],
        metric_id=metric.id,
        metric_name=metric.name,
    )
    assert (payloads, contexts) == old
    replayed = [
        event_from_backfill_row(p, c, tenant=TENANT, hash_key=KEY)
        for p, c in zip(payloads, contexts, strict=True)
    ]
    assert replayed == result.events


def test_bad_documents_and_bad_resources_fail_as_before() -> None:
    with pytest.raises(jsonapi.JsonApiError, match="not valid JSON") as info:
        decode_events_page(b'{"data": [', JSON_API)
    assert not isinstance(info.value, ShapeError)  # retried by the client
    with pytest.raises(jsonapi.JsonApiError, match="no 'data'") as info:
        decode_events_page(b'{"items": []}', JSON_API)
    assert not isinstance(info.value, ShapeError)
    with pytest.raises(jsonapi.JsonApiError, match="expected application"):
        decode_events_page(b'{"data": []}', "text/html")
    shapes = {
        b'{"data": [{"id": 1}]}': "data\\[0\\]: a resource needs string 'type' and 'id'",
        b'{"data": [{"type": "event", "id": "e", "attributes": []}]}': "attributes: must be",
        b'{"data": [{"type": "event", "id": "e", "links": 3}]}': "links: must be an object",
        b'{"data": [], "included": [{"type": "profile"}]}': "included\\[0\\]",
        b'{"data": [], "included": {}}': "included: expected a list",
        b'{"data": {}}': "data: expected a list",
        b'{"data": [], "links": {"next": 5}}': "links.next: expected a string",
        b'{"data": [], "links": []}': "links: must be an object",
    }
    for body, message in shapes.items():
        with pytest.raises(ShapeError, match=message):
            decode_events_page(body, JSON_API)
        # The dict path refused the same documents.
        with pytest.raises(jsonapi.JsonApiError):
            _dict_path(body)


def _dict_path(body: bytes) -> None:
    doc = jsonapi.decode_document(body, JSON_API)
    jsonapi.primary_resources(doc)
    jsonapi.included_resources(doc, "profile")
    jsonapi.next_link(doc)


class _Recording(dict[str, Any]):
    """A dict that remembers which keys were read."""

    def __init__(self, data: dict[str, Any], seen: set[str]) -> None:
        super().__init__(data)
        self.seen = seen

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)


def test_the_sparse_fieldsets_name_everything_the_normaliser_reads() -> None:
    ops = load_spec()["paths"]["/api/events"]["get"]["parameters"]
    enums = {
        p["name"]: set(p["schema"]["items"]["enum"])
        for p in ops
        if p.get("name", "").startswith("fields[")
    }
    assert set(EVENT_FIELDS) <= enums["fields[event]"]
    assert set(PROFILE_FIELDS) <= enums["fields[profile]"]
    every_event = {"datetime", "timestamp", "event_properties", "uuid", "extra"}
    every_profile = {"email", "phone_number", "external_id", "first_name", "location", "extra"}
    for datetime_value in ("2026-01-05T08:00:00+00:00", None):  # None: the timestamp is read
        event_seen: set[str] = set()
        profile_seen: set[str] = set()
        resource = _event(0)
        resource["attributes"] = _Recording(
            {k: resource["attributes"].get(k, 1) for k in every_event}
            | {"datetime": datetime_value, "timestamp": 1_767_600_000, "event_properties": {}},
            event_seen,
        )
        profile = _profile("P0")
        profile["attributes"] = _Recording(
            {k: "+14155550100" if k == "phone_number" else "x@example.com" for k in every_profile},
            profile_seen,
        )
        normalize_event(
            copy.copy(resource),
            metric_name="Opened Email",
            profile=profile,
            tenant=TENANT,
            hash_key=KEY,
            cache=IdentifierCache(),
        )
        assert event_seen <= set(EVENT_FIELDS)
        # The anonymous-id names are no attribute of Klaviyo's profile schema (webhook relays).
        assert profile_seen <= set(PROFILE_FIELDS) | set(ANONYMOUS_ID_KEYS)
        assert set(PROFILE_FIELDS) <= profile_seen
