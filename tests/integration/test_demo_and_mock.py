"""The simulated demo brand and POST /api/mock/events/generate, through the real pipeline."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from fastapi.testclient import TestClient

from sendflowr.demo import ensure_demo_brand, recent_start
from sendflowr.runtime import Runtime


def test_recent_start_is_a_monday_before_the_history() -> None:
    now = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
    start = recent_start(now, 60)
    assert start.weekday() == 0
    assert (start.hour, start.minute) == (0, 0)
    assert (now - start).days >= 61


def test_demo_brand_loads_once(runtime: Runtime) -> None:
    rt = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"demo_profiles": 60, "demo_days": 21})
    )
    loaded = ensure_demo_brand(rt)
    assert loaded > 500
    assert runtime.events.count_events("demo") == loaded
    assert ensure_demo_brand(rt) == 0  # not loaded twice
    counts = runtime.events.count_by_type("demo")
    assert counts["received"] > 0
    assert counts["opened"] > 0
    assert runtime.metadata.get_tenant("demo").timezone


def test_mock_generate_pushes_events_through_the_pipeline(client: TestClient) -> None:
    client.post("/api/tenants", json={"id": "demo", "name": "Demo"})
    r = client.post("/api/mock/events/generate", params={"count": 1500, "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["generated"], body["stored"], body["rejected"]) == (1500, 1500, 0)
    counts = client.get("/api/events/demo/counts").json()
    assert counts["total"] == 1500
    # The same seed again is the same events: stored once.
    again = client.post("/api/mock/events/generate", params={"count": 1500, "seed": 3})
    assert again.status_code == 200
    assert client.get("/api/events/demo/counts").json()["total"] == 1500
    # Another seed is another audience.
    client.post("/api/mock/events/generate", params={"count": 700, "seed": 4})
    assert client.get("/api/events/demo/counts").json()["total"] == 2200


def test_mock_generate_rejects_bad_arguments(client: TestClient) -> None:
    for params, loc in [
        ({"count": 0}, ["query", "count"]),
        ({"count": 2_000_000}, ["query", "count"]),
        ({"count": "many"}, ["query", "count"]),
        ({"tenant": "NO WAY"}, ["query", "tenant"]),
        ({"seed": -1}, ["query", "seed"]),
    ]:
        r = client.post("/api/mock/events/generate", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["detail"][0]["loc"] == loc
    missing = client.post("/api/mock/events/generate", params={"tenant": "ghost"})
    assert missing.status_code == 404
