"""Backfill against the Klaviyo simulator: exact counts, no duplicates, faults, cancel and
retry, resume after a crash, the API routes and the data summary."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sendflowr.connectors.klaviyo.backfill import BackfillRunner, RunnerOptions
from sendflowr.connectors.klaviyo.client import ApiKeyAuth, KlaviyoClient
from sendflowr.connectors.klaviyo.retry import RetryPolicy
from sendflowr.klaviyo_sim import SimServerConfig, build_brand, create_sim_app
from sendflowr.klaviyo_sim.app import SimApp
from sendflowr.klaviyo_sim.brand import Brand
from sendflowr.runtime import Runtime
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.backfill import Job
from sendflowr.storage.metadata.store import Tenant
from tests.conftest import ADMIN_HEADERS

API_KEY = "pk_sim_backfill_test"
SIM_URL = "http://klaviyo.sim"
TENANT = "brand"


def _config(**overrides: Any) -> SimServerConfig:
    values: dict[str, Any] = {
        "tenant": "simbrand",
        "profiles": 150,
        "days": 10,
        "api_keys": (API_KEY,),
        "rate_limits": False,
    }
    values.update(overrides)
    return SimServerConfig(**values)


@pytest.fixture(scope="module")
def brand() -> Brand:
    return build_brand(_config().sim_config())


@pytest.fixture
def sim(brand: Brand) -> SimApp:
    return create_sim_app(_config(), brand=brand)


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    keyed = settings.model_copy(
        update={"secret_key": SecretStr(generate_key()), "backfill_worker": False}
    )
    runtime = Runtime.open(keyed)
    try:
        runtime.metadata.create_tenant(Tenant(TENANT, "Brand", "UTC"))
        runtime.accounts.connect(
            TENANT, "klaviyo", "api_key", {"api_key": API_KEY}, api_url=SIM_URL
        )
        yield runtime
    finally:
        drop = getattr(runtime.events, "drop_database", None)
        if drop is not None:
            drop()
        runtime.close()


def _factory(sim: SimApp) -> Callable[[str], KlaviyoClient]:
    def make(_tenant: str) -> KlaviyoClient:
        return KlaviyoClient(
            ApiKeyAuth(API_KEY),
            base_url=SIM_URL,
            transport=httpx.ASGITransport(app=sim),
            retry=RetryPolicy(max_attempts=6, initial_backoff=0.01, max_backoff=0.05),
        )

    return make


def _job(rt: Runtime, days: int = 30) -> Job:
    now = datetime.now(UTC)
    return rt.backfills.create_job(TENANT, "klaviyo", "backfill", now - timedelta(days=days), now)


def _run(rt: Runtime, sim: SimApp, job: Job, **kwargs: Any) -> Job:
    runner = BackfillRunner(
        rt, RunnerOptions(concurrency=4, page_size=100), client_factory=_factory(sim), **kwargs
    )
    claimed = runner.claim(job.id)
    assert claimed is not None
    return asyncio.run(runner.run(claimed))


def _served(sim_brand: Brand) -> dict[str, int]:
    return {k: v for k, v in sim_brand.summary()["events_by_metric"].items() if v}


def _stored_by_metric(rt: Runtime) -> dict[str, int]:
    from sendflowr.connectors.klaviyo.constants import EVENT_TYPE_METRICS
    from sendflowr.events import EventType

    return {EVENT_TYPE_METRICS[EventType(t)]: n for t, n in rt.events.count_by_type(TENANT).items()}


def test_backfill_stores_exactly_what_klaviyo_serves(
    rt: Runtime, sim: SimApp, brand: Brand
) -> None:
    seen: list[float] = []
    final = _run(rt, sim, _job(rt), on_progress=lambda j: seen.append(j.progress))
    assert final.status == "completed", final.error
    expected = _served(brand)
    assert _stored_by_metric(rt) == expected
    assert rt.events.count_events(TENANT) == sum(expected.values()) == final.events
    assert seen == sorted(seen)  # progress only moves forward
    assert seen[-1] == 1.0
    # Machine opens are recognised from the event properties.
    summary = rt.events.daily_counts(TENANT)
    assert sum(m for *_, m in summary) == brand.machine_opens
    # Campaigns and flows were fetched for the summaries.
    counts = rt.catalog.counts(TENANT)
    assert counts["campaign"] == len(brand.campaigns)
    assert counts["flow"] == len(brand.flows)
    # Running it again stores nothing twice.
    again = _run(rt, sim, _job(rt))
    assert again.status == "completed"
    assert rt.events.count_events(TENANT) == sum(expected.values())


def test_transient_faults_are_retried(rt: Runtime, sim: SimApp, brand: Brand) -> None:
    async def inject() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=SIM_URL) as c:
            for kind in ("5xx", "truncate", "429_storm"):
                r = await c.post(
                    "/_sim/faults",
                    json={"kind": kind, "count": 2, "path_prefix": "/api/events"},
                )
                assert r.status_code < 300, r.text

    asyncio.run(inject())
    final = _run(rt, sim, _job(rt))
    assert final.status == "completed", final.error
    assert rt.events.count_events(TENANT) == sum(_served(brand).values())


def test_crash_mid_run_resumes_without_gap_or_duplicate(
    rt: Runtime, sim: SimApp, brand: Brand
) -> None:
    class Crash(BaseException):
        pass

    pages = 0

    def crash_after_some_pages(job: Job) -> None:
        nonlocal pages
        pages += 1
        if pages == 25:
            raise Crash

    job = _job(rt)
    with pytest.raises(Crash):
        _run(rt, sim, job, on_progress=crash_after_some_pages, worker="dead-host:1")
    midway = rt.backfills.get_job(job.id)
    assert midway.status == "in_progress"
    assert 0 < midway.done_units < midway.total_units
    # The crashed worker stopped heartbeating: a new worker takes the job over.
    runner = BackfillRunner(
        rt,
        RunnerOptions(concurrency=4, page_size=100, stale_after=timedelta(0)),
        client_factory=_factory(sim),
    )
    claimed = runner.claim()
    assert claimed is not None
    assert claimed.id == job.id
    final = asyncio.run(runner.run(claimed))
    assert final.status == "completed", final.error
    assert _stored_by_metric(rt) == _served(brand)


def test_cancel_then_retry_completes(rt: Runtime, sim: SimApp, brand: Brand) -> None:
    job = _job(rt)

    def cancel_early(j: Job) -> None:
        if j.done_units == 5:
            rt.backfills.request_cancel(TENANT)

    cancelled = _run(rt, sim, job, on_progress=cancel_early)
    assert cancelled.status == "cancelled"
    assert rt.events.count_events(TENANT) < sum(_served(brand).values())
    retried = rt.backfills.retry(TENANT)
    assert retried.status == "queued"
    final = _run(rt, sim, retried)
    assert final.status == "completed", final.error
    assert _stored_by_metric(rt) == _served(brand)


def test_unreachable_klaviyo_fails_the_job_with_the_reason(rt: Runtime) -> None:
    def broken(_tenant: str) -> KlaviyoClient:
        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("connection refused", request=request)

        return KlaviyoClient(
            ApiKeyAuth(API_KEY),
            base_url=SIM_URL,
            transport=httpx.MockTransport(refuse),
            retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01),
        )

    runner = BackfillRunner(rt, RunnerOptions(), client_factory=broken)
    job = _job(rt)
    claimed = runner.claim(job.id)
    assert claimed is not None
    final = asyncio.run(runner.run(claimed))
    assert final.status == "failed"
    assert final.error is not None
    assert "Klaviyo" in final.error


def test_routes_status_summary_and_orders(rt: Runtime, sim: SimApp, brand: Brand) -> None:
    from sendflowr.api import create_app

    with TestClient(create_app(rt.settings, runtime=rt), headers=ADMIN_HEADERS) as client:
        assert client.post("/api/connector/backfill/nobody").status_code == 404
        bad = client.post(f"/api/connector/backfill/{TENANT}?days=0")
        assert bad.status_code == 422
        started = client.post(f"/api/connector/backfill/{TENANT}?days=30")
        assert started.status_code == 202, started.text
        assert started.json()["status"] == "queued"
        assert client.post(f"/api/connector/backfill/{TENANT}").status_code == 409
        queued = client.get("/api/connector/backfill/status").json()
        assert [(t["tenant"], t["job"]["status"]) for t in queued] == [(TENANT, "queued")]

        final = _run(rt, sim, rt.backfills.get_job(started.json()["job_id"]))
        assert final.status == "completed"
        status = client.get(f"/api/connector/backfill/status/{TENANT}").json()
        assert status["progress_percent"] == 100.0
        assert {m["metric"] for m in status["metrics"]} >= {"Opened Email", "Placed Order"}

        summary = client.get(f"/api/connector/backfill/data/{TENANT}/summary").json()
        served = _served(brand)
        assert summary["orders"] == served.get("Placed Order", 0) > 0
        [usd] = summary["revenue"]
        assert usd["currency"] == "USD"
        assert usd["average_order_value"] == pytest.approx(usd["revenue"] / usd["orders"], 0.01)
        assert summary["campaigns"] == len(brand.campaigns)

        page = client.get(f"/api/connector/backfill/data/{TENANT}/orders?limit=5").json()
        assert page["total"] == summary["orders"]
        assert len(page["orders"]) == min(5, page["total"])
        order = page["orders"][0]
        assert order["value"] > 0
        assert order["items"]
        day = order["occurred_at"][:10]
        by_day = client.get(f"/api/connector/backfill/data/{TENANT}/orders?date={day}").json()
        assert all(o["occurred_at"].startswith(day) for o in by_day["orders"])
        assert (
            client.get(f"/api/connector/backfill/data/{TENANT}/orders?date=2024-13-01").status_code
            == 422
        )

        assert client.post(f"/api/connector/backfill/{TENANT}/retry").status_code == 409
        cleared = client.delete(f"/api/connector/backfill/{TENANT}")
        assert cleared.json()["jobs_deleted"] == 1


def test_a_backfill_of_years_goes_back_calendar_years_and_days_with_years_is_refused(
    rt: Runtime,
) -> None:
    from sendflowr.api import create_app

    with TestClient(create_app(rt.settings, runtime=rt), headers=ADMIN_HEADERS) as client:
        both = client.post(f"/api/connector/backfill/{TENANT}?days=30&years=1")
        assert both.status_code == 422, both.text
        [problem] = both.json()["detail"]
        assert problem["loc"] == ["query", "years"]
        assert "not both" in problem["msg"]
        all_both = client.post("/api/connector/backfill/start-all?days=30&years=1")
        assert all_both.status_code == 422, all_both.text
        assert rt.backfills.latest_job(TENANT, "klaviyo") is None  # nothing queued
        before = datetime.now(UTC)
        started = client.post(f"/api/connector/backfill/{TENANT}?years=2")
        assert started.status_code == 202, started.text
        after = datetime.now(UTC)
    job = rt.backfills.get_job(started.json()["job_id"])
    assert before <= job.range_end <= after
    # a calendar span (the same instant two years before), not 730 days
    assert job.range_start == job.range_end.replace(year=job.range_end.year - 2)
