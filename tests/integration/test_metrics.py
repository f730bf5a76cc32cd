"""GET /metrics: counters move by exactly what was ingested and decided; the gauges read the
stores at scrape time (backfill progress, due and late triggers, consumer lag)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from sendflowr.storage.metadata.triggers import Schedule
from tests.conftest import ADMIN_HEADERS
from tests.factories import payload

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def quiet(settings: Settings) -> Iterator[tuple[TestClient, Runtime]]:
    """No background executor or backfill worker: the gauges must see exactly what we made."""
    from sendflowr.api import create_app

    cfg = settings.model_copy(update={"executor": False, "backfill_worker": False})
    rt = Runtime.open(cfg)
    try:
        rt.metadata.create_tenant(Tenant("acme", "Acme", "UTC"))
        with TestClient(create_app(cfg, runtime=rt), headers=ADMIN_HEADERS) as client:
            yield client, rt
    finally:
        rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
        rt.close()


def test_ingest_counters_move_by_what_was_accepted_stored_and_dead_lettered(
    quiet: tuple[TestClient, Runtime],
) -> None:
    client, rt = quiet
    before = scrape(client)
    assert client.post("/api/events", json={"events": [payload(n) for n in range(12)]}).is_success
    # The pipeline's own validation dead-letters what the bus hands it unvalidated.
    rt.bus.publish_payloads([payload(100), {"tenant": "acme", "bad": True}], source="probe")
    after = scrape(client)

    def moved(name: str, source: str) -> float:
        key = f"{name}_total"
        return value(after, key, source=source) - value(before, key, source=source)

    assert moved("sendflowr_events_accepted", "api") == 12
    assert moved("sendflowr_archive_rows", "api") == 12
    assert moved("sendflowr_events_stored", "api") == 12
    assert moved("sendflowr_events_stored", "probe") == 1
    assert moved("sendflowr_events_dead_lettered", "probe") == 1
    assert moved("sendflowr_events_dead_lettered", "api") == 0


def test_decision_latency_is_labelled_by_route_template(
    quiet: tuple[TestClient, Runtime],
) -> None:
    client, _ = quiet
    count = "sendflowr_decision_latency_seconds_count"
    labels = {"route": "/timing/decide", "method": "POST", "status": "200"}
    before = value(scrape(client), count, **labels)
    for n in range(3):
        r = client.post(
            "/timing/decide",
            json={"tenant": "acme", "identifier": {"type": "email", "value": f"p{n}@acme.test"}},
        )
        assert r.status_code == 200, r.text
    bad = client.post("/timing/decide", json={"tenant": "acme"})
    assert bad.status_code == 422
    ref = "exp_" + "0" * 32
    assert client.get(f"/timing/explanations/{ref}", params={"tenant": "acme"}).status_code == 404
    after = scrape(client)
    assert value(after, count, **labels) - before == 3
    assert value(after, count, route="/timing/decide", method="POST", status="422") >= 1
    # A path parameter is not a label: the route's template is.
    assert value(after, count, route="/timing/explanations/{ref}", method="GET", status="404") >= 1
    assert not any("exp_" in dict(k[1]).get("route", "") for k in after)
    # Other routes are not timed.
    assert not any(dict(k[1]).get("route") == "/metrics" for k in after)


def test_backfill_and_scheduler_gauges_read_the_stores(quiet: tuple[TestClient, Runtime]) -> None:
    client, rt = quiet
    now = datetime.now(UTC)
    job = rt.backfills.create_job("acme", "klaviyo", "backfill", now - timedelta(days=3), now)
    rt.backfills.add_units(job.id, [("m1", "Opened Email", f"2026-01-0{d}") for d in range(1, 5)])
    [unit, *_] = rt.backfills.units(job.id)
    rt.backfills.page_done(unit, 40, None, finished=True)

    minute = now.replace(second=0, microsecond=0)
    rows = [
        (f"d-late-{i}", "sf_a", "email", "a@x.test", minute - timedelta(minutes=10), minute, "r")
        for i in range(3)
    ] + [
        (f"d-due-{i}", "sf_a", "email", "a@x.test", minute - timedelta(seconds=1), minute, "r")
        for i in range(2)
    ] + [
        (f"d-future-{i}", "sf_a", "email", "a@x.test", minute + timedelta(hours=1), minute, "r")
        for i in range(4)
    ]  # fmt: skip
    rt.triggers.create_schedule(
        Schedule(
            id="sch_1", tenant="acme", intent_id="promo", esp="klaviyo", status="scheduled",
            window_start=now - timedelta(hours=1), window_end=now + timedelta(hours=2),
            latency_seconds=60, audience=9, capacity_per_minute=100, summary={}, created_at=now,
        ),
        rows,
    )  # fmt: skip

    samples = scrape(client)
    assert value(samples, "sendflowr_backfill_jobs", status="queued") == 1
    assert value(samples, "sendflowr_backfill_units_total", status="queued") == 4
    assert value(samples, "sendflowr_backfill_units_done", status="queued") == 1
    assert value(samples, "sendflowr_backfill_events", status="queued") == 40
    assert value(samples, "sendflowr_scheduler_due_triggers", status="scheduled") == 5
    assert value(samples, "sendflowr_scheduler_late_triggers", status="scheduled") == 3
    assert value(samples, "sendflowr_scheduler_due_triggers", status="sending") == 0
    for source in ("backfill", "scheduler", "consumer_lag"):
        assert value(samples, "sendflowr_metrics_source_up", source=source) == 1
    # The inline bus has no consumer group: no lag is reported.
    assert not any(k[0] == "sendflowr_consumer_lag" for k in samples)


def test_consumer_lag_comes_from_the_bus_hook(
    quiet: tuple[TestClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rt = quiet
    lag = {("email-events", 0): 7, ("email-events", 1): 0}
    monkeypatch.setattr(rt.bus, "consumer_lag", lambda: lag, raising=False)
    samples = scrape(client)
    assert value(samples, "sendflowr_consumer_lag", topic="email-events", partition="0") == 7
    assert value(samples, "sendflowr_consumer_lag", topic="email-events", partition="1") == 0

    def broken() -> dict[tuple[str, int], int]:
        raise RuntimeError("broker unreachable")

    monkeypatch.setattr(rt.bus, "consumer_lag", broken, raising=False)
    samples = scrape(client)  # a failing source never fails the scrape
    assert value(samples, "sendflowr_metrics_source_up", source="consumer_lag") == 0
    assert value(samples, "sendflowr_metrics_source_up", source="backfill") == 1
