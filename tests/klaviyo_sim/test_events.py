"""GET /api/events: filters, sorting, cursor pagination, includes; creating events."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from sendflowr.klaviyo_sim import Brand
from tests.klaviyo_sim.conftest import HEADERS, MakeClient
from tests.klaviyo_sim.helpers import bulk_body, event_body

JSON_API = {"Content-Type": "application/vnd.api+json"}


def _all_pages(c: TestClient, params: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
    """Every event by following links.next; (events, pages)."""
    out: list[dict[str, Any]] = []
    r = c.get("/api/events", params=params, headers=HEADERS)
    pages = 0
    while True:
        assert r.status_code == 200, r.text
        pages += 1
        doc = r.json()
        out.extend(doc["data"])
        nxt = doc["links"].get("next")
        if nxt is None:
            return out, pages
        r = c.get(nxt, headers=HEADERS)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@pytest.mark.parametrize("sort", ["datetime", "-datetime", "timestamp", "-timestamp"])
def test_cursor_pagination_covers_every_event_exactly_once(
    client: TestClient, brand: Brand, sort: str
) -> None:
    events, pages = _all_pages(client, {"page[size]": "97", "sort": sort})
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)) == len(brand.events)
    assert pages == -(-len(brand.events) // 97)
    stamps = [e["attributes"]["timestamp"] for e in events]
    assert stamps == sorted(stamps, reverse=sort.startswith("-"))


def test_default_page_is_200_oldest_first(client: TestClient, brand: Brand) -> None:
    doc = client.get("/api/events", headers=HEADERS).json()
    assert len(doc["data"]) == 200
    assert doc["data"][0]["attributes"]["timestamp"] == int(brand.events.ts.min())
    assert "prev" not in doc["links"]
    assert doc["links"]["self"] == "http://sim.test/api/events"


def test_prev_links_walk_back_to_the_first_page(client: TestClient) -> None:
    first = client.get("/api/events", params={"page[size]": "50"}, headers=HEADERS).json()
    second = client.get(first["links"]["next"], headers=HEADERS).json()
    third = client.get(second["links"]["next"], headers=HEADERS).json()
    back = client.get(third["links"]["prev"], headers=HEADERS).json()
    assert [e["id"] for e in back["data"]] == [e["id"] for e in second["data"]]
    again = client.get(back["links"]["prev"], headers=HEADERS).json()
    assert [e["id"] for e in again["data"]] == [e["id"] for e in first["data"]]
    assert "prev" not in again["links"]


def test_metric_and_time_filters_match_the_brand(client: TestClient, brand: Brand) -> None:
    opened = brand.metric_by_type[next(t for t in brand.metric_by_type if t.value == "opened")]
    ts = brand.events.ts
    lo, hi = int(ts.min()) + 3 * 86_400, int(ts.min()) + 6 * 86_400
    filt = (
        f'and(equals(metric_id,"{opened.id}"),greater-or-equal(datetime,{_iso(lo)}),'
        f"less-than(datetime,{_iso(hi)}))"
    )
    events, _ = _all_pages(client, {"filter": filt, "page[size]": "1000"})
    expected = int(((brand.events.metric == opened.code) & (ts >= lo) & (ts < hi)).sum())
    assert len(events) == expected > 0
    assert {e["relationships"]["metric"]["data"]["id"] for e in events} == {opened.id}
    assert all(lo <= e["attributes"]["timestamp"] < hi for e in events)
    # The comma form means the same; greater-than and less-or-equal shift the bounds by one.
    comma = filt.removeprefix("and(").removesuffix(")")
    same, _ = _all_pages(client, {"filter": comma, "page[size]": "1000"})
    assert [e["id"] for e in same] == [e["id"] for e in events]
    inclusive = (
        f"equals(metric_id,'{opened.id}'),greater-than(datetime,{_iso(lo - 1)}),"
        f"less-or-equal(datetime,{_iso(hi - 1)})"
    )
    also, _ = _all_pages(client, {"filter": inclusive, "page[size]": "1000"})
    assert len(also) == expected


def test_profile_filter_and_has_profile(client: TestClient, brand: Brand) -> None:
    profile = brand.profiles[3]
    events, _ = _all_pages(
        client, {"filter": f"equals(profile_id,'{profile.id}'),has(profile)", "page[size]": "10"}
    )
    expected = int((brand.events.profile == profile.index).sum())
    assert len(events) == expected > 0
    assert {e["relationships"]["profile"]["data"]["id"] for e in events} == {profile.id}
    received = brand.metrics[0]
    both, _ = _all_pages(
        client,
        {"filter": f"equals(profile_id,'{profile.id}'),equals(metric_id,'{received.id}')"},
    )
    assert len(both) == int(
        ((brand.events.profile == profile.index) & (brand.events.metric == received.code)).sum()
    )


def test_unknown_ids_and_timestamps(client: TestClient, brand: Brand) -> None:
    r = client.get("/api/events", params={"filter": "equals(metric_id,'nope')"}, headers=HEADERS)
    assert r.json()["data"] == []
    first = int(brand.events.ts.min())
    r = client.get(
        "/api/events",
        params={"filter": f"less-or-equal(timestamp,{first})", "page[size]": "1000"},
        headers=HEADERS,
    )
    assert {e["attributes"]["timestamp"] for e in r.json()["data"]} == {first}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"filter": "equals(metric_id"}, "filter"),
        ({"filter": "equals(uuid,'x')"}, "filter"),
        ({"filter": "greater-than(metric_id,'x')"}, "filter"),
        ({"filter": "greater-or-equal(datetime,2026-01-05T00:00:00 00:00)"}, "filter"),
        ({"filter": "or(has(profile),has(metric))"}, "filter"),
        ({"sort": "-uuid"}, "sort"),
        ({"page[size]": "0"}, "page[size]"),
        ({"page[size]": "1001"}, "page[size]"),
        ({"page[size]": "ten"}, "page[size]"),
        ({"include": "profile,campaign"}, "include"),
        ({"page[cursor]": "bm90LWEtY3Vyc29y"}, "page[cursor]"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    client: TestClient, params: dict[str, str], parameter: str
) -> None:
    r = client.get("/api/events", params=params, headers=HEADERS)
    assert r.status_code == 400
    error = r.json()["errors"][0]
    assert error["source"] == {"parameter": parameter}
    assert error["code"] == "invalid"


def test_the_plus_hint_names_the_encoding_mistake(client: TestClient) -> None:
    r = client.get(
        "/api/events?filter=greater-or-equal(datetime,2026-01-05T00:00:00+00:00)", headers=HEADERS
    )
    assert r.status_code == 400
    assert "%2B" in r.json()["errors"][0]["detail"]


def test_page_size_bounds_are_accepted(client: TestClient) -> None:
    for size in ("1", "1000"):
        r = client.get("/api/events", params={"page[size]": size}, headers=HEADERS)
        assert len(r.json()["data"]) == int(size)


def test_a_cursor_from_another_query_is_refused(client: TestClient, brand: Brand) -> None:
    first = client.get("/api/events", params={"page[size]": "5"}, headers=HEADERS).json()
    cursor = first["links"]["next"].split("page%5Bcursor%5D=")[1]
    other = {"page[cursor]": cursor, "filter": f"equals(metric_id,'{brand.metrics[0].id}')"}
    r = client.get("/api/events", params=other, headers=HEADERS)
    assert r.status_code == 400
    assert "another query" in r.json()["errors"][0]["detail"]
    flipped = client.get(
        "/api/events", params={"page[cursor]": cursor, "sort": "-datetime"}, headers=HEADERS
    )
    assert flipped.status_code == 400
    # The page size may change between pages.
    resized = client.get(
        "/api/events", params={"page[cursor]": cursor, "page[size]": "7"}, headers=HEADERS
    )
    assert resized.status_code == 200
    assert len(resized.json()["data"]) == 7


def test_include_profile_and_metric(client: TestClient, brand: Brand) -> None:
    doc = client.get(
        "/api/events", params={"page[size]": "40", "include": "profile,metric"}, headers=HEADERS
    ).json()
    profiles = {e["relationships"]["profile"]["data"]["id"] for e in doc["data"]}
    metrics = {e["relationships"]["metric"]["data"]["id"] for e in doc["data"]}
    included = Counter((i["type"], i["id"]) for i in doc["included"])
    assert set(included) == {("profile", p) for p in profiles} | {("metric", m) for m in metrics}
    assert max(included.values()) == 1
    emails = {i["attributes"]["email"] for i in doc["included"] if i["type"] == "profile"}
    assert emails <= set(brand.profile_by_email)


def test_get_one_event_with_includes_and_trailing_slash(client: TestClient, brand: Brand) -> None:
    ident = brand.events.ids[10]
    doc = client.get(f"/api/events/{ident}/", params={"include": "metric"}, headers=HEADERS).json()
    assert doc["data"]["id"] == ident
    assert [i["type"] for i in doc["included"]] == ["metric"]
    assert doc["data"]["links"]["self"] == f"http://sim.test/api/events/{ident}/"


def test_links_use_the_configured_base_url(make_client: MakeClient) -> None:
    c = make_client(base_url="https://a.klaviyo.example")
    doc = c.get("/api/events", params={"page[size]": "2"}, headers=HEADERS).json()
    assert doc["links"]["next"].startswith("https://a.klaviyo.example/api/events?")
    assert doc["data"][0]["links"]["self"].startswith("https://a.klaviyo.example/api/events/")


# -- creating events -------------------------------------------------------------------------


def test_post_event_records_unique_ids_and_duplicates(client: TestClient) -> None:
    h = {**HEADERS, **JSON_API}
    for uid in ("a", "b", "a"):
        r = client.post("/api/events", content=event_body("x@y.test", uid), headers=h)
        assert r.status_code == 202
        assert r.content == b""
    stats = client.get("/_sim/stats", params={"include_ids": "1"}).json()
    created = stats["created_events"]
    assert (created["received"], created["unique"], created["duplicates"]) == (3, 2, 1)
    assert created["unique_ids"] == ["a", "b"]
    assert created["repeated_unique_ids"] == {"a": 2}
    assert stats["operations"]["POST /api/events"]["2xx"] == 3


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        (b"not json", "/"),
        (b'{"data": {"type": "profile"}}', "/data/type"),
        (b'{"data": {"type": "event", "attributes": {}}}', "/data/attributes/profile"),
        (
            b'{"data": {"type": "event", "attributes": {"properties": {}, "profile": {"data":'
            b' {"type": "profile", "attributes": {"email": "a@b.test"}}}}}}',
            "/data/attributes/metric",
        ),
        (
            b'{"data": {"type": "event", "attributes": {"properties": {}, "metric": {"data":'
            b' {"type": "metric", "attributes": {"name": "X"}}}, "profile": {"data":'
            b' {"type": "profile", "attributes": {}}}}}}',
            "/data/attributes/profile/data/attributes",
        ),
    ],
)
def test_post_event_validates_the_body(client: TestClient, body: bytes, pointer: str) -> None:
    r = client.post("/api/events", content=body, headers={**HEADERS, **JSON_API})
    assert r.status_code == 400
    assert r.json()["errors"][0]["source"] == {"pointer": pointer}


def test_bulk_create_records_each_event_and_caps_at_1000(client: TestClient) -> None:
    h = {**HEADERS, **JSON_API}
    assert (
        client.post(
            "/api/event-bulk-create-jobs", content=bulk_body(1000, 10), headers=h
        ).status_code
        == 202
    )
    again = client.post("/api/event-bulk-create-jobs", content=bulk_body(10, 1), headers=h)
    assert again.status_code == 202
    created = client.get("/_sim/stats").json()["created_events"]
    # b-0..b-9 for p0@x.test were sent twice.
    assert (created["received"], created["unique"], created["duplicates"]) == (1010, 1000, 10)
    too_many = client.post("/api/event-bulk-create-jobs", content=bulk_body(1001, 1), headers=h)
    assert too_many.status_code == 400


def test_posted_events_do_not_enter_the_brand(client: TestClient, brand: Brand) -> None:
    before = client.get("/_sim/brand").json()["events"]
    client.post("/api/events", content=event_body("x@y.test"), headers={**HEADERS, **JSON_API})
    assert client.get("/_sim/brand").json()["events"] == before == len(brand.events)
