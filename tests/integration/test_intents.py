"""Intents, schedules and the executor against the Klaviyo simulator over loopback: CRUD with
history and binding checks, capacity-aware schedules, firing with unique ids, cancel and
reschedule, hot paths, and moving an intent to the webhook ESP mid-campaign."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.execution.executor import Executor, ExecutorOptions
from sendflowr.execution.registry import dispatchers
from sendflowr.execution.webhook_sink import WebhookSink
from sendflowr.identity.hashing import hash_email
from sendflowr.klaviyo_sim import SimServerConfig, run_in_thread
from sendflowr.klaviyo_sim.brand import TRIGGER_METRIC
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from tests.conftest import ADMIN_HEADERS, keyed_settings

pytestmark = pytest.mark.network

API_KEY = "pk_sim_intents_test"
TENANT = "brand"
SINK_SECRET = "sink-secret-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    config = SimServerConfig(
        tenant="simbrand", profiles=200, days=7, api_keys=(API_KEY,), rate_limits=False
    )
    base_url, stop = run_in_thread(config)
    try:
        yield base_url
    finally:
        stop()


@pytest.fixture
def sim(sim_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim_url, timeout=10) as c:
        c.delete("/_sim/stats")
        c.delete("/_sim/faults")
        yield c


@pytest.fixture
def rt(settings: Settings, sim_url: str) -> Iterator[Runtime]:
    keyed = keyed_settings(settings)
    runtime = Runtime.open(keyed)
    try:
        runtime.metadata.create_tenant(Tenant(TENANT, "Brand", "UTC"))
        runtime.accounts.connect(
            TENANT, "klaviyo", "api_key", {"api_key": API_KEY}, api_url=sim_url
        )
        yield runtime
    finally:
        drop = getattr(runtime.events, "drop_database", None)
        if drop is not None:
            drop()
        runtime.close()


@pytest.fixture
def api(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt.settings, runtime=rt), headers=ADMIN_HEADERS) as c:
        yield c


def _intent(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "intent_id": "newsletter",
        "name": "Weekly newsletter",
        "description": "the Thursday letter",
        "window_seconds": 6 * 3600,
        "hot_path_signals": [{"event_type": "site_visit", "within_seconds": 1800}],
        "suppression_sources": ["unsubscribed"],
        "binding": {"esp": "klaviyo", "metric_name": TRIGGER_METRIC},
    }
    body.update(overrides)
    return body


def _recipients(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"type": "email", "value": f"person{i}@example.test"} for i in range(start, start + n)]


async def _drain(executor: Executor) -> int:
    """Executor passes until nothing is due; returns the sends made."""
    sent = 0
    for _ in range(50):
        tally = await executor.run_once()
        sent += tally.sent
        if not tally.claimed:
            break
    return sent


def _fire_all(rt: Runtime, executor: Executor) -> int:
    return asyncio.run(_drain(executor))


def _executor(rt: Runtime, **options: Any) -> Executor:
    return Executor(rt, dispatchers(rt), options=ExecutorOptions(**options))


# -- intents -----------------------------------------------------------------------------------


def test_intent_crud_with_history_and_versions(api: TestClient) -> None:
    created = api.post(
        f"/api/tenants/{TENANT}/intents", json=_intent(), headers={"X-SendFlowr-Actor": "ana"}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["version"] == 1
    assert body["binding"] == {"esp": "klaviyo", "metric_name": TRIGGER_METRIC}
    assert api.post(f"/api/tenants/{TENANT}/intents", json=_intent()).status_code == 409

    change = _intent(name="Newsletter", window_seconds=3 * 3600, version=1)
    del change["intent_id"]
    updated = api.put(
        f"/api/tenants/{TENANT}/intents/newsletter",
        json=change,
        headers={"X-SendFlowr-Actor": "bo"},
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == 2
    stale = api.put(f"/api/tenants/{TENANT}/intents/newsletter", json=change)
    assert stale.status_code == 409
    assert "version 2" in stale.text

    history = api.get(f"/api/tenants/{TENANT}/intents/newsletter/history").json()
    assert [(h["version"], h["action"], h["actor"]) for h in history] == [
        (2, "updated", "bo"),
        (1, "created", "ana"),
    ]
    assert history[0]["changes"] == {
        "name": ["Weekly newsletter", "Newsletter"],
        "window_seconds": [21600, 10800],
    }
    assert [i["intent_id"] for i in api.get(f"/api/tenants/{TENANT}/intents").json()] == [
        "newsletter"
    ]
    assert api.delete(f"/api/tenants/{TENANT}/intents/newsletter").status_code == 204
    assert api.get(f"/api/tenants/{TENANT}/intents/newsletter").status_code == 404
    history = api.get(f"/api/tenants/{TENANT}/intents/newsletter/history").json()
    assert history[0]["action"] == "deleted"


@pytest.mark.parametrize(
    ("change", "loc", "words"),
    [
        ({"binding": {"esp": "klaviyo", "metric_name": "No Such Metric"}},
         ["body", "binding", "metric_name"], "no metric 'No Such Metric'"),
        ({"binding": {"esp": "klaviyo", "metric_name": TRIGGER_METRIC, "campaign_id": "NOPE1"}},
         ["body", "binding", "campaign_id"], "no campaign 'NOPE1'"),
        ({"binding": {"esp": "webhook", "event": "send"}},
         ["body", "binding", "esp"], "has not connected ESP 'webhook'"),
        ({"binding": {"esp": "mailchimp"}}, ["body", "binding", "esp"], "unknown ESP"),
        ({"binding": {"esp": "klaviyo"}}, ["body", "binding", "metric_name"], "metric"),
        ({"intent_id": "Bad Id!"}, ["body", "intent_id"], "lower-case"),
        ({"hot_path_signals": [{"event_type": "teleported"}]},
         ["body", "hot_path_signals", 0, "event_type"], "one of"),
        ({"suppression_sources": ["moon_phase"]}, ["body", "suppression_sources"], "unknown"),
        ({"window_seconds": 15 * 86400}, ["body", "window_seconds"], "less than or equal"),
    ],
)  # fmt: skip
def test_bad_intents_are_refused_naming_the_field(
    api: TestClient, change: dict[str, Any], loc: list[Any], words: str
) -> None:
    resp = api.post(f"/api/tenants/{TENANT}/intents", json=_intent(**change))
    assert resp.status_code == 422, resp.text
    errors = resp.json()["detail"]
    assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors


def test_every_bad_field_is_reported_at_once(api: TestClient) -> None:
    """A form shows all its mistakes together: the id, a hot path, the suppressions and the
    binding's shape in one answer (the account is not asked while anything else is wrong)."""
    body = _intent(
        intent_id="Bad Id!",
        hot_path_signals=[{"event_type": "teleported", "within_seconds": 60}],
        suppression_sources=["moon_phase"],
        binding={"esp": "klaviyo", "metric_name": "No Such Metric", "campaign_id": "bad id"},
    )
    resp = api.post(f"/api/tenants/{TENANT}/intents", json=body)
    assert resp.status_code == 422, resp.text
    locs = [e["loc"] for e in resp.json()["detail"]]
    assert locs == [
        ["body", "intent_id"],
        ["body", "hot_path_signals", 0, "event_type"],
        ["body", "suppression_sources"],
        ["body", "binding", "campaign_id"],
    ]


def test_unknown_tenant_is_404(api: TestClient) -> None:
    assert api.post("/api/tenants/nobody/intents", json=_intent()).status_code == 404


# -- schedules and the executor ---------------------------------------------------------------


def _create(api: TestClient, **overrides: Any) -> None:
    resp = api.post(f"/api/tenants/{TENANT}/intents", json=_intent(**overrides))
    assert resp.status_code == 201, resp.text


def _schedule(api: TestClient, recipients: list[dict[str, str]], **body: Any) -> dict[str, Any]:
    resp = api.post(
        "/api/intents/newsletter/schedule",
        json={"tenant": TENANT, "audience": {"recipients": recipients}, **body},
    )
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


def _now_window(minutes: int = 1) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "send_after": now.isoformat(),
        "send_before": (now + timedelta(minutes=minutes)).isoformat(),
    }


def test_schedule_fires_each_trigger_once_with_its_decision_id(
    api: TestClient, rt: Runtime, sim: httpx.Client
) -> None:
    _create(api, latency_seconds=0)
    out = _schedule(api, _recipients(40), **_now_window(2))
    assert out["audience"] == 40
    assert out["triggers"] == {"scheduled": 40}
    assert out["esp"] == "klaviyo"
    # Klaviyo's bulk ceiling, 150 jobs of 1,000 events a minute, 95% of it bookable
    assert out["summary"]["ceiling_per_minute"] == 150_000
    assert out["capacity_per_minute"] == 142_500
    triggers = rt.triggers.page(out["schedule_id"], limit=1000)
    explained = api.get(f"/timing/explanations/{triggers[0].explanation_ref}?tenant={TENANT}")
    assert explained.status_code == 200, explained.text
    assert explained.json()["intent_id"] == "newsletter"

    executor = _executor(rt, lease=timedelta(seconds=60))
    late = datetime.now(UTC) + timedelta(minutes=3)
    executor.clock = lambda: late  # every trigger is due
    assert _fire_all(rt, executor) == 40
    stats = sim.get("/_sim/stats", params={"include_ids": "true"}).json()["created_events"]
    assert sorted(stats["unique_ids"]) == sorted(t.decision_id for t in triggers)
    assert stats["repeated_unique_ids"] == {}
    ops = sim.get("/_sim/stats").json()["operations"]
    assert any("event-bulk-create-jobs" in op for op in ops), ops  # several due: one bulk job
    done = api.get(f"/api/schedules/{out['schedule_id']}", params={"tenant": TENANT}).json()
    assert done["triggers"] == {"sent": 40}
    assert _fire_all(rt, executor) == 0  # nothing fires twice


def test_capacity_is_never_exceeded_and_moves_are_explained(api: TestClient, rt: Runtime) -> None:
    sink = WebhookSink(SINK_SECRET)
    sink.start()
    try:
        resp = api.put(
            f"/api/tenants/{TENANT}/accounts/webhook",
            json={"url": sink.url, "secret": SINK_SECRET, "requests_per_minute": 2},
        )
        assert resp.status_code in (200, 201), resp.text
        _create(api, binding={"esp": "webhook", "event": "newsletter", "max_batch": 5})
        # ceiling 2 requests x 5 sends = 10 a minute; 95% of it: 9 a minute
        out = _schedule(api, _recipients(60), **_now_window(60))
        assert out["capacity_per_minute"] == 9
        triggers = rt.triggers.page(out["schedule_id"], limit=1000)
        per_minute = Counter(t.trigger_at.replace(second=0) for t in triggers)
        assert max(per_minute.values()) <= 9
        assert len(triggers) == 60
        assert out["summary"]["moved"] >= 60 - 9
        moved = [
            api.get(f"/timing/explanations/{t.explanation_ref}?tenant={TENANT}").json()
            for t in triggers[-3:]
        ]
        assert any("esp_capacity" in e["policies"] for e in moved), moved
        # a second campaign books around the first
        second = _schedule(api, _recipients(20, start=100), **_now_window(60))
        both = rt.triggers.page(out["schedule_id"], limit=1000) + rt.triggers.page(
            second["schedule_id"], limit=1000
        )
        per_minute = Counter(t.trigger_at.replace(second=0) for t in both)
        assert max(per_minute.values()) <= 9
    finally:
        sink.stop()


def test_an_audience_beyond_the_window_capacity_is_refused(api: TestClient) -> None:
    sink = WebhookSink(SINK_SECRET)
    sink.start()
    try:
        api.put(
            f"/api/tenants/{TENANT}/accounts/webhook",
            json={"url": sink.url, "secret": SINK_SECRET, "requests_per_minute": 1},
        )
        _create(api, binding={"esp": "webhook", "event": "newsletter", "max_batch": 1})
        resp = api.post(
            "/api/intents/newsletter/schedule",
            json={"tenant": TENANT, "audience": {"recipients": _recipients(30)}, **_now_window(5)},
        )
        assert resp.status_code == 422, resp.text
        assert resp.json()["detail"][0]["loc"] == ["body", "audience"]
    finally:
        sink.stop()


@pytest.mark.parametrize(
    ("audience", "loc"),
    [
        ({"recipients": [{"type": "email", "value": "not-an-email"}]},
         ["body", "audience", "recipients", 0, "value"]),
        ({}, ["body", "audience"]),
        ({"recipients": [], "klaviyo_list_id": "X"}, ["body", "audience"]),
        ({"klaviyo_list_id": "NoSuchList"}, ["body", "audience", "klaviyo_list_id"]),
    ],
)  # fmt: skip
def test_bad_audiences_are_refused(
    api: TestClient, audience: dict[str, Any], loc: list[Any]
) -> None:
    _create(api)
    resp = api.post(
        "/api/intents/newsletter/schedule",
        json={"tenant": TENANT, "audience": audience, **_now_window(60)},
    )
    assert resp.status_code == 422, resp.text
    assert any(e["loc"] == loc for e in resp.json()["detail"]), resp.json()


def test_bad_windows_are_refused(api: TestClient) -> None:
    _create(api)
    now = datetime.now(UTC)
    resp = api.post(
        "/api/intents/newsletter/schedule",
        json={
            "tenant": TENANT,
            "audience": {"recipients": _recipients(1)},
            "send_after": (now - timedelta(hours=3)).isoformat(),
            "send_before": (now - timedelta(hours=2)).isoformat(),
        },
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "send_before"]


def test_a_klaviyo_list_is_read_through_the_api(api: TestClient) -> None:
    _create(api)
    resp = api.post(
        "/api/intents/newsletter/schedule",
        json={"tenant": TENANT, "audience": {"klaviyo_list_id": "SimList"}, **_now_window(120)},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["audience"] > 0


def test_cancel_and_reschedule(api: TestClient, rt: Runtime) -> None:
    _create(api)
    out = _schedule(api, _recipients(10), **_now_window(120))
    sid = out["schedule_id"]
    person = rt.triggers.page(sid, limit=1)[0]
    # one person, re-decided in place within a later window
    later = datetime.now(UTC) + timedelta(hours=3)
    resp = api.post(
        f"/api/schedules/{sid}/reschedule",
        json={
            "tenant": TENANT,
            "universal_id": person.universal_id,
            "send_after": later.isoformat(),
            "send_before": (later + timedelta(hours=1)).isoformat(),
        },
    )
    assert resp.status_code == 200, resp.text
    mine = rt.triggers.open_for(TENANT, [person.universal_id])
    assert len(mine) == 1
    assert mine[0].target_at >= later.replace(second=0, microsecond=0)
    assert mine[0].decision_id != person.decision_id
    assert rt.triggers.get(person.decision_id).status == "cancelled"
    # one person cancelled
    cancel = api.post(
        f"/api/schedules/{sid}/cancel",
        json={"tenant": TENANT, "universal_id": mine[0].universal_id},
    )
    assert cancel.json() == {"cancelled": 1}
    # the campaign moved to a new window: the other nine, planned again
    moved = api.post(
        f"/api/schedules/{sid}/reschedule",
        json={"tenant": TENANT, **_now_window(240)},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["audience"] == 9
    assert moved.json()["schedule_id"] != sid
    left = api.get(f"/api/schedules/{sid}", params={"tenant": TENANT}).json()
    assert left["triggers"] == {"cancelled": 11}
    assert left["status"] == "rescheduled"
    # the new campaign cancelled whole
    assert api.post(
        f"/api/schedules/{moved.json()['schedule_id']}/cancel", json={"tenant": TENANT}
    ).json() == {"cancelled": 9}


def _engaged_daily_at(rt: Runtime, people: int, at: datetime) -> None:
    """A fortnight of history: each person gets an email 5 minutes before `at`'s time of day
    and clicks it, every day, so their curves (and the audience's) peak then whatever the
    clock says."""
    events = []
    for p in range(people):
        ids = Identifiers(email_hash=hash_email(rt.hash_key, f"person{p}@example.test"))
        for day in range(1, 15):
            clicked = at - timedelta(days=day)
            for kind, when in (
                (EventType.RECEIVED, clicked - timedelta(minutes=5)),
                (EventType.CLICKED, clicked),
            ):
                events.append(
                    CanonicalEvent(
                        tenant=TENANT,
                        esp="klaviyo",
                        esp_event_id=f"history-{p}-{day}-{kind}",
                        event_type=kind,
                        occurred_at=when,
                        identifiers=ids,
                    )
                )
    rt.pipeline.process(events)


def test_a_hot_path_signal_promotes_the_send(api: TestClient, rt: Runtime) -> None:
    _create(api)
    now = datetime.now(UTC)
    # the people engage six hours from now of day (strangers would follow the global prior,
    # whose peak may be minutes away at some times of day)
    _engaged_daily_at(rt, 3, now + timedelta(hours=6))
    out = _schedule(
        api,
        _recipients(3),
        send_after=now.isoformat(),
        send_before=(now + timedelta(hours=24)).isoformat(),
    )
    planned = {t.universal_id: t for t in rt.triggers.page(out["schedule_id"])}
    # their curves peak later in the day: a promotion has room to act
    assert min(t.target_at for t in planned.values()) > now + timedelta(minutes=10)
    assert rt.hot_paths is not None
    rt.hot_paths.invalidate()
    # person0 visits the site: the event carries the keyed hash of their address
    visit = CanonicalEvent(
        tenant=TENANT,
        esp="klaviyo",
        esp_event_id="visit-1",
        event_type=EventType.SITE_VISIT,
        occurred_at=datetime.now(UTC) - timedelta(minutes=2),
        identifiers=Identifiers(email_hash=hash_email(rt.hash_key, "person0@example.test")),
    )
    rt.pipeline.process([visit])
    after = rt.triggers.page(out["schedule_id"], status="scheduled")
    promoted = [t for t in after if t.promoted]
    assert len(promoted) == 1, after
    assert promoted[0].target_at <= datetime.now(UTC) + timedelta(minutes=3)
    assert promoted[0].universal_id in planned
    assert rt.triggers.get(planned[promoted[0].universal_id].decision_id).status == "cancelled"
    exp = api.get(f"/timing/explanations/{promoted[0].explanation_ref}?tenant={TENANT}").json()
    assert "hot_path" in exp["policies"]


def test_moving_an_intent_to_the_webhook_esp_mid_campaign(
    api: TestClient, rt: Runtime, sim: httpx.Client
) -> None:
    """The portability promise: half a campaign goes out through Klaviyo, the intent's binding
    is changed to the webhook ESP (configuration only), and the rest goes out there. Every
    decision reaches exactly one ESP, once."""
    sink = WebhookSink(SINK_SECRET)
    sink.start()
    try:
        put = api.put(
            f"/api/tenants/{TENANT}/accounts/webhook",
            json={"url": sink.url, "secret": SINK_SECRET, "requests_per_minute": 600},
        )
        assert put.status_code in (200, 201), put.text
        _create(api, latency_seconds=0)
        out = _schedule(api, _recipients(30), **_now_window(2))
        ids = {t.decision_id for t in rt.triggers.page(out["schedule_id"], limit=100)}
        executor = _executor(rt, claim_limit=12)
        late = datetime.now(UTC) + timedelta(minutes=3)
        executor.clock = lambda: late

        async def campaign() -> tuple[Any, int]:
            # one event loop for the executor's clients, as in a worker process
            first = await executor.run_once()  # one pass: 12 triggers through Klaviyo
            change = _intent(binding={"esp": "webhook", "event": "newsletter"}, version=1)
            del change["intent_id"]
            moved = await asyncio.to_thread(
                api.put, f"/api/tenants/{TENANT}/intents/newsletter", json=change
            )
            assert moved.status_code == 200, moved.text
            rest = await _drain(executor)
            await executor.aclose()
            return first, rest

        first, rest = asyncio.run(campaign())
        assert first.sent == 12
        assert first.by_esp == {"klaviyo": 12}
        assert rest == 18
        history = api.get(f"/api/tenants/{TENANT}/intents/newsletter/history").json()
        assert history[0]["changes"]["binding"][1] == {"event": "newsletter", "max_batch": 100}
        assert history[0]["changes"]["esp"] == ["klaviyo", "webhook"]
        created = sim.get("/_sim/stats", params={"include_ids": "true"}).json()
        via_klaviyo = set(created["created_events"]["unique_ids"])
        via_webhook = set(sink.seen)
        assert len(via_klaviyo) == 12
        assert len(via_webhook) == 18
        assert via_klaviyo | via_webhook == ids
        assert not via_klaviyo & via_webhook
        assert sink.stats.duplicates == 0
        sent = rt.triggers.page(out["schedule_id"], limit=100)
        assert Counter(t.sent_via for t in sent) == {"klaviyo": 12, "webhook": 18}
        payload = sink.payloads[-1]
        assert payload["intent_id"] == "newsletter"
        assert payload["event"] == "newsletter"
    finally:
        sink.stop()
