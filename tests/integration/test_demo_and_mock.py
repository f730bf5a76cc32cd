"""The simulated demo brand and POST /api/mock/events/generate, through the real pipeline."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import httpx
import pytest
from fastapi.testclient import TestClient

from sendflowr.demo import recent_start
from sendflowr.runtime import Runtime


def test_recent_start_is_a_monday_before_the_history() -> None:
    now = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
    start = recent_start(now, 60)
    assert start.weekday() == 0
    assert (start.hour, start.minute) == (0, 0)
    assert (now - start).days >= 61


@pytest.mark.network
def test_demo_connects_the_klaviyo_simulator_and_backfills(runtime: Runtime) -> None:
    from pydantic import SecretStr

    from sendflowr.connectors.klaviyo.backfill import BackfillRunner
    from sendflowr.demo_klaviyo import start_demo_klaviyo
    from sendflowr.secrets import SecretBox, generate_key
    from sendflowr.storage.metadata.accounts import AccountStore

    settings = runtime.settings.model_copy(
        update={"demo_profiles": 60, "demo_days": 14, "secret_key": SecretStr(generate_key())}
    )
    box = SecretBox.from_string(settings.secret_key.get_secret_value())  # type: ignore[union-attr]
    rt = dataclasses.replace(
        runtime, settings=settings, box=box, accounts=AccountStore(runtime.metadata, box)
    )
    demo = start_demo_klaviyo(rt, live_per_minute=0)
    try:
        account = rt.accounts.get("demo", "klaviyo")
        assert (account.status, account.api_url) == ("connected", demo.url)
        assert account.has_webhook_secret  # subscribed to live events
        assert demo.backfill_job is not None
        runner = BackfillRunner(rt)
        job = runner.claim(demo.backfill_job)
        assert job is not None
        final = asyncio.run(runner.run(job))
        assert final.status == "completed", final.error
        truth = httpx.get(f"{demo.url}/_sim/brand").json()
        assert rt.events.count_events("demo") == truth["events"] > 500
        assert rt.metadata.get_tenant("demo").timezone == "America/New_York"
        # Started again with data present: no second backfill.
        again = start_demo_klaviyo(rt, live_per_minute=0)
        again.stop()
        assert again.backfill_job is None
    finally:
        demo.stop()


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
