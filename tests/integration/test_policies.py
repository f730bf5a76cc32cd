"""Send policies end to end on the embedded deployment (chDB + SQLite): configuration API,
decisions, batches and schedules honouring quiet hours, caps, breakers and cool-offs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sendflowr.api import create_app
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.hashing import hash_email
from sendflowr.intents import Intent
from sendflowr.runtime import Runtime
from sendflowr.scheduling.audience import Recipient
from sendflowr.scheduling.service import ScheduleRequest, schedule
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.triggers import Schedule
from tests.conftest import ADMIN_HEADERS

T = "acme"
WARSAW = ZoneInfo("Europe/Warsaw")


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    # Tests claim triggers themselves: the app's in-process executor would race them for them.
    keyed = settings.model_copy(update={"secret_key": SecretStr(generate_key()), "executor": False})
    runtime = Runtime.open(keyed)
    try:
        yield runtime
    finally:
        drop = getattr(runtime.events, "drop_database", None)
        if drop is not None:
            drop()
        runtime.close()


@pytest.fixture
def api(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt.settings, runtime=rt), headers=ADMIN_HEADERS) as c:
        r = c.post("/api/tenants", json={"id": T, "name": "Acme", "timezone": "Europe/Warsaw"})
        assert r.status_code == 201, r.text
        yield c


def _event(
    rt: Runtime,
    who: str,
    kind: EventType,
    at: datetime,
    n: int,
    identifiers: Identifiers | None = None,
) -> CanonicalEvent:
    return CanonicalEvent(
        tenant=T,
        esp="klaviyo",
        esp_event_id=f"{who}-{kind}-{n}",
        event_type=kind,
        occurred_at=at,
        identifiers=identifiers
        or Identifiers(email_hash=hash_email(rt.hash_key, f"{who}@acme.test")),
    )


def _people(rt: Runtime, *names: str) -> None:
    """Each clicks at 23:00 Warsaw time every day of the last three weeks."""
    now = datetime.now(UTC)
    events = []
    for who in names:
        for d in range(1, 22):
            day = (now - timedelta(days=d)).astimezone(WARSAW).date()
            at = datetime(day.year, day.month, day.day, 23, 0, tzinfo=WARSAW)
            events.append(_event(rt, who, EventType.CLICKED, at, d))
    rt.pipeline.process(events)


def _decide(api: TestClient, who: str, **body: Any) -> dict[str, Any]:
    r = api.post(
        "/timing/decide",
        json={"tenant": T, "identifier": {"type": "email", "value": f"{who}@acme.test"}, **body},
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _explain(api: TestClient, ref: str) -> dict[str, Any]:
    r = api.get(f"/timing/explanations/{ref}", params={"tenant": T})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _put(api: TestClient, actor: str = "ops@acme", **body: Any) -> dict[str, Any]:
    r = api.put(f"/api/tenants/{T}/policy", json=body, headers={"X-SendFlowr-Actor": actor})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _quiet(t: str | None) -> bool:
    assert t is not None
    h = datetime.fromisoformat(t).astimezone(WARSAW).hour
    return h >= 21 or h < 8


def test_policy_configuration_defaults_updates_history_and_422s(api: TestClient) -> None:
    got = api.get(f"/api/tenants/{T}/policy").json()
    assert got["version"] == 0
    assert got["quiet_hours"] is None
    assert got["frequency_cap"] is None
    assert got["breakers"] == ["bounced", "spam_complaint", "unsubscribed"]
    assert got["order_cooloff_hours"] == 0
    assert got["exploration_share"] == 0
    out = _put(
        api,
        quiet_hours={"start": "22:00", "end": "07:30"},
        frequency_cap={"count": 3, "period_hours": 168},
        order_cooloff_hours=12,
        exploration_share=0.05,
    )
    assert out["version"] == 1
    assert out["quiet_hours"] == {"start": "22:00", "end": "07:30"}
    assert out["frequency_cap"] == {"count": 3, "period_hours": 168.0}
    assert api.get(f"/api/tenants/{T}/policy").json() == out
    assert _put(api, version=1, quiet_hours={"start": "22:00", "end": "07:30"})["version"] == 2
    stale = api.put(f"/api/tenants/{T}/policy", json={"version": 1})
    assert stale.status_code == 409
    history = api.get(f"/api/tenants/{T}/policy/history").json()
    assert [h["action"] for h in history] == ["updated", "updated"]
    assert history[0]["actor"] == "ops@acme"
    assert history[0]["changes"]["frequency_cap"][1] is None
    assert history[1]["changes"]["exploration_share"] == [0.0, 0.05]
    for body, loc in (
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, ["body", "quiet_hours", "start"]),
        ({"quiet_hours": {"start": "7:00", "end": "08:00"}}, ["body", "quiet_hours", "start"]),
        ({"quiet_hours": {"start": "07:00", "end": "07:00"}}, ["body", "quiet_hours", "end"]),
        ({"frequency_cap": {"count": 0, "period_hours": 24}}, ["body", "frequency_cap", "count"]),
        (
            {"frequency_cap": {"count": 2, "period_hours": 0}},
            ["body", "frequency_cap", "period_hours"],
        ),
        ({"order_cooloff_hours": -1}, ["body", "order_cooloff_hours"]),
        ({"exploration_share": 0.6}, ["body", "exploration_share"]),
        ({"breakers": ["unsubscribed", "moon_phase"]}, ["body", "breakers", 1]),
        ({"surprise": 1}, ["body", "surprise"]),
    ):
        r = api.put(f"/api/tenants/{T}/policy", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"][0]["loc"] == loc, r.text
    assert api.get("/api/tenants/nobody/policy").status_code == 404
    assert api.put("/api/tenants/nobody/policy", json={}).status_code == 404


def test_unsubscribed_person_is_suppressed_with_the_reason(api: TestClient, rt: Runtime) -> None:
    _people(rt, "anna", "ben")
    at = datetime.now(UTC) - timedelta(days=2)
    rt.pipeline.process([_event(rt, "ben", EventType.UNSUBSCRIBED, at, 1)])
    anna = _decide(api, "anna")
    assert anna["suppressed"] is False
    assert anna["target_minute_utc"] is not None
    ben = _decide(api, "ben")
    assert ben["suppressed"] is True
    assert ben["suppression"]["policy"] == "unsubscribed"
    assert "unsubscribed at" in ben["suppression"]["reason"]
    assert ben["target_minute_utc"] is None
    assert ben["trigger_timestamp_utc"] is None
    assert ben["confidence_score"] is None
    assert ben["alternatives"] == []
    exp = _explain(api, ben["explanation_ref"])
    assert exp["suppressed"] is True
    assert exp["policies"] == ["unsubscribed"]
    assert exp["target_minute_utc"] is None
    assert exp["details"]["suppressed"]["policy"] == "unsubscribed"
    assert exp["summary"].startswith("Suppressed by unsubscribed")
    # the legacy shape answers the same way
    r = api.post("/timing-decision", json={"tenant": T, "email": "ben@acme.test"})
    assert r.status_code == 200
    assert r.json()["suppressed"] is True
    # a tenant that turns the breaker off sends to Ben again
    _put(api, breakers=["bounced", "spam_complaint"])
    assert _decide(api, "ben")["suppressed"] is False


def test_a_breaker_event_stored_under_a_merged_id_suppresses_the_person(
    api: TestClient, rt: Runtime
) -> None:
    """The single decision reads the person and the ids merged into them in one query, and
    the breakers look at events under every one of those ids."""
    _people(rt, "carl")
    at = datetime.now(UTC) - timedelta(days=1)
    # the unsubscribe arrives under Carl's Klaviyo id alone: another person, for now
    alone = _event(rt, "carl", EventType.UNSUBSCRIBED, at, 1, Identifiers(esp_profile_id="K-carl"))
    rt.pipeline.process([alone])
    assert _decide(api, "carl")["suppressed"] is False
    both = Identifiers(
        email_hash=hash_email(rt.hash_key, "carl@acme.test"), esp_profile_id="K-carl"
    )
    link = _event(rt, "carl", EventType.OPENED, at, 2, both)
    rt.pipeline.process([link])  # one event with both ids: the two people are merged
    by_email = _decide(api, "carl")
    by_klaviyo = api.post(
        "/timing/decide",
        json={"tenant": T, "identifier": {"type": "klaviyo_id", "value": "K-carl"}},
    ).json()
    for answer in (by_email, by_klaviyo):
        assert answer["suppressed"] is True
        assert answer["suppression"]["policy"] == "unsubscribed"
    assert by_email["universal_id"] == by_klaviyo["universal_id"]


def test_quiet_hours_move_single_and_batch_decisions(api: TestClient, rt: Runtime) -> None:
    _people(rt, "anna")
    free = _decide(api, "anna")
    assert _quiet(free["target_minute_utc"])  # her clicks at 23:00 win without a policy
    _put(api, quiet_hours={"start": "21:00", "end": "08:00"})
    held = _decide(api, "anna")
    assert held["suppressed"] is False
    assert not _quiet(held["target_minute_utc"])
    assert held["policies"] == ["quiet_hours"]
    assert all(not _quiet(a["target_minute_utc"]) for a in held["alternatives"])
    exp = _explain(api, held["explanation_ref"])
    assert exp["policies"] == ["quiet_hours"]
    moved = exp["details"]["quiet_hours"]
    assert _quiet(moved["preferred_minute_utc"])
    assert moved["engagement_lost"] >= 0
    assert "Quiet hours" in exp["summary"]
    now = datetime.now(UTC)
    batch = api.post(
        "/timing/decide/batch",
        json={
            "tenant": T,
            "recipients": [
                {"type": "email", "value": "anna@acme.test"},
                {"type": "email", "value": "stranger@acme.test"},
            ],
            "send_after": now.isoformat(),
            "send_before": (now + timedelta(hours=24)).isoformat(),
        },
    )
    assert batch.status_code == 200, batch.text
    items = batch.json()["decisions"]
    assert all(not i["suppressed"] and not _quiet(i["target_minute_utc"]) for i in items)
    assert items[0]["policies"] == ["quiet_hours"]
    # a window entirely inside quiet hours: suppressed, with the reason, in batch and single
    day = (now + timedelta(days=1)).astimezone(WARSAW).date()
    night = {
        "send_after": datetime(day.year, day.month, day.day, 22, 0, tzinfo=WARSAW).isoformat(),
        "send_before": datetime(day.year, day.month, day.day, 23, 30, tzinfo=WARSAW).isoformat(),
    }
    single = _decide(api, "anna", **night)
    assert single["suppression"]["policy"] == "quiet_hours"
    assert "quiet hours 21:00-08:00 in Europe/Warsaw" in single["suppression"]["reason"]
    both = api.post(
        "/timing/decide/batch",
        json={
            "tenant": T,
            "recipients": [
                {"type": "email", "value": "anna@acme.test"},
                {"type": "email", "value": "stranger@acme.test"},
            ],
            **night,
        },
    ).json()
    assert both["suppressed"] == {"quiet_hours": 2}
    assert [i["suppressed"] for i in both["decisions"]] == [True, True]


def test_tenant_breaker_trips_and_resets(api: TestClient, rt: Runtime) -> None:
    _people(rt, "anna")
    r = api.post(
        f"/api/tenants/{T}/breaker",
        json={"reason": "wrong template in production"},
        headers={"X-SendFlowr-Actor": "oncall"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["suppressing"] is True
    assert r.json()["tenant_breaker"]["tripped_by"] == "oncall"
    out = _decide(api, "anna")
    assert out["suppression"] == {
        "policy": "tenant_breaker",
        "reason": "wrong template in production",
    }
    assert _explain(api, out["explanation_ref"])["policies"] == ["tenant_breaker"]
    assert api.post(f"/api/tenants/{T}/breaker", json={"reason": ""}).status_code == 422
    r = api.delete(f"/api/tenants/{T}/breaker", headers={"X-SendFlowr-Actor": "oncall"})
    assert r.status_code == 200
    assert r.json()["tenant_breaker"] is None
    assert _decide(api, "anna")["suppressed"] is False
    actions = [h["action"] for h in api.get(f"/api/tenants/{T}/policy/history").json()]
    assert actions == ["reset", "tripped"]


def _campaign(rt: Runtime, sid: str, esp: str, people: list[str], at: datetime) -> None:
    rt.triggers.create_schedule(
        Schedule(sid, T, "newsletter", esp, "scheduled", at, at + timedelta(hours=1), 0,
                 len(people), 100, {}, datetime.now(UTC)),
        (
            (f"{sid}-{i}", uid, "email", f"{uid}@acme.test", at, at, f"exp_{sid}{i}")
            for i, uid in enumerate(people)
        ),
    )  # fmt: skip


def test_esp_error_rate_breaker_trips_from_failed_triggers(api: TestClient, rt: Runtime) -> None:
    _people(rt, "anna")
    _put(api, esp_error_breaker={"rate": 0.5, "min_calls": 10, "window_minutes": 60})
    now = datetime.now(UTC)
    _campaign(rt, "sch_fail", "webhook", [f"p{i}" for i in range(12)], now - timedelta(minutes=5))
    claimed = rt.triggers.claim_due("w1", now, 100, timedelta(minutes=5))
    assert len(claimed) == 12
    ids = [t.decision_id for t in claimed]
    rt.triggers.mark_sent("w1", ids[:4], "webhook", now)
    assert _decide(api, "anna")["suppressed"] is False  # 0 failed of 4
    rt.triggers.mark_failed("w1", ids[4:], "HTTP 503 from the receiver")
    state = api.get(f"/api/tenants/{T}/breaker").json()
    assert state["esp"] == [
        {"esp": "webhook", "sent": 4, "failed": 8, "error_rate": pytest.approx(8 / 12),
         "tripped": True}
    ]  # fmt: skip
    assert state["suppressing"] is True
    assert state["tenant_breaker"] is None
    out = _decide(api, "anna")
    assert out["suppression"]["policy"] == "esp_error_rate"
    assert "8 of the last 12 calls to webhook failed" in out["suppression"]["reason"]
    # a stricter minimum of calls: not enough evidence, no trip
    _put(api, esp_error_breaker={"rate": 0.5, "min_calls": 50, "window_minutes": 60})
    assert _decide(api, "anna")["suppressed"] is False


def test_frequency_cap_and_order_cool_off_with_real_stores(api: TestClient, rt: Runtime) -> None:
    _people(rt, "anna", "ben")
    anna = rt.identity.owner(T, _ident(rt, "anna"))
    assert anna is not None
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    _campaign(rt, "sch_prev", "klaviyo", [anna], now + timedelta(hours=1))
    _put(api, frequency_cap={"count": 1, "period_hours": 24})
    window = {
        "send_after": now.isoformat(),
        "send_before": (now + timedelta(hours=12)).isoformat(),
    }
    capped = _decide(api, "anna", **window)
    assert capped["suppression"]["policy"] == "frequency_cap"
    assert "at most 1 sends per 24 h" in capped["suppression"]["reason"]
    assert _decide(api, "ben", **window)["suppressed"] is False
    longer = _decide(
        api, "anna", send_after=now.isoformat(), send_before=(now + timedelta(hours=40)).isoformat()
    )
    assert longer["suppressed"] is False
    assert datetime.fromisoformat(longer["target_minute_utc"]) >= now + timedelta(hours=25)
    # Ben ordered an hour ago: a 30-hour cool-off pushes him past it
    _put(api, order_cooloff_hours=30)
    rt.pipeline.process([_event(rt, "ben", EventType.ORDERED, now - timedelta(hours=1), 1)])
    ben = _decide(
        api, "ben", send_after=now.isoformat(), send_before=(now + timedelta(hours=48)).isoformat()
    )
    assert datetime.fromisoformat(ben["target_minute_utc"]) >= now + timedelta(hours=29)
    if "recent_order" in ben["policies"]:
        exp = _explain(api, ben["explanation_ref"])
        assert "cool-off" in exp["details"]["recent_order"]["reason"]


def _ident(rt: Runtime, who: str) -> Any:
    from sendflowr.identity.identifiers import parse_lookup

    return parse_lookup("email", f"{who}@acme.test", rt.hash_key, rt.identity.blocklist)


def test_schedule_excludes_suppressed_people_and_honours_quiet_hours(
    api: TestClient, rt: Runtime
) -> None:
    _people(rt, "anna", "ben", "cleo")
    rt.pipeline.process(
        [_event(rt, "ben", EventType.SPAM_COMPLAINT, datetime.now(UTC) - timedelta(days=1), 1)]
    )
    rt.accounts.connect(
        T, "webhook", "hmac",
        {"url": "http://127.0.0.1:9/hook", "secret": "s" * 32, "requests_per_minute": 600,
         "timeout_seconds": 10},
    )  # fmt: skip
    intent = rt.intents.create(
        Intent(T, "newsletter", "News", "webhook", {"event": "news", "max_batch": 10}), "test"
    )
    _put(api, quiet_hours={"start": "21:00", "end": "08:00"})
    now = datetime.now(UTC)
    people = [Recipient("email", f"{w}@acme.test") for w in ("anna", "ben", "cleo", "dora")]
    out = schedule(
        rt,
        ScheduleRequest(intent, people, now, now + timedelta(hours=24)),
    )
    assert out.audience == 4
    assert out.summary["suppressed"] == {"spam_complaint": 1}
    assert out.summary["policies"].get("quiet_hours", 0) >= 2  # Anna and Cleo click at 23:00
    triggers = rt.triggers.page(out.id, limit=10)
    assert len(triggers) == 3
    assert all(not _quiet(t.target_at.isoformat()) for t in triggers)
    ben = rt.identity.owner(T, _ident(rt, "ben"))
    assert ben not in {t.universal_id for t in triggers}
    exp = _explain(api, triggers[0].explanation_ref)
    assert exp["details"]["schedule_id"] == out.id
    # moving a person honours the policies too (the re-decision stays out of quiet hours)
    r = api.post(
        f"/api/schedules/{out.id}/reschedule",
        json={
            "tenant": T,
            "universal_id": triggers[0].universal_id,
            "send_after": now.isoformat(),
            "send_before": (now + timedelta(hours=20)).isoformat(),
        },
    )
    assert r.status_code == 200, r.text
    moved = rt.triggers.open_for(T, [triggers[0].universal_id])
    assert len(moved) == 1
    assert moved[0].decision_id != triggers[0].decision_id
    assert not _quiet(moved[0].target_at.isoformat())
