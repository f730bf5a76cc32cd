"""The HTTP API on the embedded deployment: health, tenants, events, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.factories import payload


def _tenant(client: TestClient, tenant: str = "acme") -> None:
    r = client.post("/api/tenants", json={"id": tenant, "name": tenant.title(), "timezone": "UTC"})
    assert r.status_code == 201, r.text


def _locs(body: dict[str, Any]) -> list[list[Any]]:
    return [d["loc"] for d in body["detail"]]


def test_health_reports_every_backend(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    ports = {b["port"]: (b["backend"], b["state"]) for b in body["backends"]}
    assert ports == {
        "event_store": ("chdb", "ok"),
        "metadata": ("sqlite", "ok"),
        "bus": ("inline", "ok"),
        "feature_cache": ("memory", "ok"),
    }


def test_openapi_and_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/health",
        "/api/tenants",
        "/api/events",
        "/api/events/{tenant}/counts",
        "/api/mock/events/generate",
    ):
        assert path in paths


def test_tenant_crud_and_validation(client: TestClient) -> None:
    _tenant(client)
    assert client.get("/api/tenants/acme").json()["name"] == "Acme"
    assert [t["id"] for t in client.get("/api/tenants").json()] == ["acme"]
    dup = client.post("/api/tenants", json={"id": "acme", "name": "x"})
    assert dup.status_code == 409
    assert _locs(dup.json()) == [["id"]]
    bad = client.post(
        "/api/tenants", json={"id": "Not A Slug", "name": "", "timezone": "Mars/Base"}
    )
    assert bad.status_code == 422
    assert sorted(map(tuple, _locs(bad.json()))) == [
        ("body", "id"),
        ("body", "name"),
        ("body", "timezone"),
    ]
    assert "Mars/Base" in str(bad.json())
    missing = client.get("/api/tenants/nope")
    assert missing.status_code == 404
    assert "nope" in missing.json()["detail"][0]["msg"]


def test_ingest_and_count(client: TestClient) -> None:
    _tenant(client)
    events = [payload(i) for i in range(5)] + [payload(5, event_type="clicked")]
    r = client.post("/api/events", json={"events": events})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 6
    again = client.post("/api/events", json={"events": events})
    assert again.status_code == 200
    counts = client.get("/api/events/acme/counts").json()
    assert counts == {"tenant": "acme", "total": 6, "by_type": {"clicked": 1, "opened": 5}}


def test_one_bad_event_rejects_the_request_and_writes_nothing(client: TestClient) -> None:
    _tenant(client)
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    events = [
        payload(0),
        payload(1, identifiers={}),
        payload(2, occurred_at="yesterday"),
        payload(3, occurred_at=future),
        payload(4, tenant="ghost"),
    ]
    r = client.post("/api/events", json={"events": events})
    assert r.status_code == 422
    locs = _locs(r.json())
    assert ["body", "events", 1, "identifiers"] in locs
    assert ["body", "events", 2, "occurred_at"] in locs
    assert ["body", "events", 3, "occurred_at"] in locs
    assert ["body", "events", "tenant"] in locs
    assert "ghost" in r.text
    assert client.get("/api/events/acme/counts").json()["total"] == 0


@pytest.mark.parametrize(
    ("body", "content_type", "loc"),
    [
        (b"{not json", "application/json", ["body", 1]),
        (b'{"events": []}', "application/json", ["body", "events"]),
        (b'{"events": "x"}', "application/json", ["body", "events"]),
        (b'{"evnts": []}', "application/json", ["body", "events"]),
        (b"events=1", "application/x-www-form-urlencoded", ["body"]),
        (b"", "application/json", ["body"]),
    ],
)
def test_malformed_bodies_are_422_naming_the_field(
    client: TestClient, body: bytes, content_type: str, loc: list[Any]
) -> None:
    r = client.post("/api/events", content=body, headers={"content-type": content_type})
    assert r.status_code == 422, r.text
    assert any(d["loc"][: len(loc)] == loc for d in r.json()["detail"]), r.text
    assert all(d["msg"] for d in r.json()["detail"])


def test_counts_for_unknown_or_malformed_tenant(client: TestClient) -> None:
    assert client.get("/api/events/nope/counts").status_code == 404
    bad = client.get("/api/events/NOT%20OK/counts")
    assert bad.status_code == 422
    assert _locs(bad.json()) == [["path", "tenant"]]


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    r = client.get("/api/nothing-here")
    assert r.status_code == 404
    assert r.json()["detail"][0]["msg"] == "Not Found"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ('"properties": {"big": 1180591620717411303424}', "properties"),
        ('"properties": {"s": "\\ud800"}', "properties"),
        ('"campaign_id": "c\\udfff"', "campaign_id"),
        ('"identifiers": {"esp_profile_id": "p\\ud800"}', "esp_profile_id"),
    ],
)
def test_unstorable_values_are_422_not_500(client: TestClient, override: str, field: str) -> None:
    _tenant(client)
    body = (
        '{"events": [{"tenant": "acme", "esp": "klaviyo", "esp_event_id": "x1", '
        '"event_type": "opened", "occurred_at": "2026-03-02T09:00:00Z", '
        '"identifiers": {"email_hash": "' + "a" * 64 + '"}, ' + override + "}]}"
    )
    r = client.post("/api/events", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in str(r.json()["detail"][0]["loc"])
    assert client.get("/api/events/acme/counts").json()["total"] == 0
