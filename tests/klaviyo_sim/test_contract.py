"""Every kind of response the sim gives is valid for Klaviyo's official spec, and the
validator really rejects invalid bodies (a green contract test means something)."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import orjson
import pytest
from openapi_core.validation.response.exceptions import InvalidData

from sendflowr.klaviyo_sim import Brand
from tests.klaviyo.spec import load_spec
from tests.klaviyo_sim.conftest import HEADERS, MakeClient, sim_app
from tests.klaviyo_sim.contract import (
    OVERLAPPING_ONE_OFS,
    _node,
    nullable_without_type_count,
    validate,
    validate_document,
)
from tests.klaviyo_sim.helpers import bulk_body, event_body, webhook_body

JSON_API = {"Content-Type": "application/vnd.api+json"}


def _ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, response.text
    validate(response)
    return response


def test_every_success_response_matches_the_spec(make_client: MakeClient, brand: Brand) -> None:
    c = make_client()
    h = HEADERS
    metric_id = brand.metrics[1].id
    event_id = brand.events.ids[0]
    profile = brand.profiles[0]
    campaign = brand.campaigns[0].id
    flow = brand.flows[0].id
    _ok(c.get("/api/accounts", headers=h))
    _ok(c.get("/api/metrics", headers=h))
    _ok(c.get("/api/metrics", params={"filter": "equals(integration.name,'API')"}, headers=h))
    _ok(c.get(f"/api/metrics/{metric_id}", headers=h))
    page = _ok(
        c.get(
            "/api/events",
            params={"page[size]": "50", "include": "profile,metric", "sort": "-datetime"},
            headers=h,
        )
    )
    _ok(c.get(page.json()["links"]["next"], headers=h))
    _ok(
        c.get(
            "/api/events/",
            params={
                "filter": f"equals(metric_id,'{metric_id}'),"
                "greater-or-equal(datetime,2026-01-06T00:00:00+00:00)",
                "page[size]": "1000",
            },
            headers=h,
        )
    )
    _ok(c.get(f"/api/events/{event_id}", params={"include": "profile,metric"}, headers=h))
    _ok(c.post("/api/events", content=event_body(profile.email), headers={**h, **JSON_API}), 202)
    _ok(c.post("/api/event-bulk-create-jobs", content=bulk_body(3), headers={**h, **JSON_API}), 202)
    _ok(c.get("/api/profiles", params={"page[size]": "100"}, headers=h))
    _ok(c.get("/api/profiles", params={"filter": f'equals(email,"{profile.email}")'}, headers=h))
    _ok(c.get(f"/api/profiles/{profile.id}", headers=h))
    channel = {"filter": "equals(messages.channel,'email')"}
    _ok(c.get("/api/campaigns", params=channel, headers=h))
    _ok(c.get(f"/api/campaigns/{campaign}", headers=h))
    job = {"data": {"type": "campaign-send-job", "id": campaign}}
    _ok(c.post("/api/campaign-send-jobs", json=job, headers={**h, **JSON_API}), 202)
    _ok(c.get(f"/api/campaign-send-jobs/{campaign}", headers=h))
    _ok(c.get("/api/flows", headers=h))
    _ok(c.get(f"/api/flows/{flow}", headers=h))
    _ok(c.get("/api/lists/SimList/profiles", params={"page[size]": "100"}, headers=h))
    _ok(c.get("/api/segments/SimEngaged/profiles", headers=h))
    created = _ok(
        c.post(
            "/api/webhooks",
            content=webhook_body("https://hooks.example/k"),
            headers={**h, **JSON_API},
        ),
        201,
    )
    hook = created.json()["data"]["id"]
    _ok(c.get("/api/webhooks", params={"include": "webhook-topics"}, headers=h))
    _ok(c.get(f"/api/webhooks/{hook}", headers=h))
    _ok(c.get("/api/webhook-topics", headers=h))
    _ok(c.delete(f"/api/webhooks/{hook}", headers=h), 204)


def test_every_error_response_matches_the_spec(make_client: MakeClient, brand: Brand) -> None:
    c = make_client()
    h = HEADERS
    cases: list[tuple[httpx.Response, int]] = [
        (c.get("/api/events", params={"filter": "equals(datetime,1)"}, headers=h), 400),
        (c.get("/api/events", params={"page[size]": "1001"}, headers=h), 400),
        (c.get("/api/events", params={"sort": "uuid"}, headers=h), 400),
        (c.get("/api/events", params={"page[cursor]": "garbage"}, headers=h), 400),
        (c.get("/api/campaigns", headers=h), 400),
        (c.get("/api/profiles", params={"page[size]": "101"}, headers=h), 400),
        (c.get("/api/flows", params={"page[size]": "51"}, headers=h), 400),
        (c.get("/api/events", headers={"Authorization": h["Authorization"]}), 400),
        (c.post("/api/events", content=b"{}", headers={**h, **JSON_API}), 400),
        (c.get("/api/events", headers={"revision": "2026-07-15"}), 401),
        (c.get("/api/events", headers={**h, "Authorization": "Klaviyo-API-Key nope"}), 401),
        (c.get("/api/events/nope", headers=h), 404),
        (c.get("/api/metrics/nope", headers=h), 404),
        (c.get("/api/profiles/nope", headers=h), 404),
        (c.get("/api/campaigns/nope", headers=h), 404),
        (c.get("/api/flows/nope", headers=h), 404),
        (c.get("/api/lists/nope/profiles", headers=h), 404),
        (c.get("/api/webhooks/nope", headers=h), 404),
        (c.post("/api/events", content=event_body("a@b.test"), headers=h), 415),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        validate(response)
        error = response.json()["errors"][0]
        assert error["status"] == status
    # Paths and methods the spec lacks: their bodies are the same ClientError document.
    for response, status in (
        (c.delete("/api/events", headers=h), 405),
        (c.get("/api/not-a-thing", headers=h), 404),
    ):
        assert response.status_code == status
        validate(response, method="get", path="/api/events")


def test_429_and_5xx_match_the_spec(make_client: MakeClient) -> None:
    c = make_client(rate_limits=True, rate_limit_scale=0.001)
    assert c.get("/api/accounts", headers=HEADERS).status_code == 200
    throttled = c.get("/api/accounts", headers=HEADERS)
    assert throttled.status_code == 429
    validate(throttled)
    c.post("/_sim/faults", json={"kind": "5xx", "count": 1, "path_prefix": "/api/metrics"})
    failed = c.get("/api/metrics", headers=HEADERS)
    assert failed.status_code == 503
    validate(failed)


# -- the validator is not a rubber stamp -----------------------------------------------------


def _events_page(make_client: MakeClient) -> httpx.Response:
    c = make_client()
    response: httpx.Response = c.get(
        "/api/events", params={"page[size]": "3", "include": "profile,metric"}, headers=HEADERS
    )
    validate(response)
    return response


def _mutated(response: httpx.Response, change: Any) -> bytes:
    doc = copy.deepcopy(response.json())
    change(doc)
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("event without its required type", lambda d: d["data"][0].pop("type")),
        ("event type not in the enum", lambda d: d["data"][0].update(type="evnt")),
        (
            "timestamp (nullable integer) as a string",
            lambda d: d["data"][0]["attributes"].update(timestamp="1700000000"),
        ),
        (
            "datetime (nullable date-time) as a number",
            lambda d: d["data"][0]["attributes"].update(datetime=1700000000),
        ),
        ("collection without data", lambda d: d.pop("data")),
        ("links.next null (typed string, not nullable)", lambda d: d["links"].update(next=None)),
        (
            "profile latitude (nullable oneOf string|number, no type) as a boolean",
            lambda d: next(i for i in d["included"] if i["type"] == "profile")["attributes"][
                "location"
            ].update(latitude=True),
        ),
    ],
)
def test_the_validator_rejects_invalid_bodies(
    make_client: MakeClient, what: str, change: Any
) -> None:
    response = _events_page(make_client)
    with pytest.raises(InvalidData):
        validate(response, _mutated(response, change))


def test_nullable_without_type_accepts_null_only_with_the_patch(make_client: MakeClient) -> None:
    """Klaviyo sends `latitude: null`; the raw spec (3.0.3 reading) refuses it, the 3.0.2
    reading accepts it, and a wrong type is refused either way (parametrized test above)."""
    response = _events_page(make_client)
    profiles = [i for i in response.json()["included"] if i["type"] == "profile"]
    assert profiles[0]["attributes"]["location"]["latitude"] is None
    validate(response)
    with pytest.raises(InvalidData):
        validate(response, patched=False)
    assert nullable_without_type_count() > 60  # SOURCE.md: 68 schemas with oneOf alone


def test_the_validator_rejects_an_error_without_detail(make_client: MakeClient) -> None:
    c = make_client()
    response = c.get("/api/events/nope", headers=HEADERS)
    with pytest.raises(InvalidData):
        validate(response, _mutated(response, lambda d: d["errors"][0].pop("detail")))


def test_each_spec_patch_is_needed_and_only_those(make_client: MakeClient) -> None:
    """Each listed node is a oneOf in the official file, and without the oneOf patch the
    campaign is refused because a value matches several branches."""
    spec = load_spec()
    for schema, path in OVERLAPPING_ONE_OFS:
        assert "oneOf" in _node(spec, schema, path), (schema, path)
    c = make_client()
    response = c.get(
        "/api/campaigns", params={"filter": "equals(messages.channel,'email')"}, headers=HEADERS
    )
    validate(response)
    with pytest.raises(InvalidData) as excinfo:
        validate(response, patched=False)
    text = repr(excinfo.value.__cause__) + str(excinfo.value)
    assert "is valid under each of" in text


def test_webhook_payloads_are_get_event_documents(make_client: MakeClient) -> None:
    from sendflowr.klaviyo_sim.resources import finish
    from sendflowr.klaviyo_sim.webhooks import event_payload

    c = make_client()
    brand = sim_app(c).state.brand
    body = finish(event_payload(brand, 0), "http://sim.test")
    validate_document("get", f"/api/events/{brand.events.ids[0]}", 200, body)
