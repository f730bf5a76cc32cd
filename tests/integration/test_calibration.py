"""A tenant's confidence map in production: fitted on its past decisions (explanation rows,
the engine's own confidence) and what followed them (deliveries and real engagements in the
event store) when its audience is built, applied to every decision's stated confidence, and
recorded in the explanation. On chDB + SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from sendflowr.decisions import decide_many, explain_in_words
from sendflowr.events import EventType, Identifiers
from sendflowr.identity.identifiers import EMAIL, Identifier
from sendflowr.intents import Intent
from sendflowr.runtime import Runtime
from sendflowr.scheduling.audience import Recipient
from sendflowr.scheduling.service import ScheduleRequest, schedule
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing.explanation import Explanation
from sendflowr.timing.window import Window
from tests.conftest import ADMIN_HEADERS, keyed_settings, open_runtime
from tests.factories import email_hash, make_event

ZONE = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 3, 20, 9, 30, tzinfo=UTC)
PEOPLE = 40
DAYS = 15


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    with open_runtime(keyed_settings(settings)) as runtime:
        for tenant in ("acme", "newco"):
            runtime.metadata.ensure_tenant(Tenant(tenant, tenant.title(), ZONE.key))
        runtime.timing.clock = lambda: NOW
        yield runtime


def _event(tenant: str, n: int, person: int, kind: EventType, at: datetime, **kw: Any) -> Any:
    return make_event(n, tenant=tenant, person=person, event_type=kind, at=at, **kw)


def _stated(p: int) -> float:
    return 0.3 + 0.6 * p / (PEOPLE - 1)


def _history(rt: Runtime, tenant: str, *, split_ids: bool = False) -> tuple[list[str], int, int]:
    """Each person was sent a timed message at 10:00 UTC on each of DAYS days, stated at
    `_stated(p)`; on a share of half that of the days they opened it at 10:07 (really), on
    the others a machine fetched it at delivery (flagged by the connector on even days, not on
    odd ones). One more decision each, at 15:00, was never sent (no delivery). With
    `split_ids`, the real opens arrived under another identifier (a second universal id),
    merged into the person afterwards. Returns the ids, the decisions acted on and how many
    came true."""
    events, rows, n, acted, hits = [], [], 0, 0, 0
    for p in range(PEOPLE):
        opened_days = round(DAYS * _stated(p) / 2)
        for d in range(DAYS):
            target = (NOW - timedelta(days=d + 2)).replace(hour=10, minute=0, second=0)
            events.append(_event(tenant, n, p, EventType.RECEIVED, target + timedelta(seconds=20)))
            n += 1
            if d < opened_days:
                at = target + timedelta(minutes=7)
                other = Identifiers(esp_profile_id=f"K{p}") if split_ids else None
                events.append(_event(tenant, n, p, EventType.OPENED, at, identifiers=other))
                hits += 1
            else:
                at = target + timedelta(seconds=21)
                flagged = d % 2 == 0
                events.append(_event(tenant, n, p, EventType.OPENED, at, machine=flagged))
            n += 1
            acted += 1
            rows.append((p, target))
        rows.append((p, (NOW - timedelta(days=3)).replace(hour=15, minute=0, second=0)))
    rt.pipeline.process(events)
    if split_ids:  # an event naming both identifiers merges the two ids of each person
        link = (NOW - timedelta(days=1)).replace(hour=3)
        rt.pipeline.process(
            [
                _event(
                    tenant,
                    n + p,
                    p,
                    EventType.SITE_VISIT,
                    link,
                    identifiers=Identifiers(email_hash=email_hash(p), esp_profile_id=f"K{p}"),
                )
                for p in range(PEOPLE)
            ]
        )
        assert len(rt.identity.alias_map(tenant)) == PEOPLE
    uids = []
    for p in range(PEOPLE):
        uid = rt.identity.owner(tenant, Identifier(EMAIL, email_hash(p)))
        assert uid is not None
        uids.append(uid)
    rt.events.insert_explanations(
        [
            Explanation(
                tenant=tenant,
                explanation_ref=f"exp_{i:032x}",
                decision_id=f"dec-{i}",
                universal_id=uids[p],
                intent_id="",
                created_at=target - timedelta(hours=12),
                model_version="test",
                target_minute_utc=target,
                trigger_timestamp_utc=target - timedelta(seconds=45),
                confidence_score=0.99,  # what was stated then (another map): not fitted on
                fallback_level="personal",
                weight_personal=1.0,
                weight_audience=0.0,
                weight_global=0.0,
                machine_opens_excluded=0,
                model_confidence=_stated(p),
            )
            for i, (p, target) in enumerate(rows)
        ]
    )
    return uids, acted, hits


def _window() -> Window:
    start = NOW + timedelta(hours=1)
    return Window(start, start + timedelta(hours=24))


def test_past_decisions_and_their_outcomes_calibrate_what_is_stated(rt: Runtime) -> None:
    uids, acted, hits = _history(rt, "acme")
    now = int(NOW.timestamp())
    cal = rt.timing.audience("acme", ZONE, now).calibration
    assert cal is not None
    # the never-sent decisions are left out; machine opens are not engagement
    assert cal.decisions == acted == PEOPLE * DAYS
    assert cal.observed_rate == pytest.approx(hits / acted)
    # the model stated twice what happened: the map moves it most of the way to the half (a
    # bin of 50 decisions keeps 20 pseudo-decisions at what it stated: 2/7 of the way back)
    x = np.array([0.4, 0.6, 0.8])
    got = cal.apply(x)
    assert np.all(got > x / 2)
    assert np.all(got - x / 2 < 0.4 * (x - x / 2))
    assert cal.brier_after < cal.brier_before

    record = rt.timing.decide("acme", uids[5], True, ZONE, _window(), 60)
    d = record.decision
    assert d.model_confidence is not None
    assert d.confidence_score == pytest.approx(cal.apply_one(d.model_confidence))
    for _, score in d.alternatives:  # the alternatives are stated through it too
        assert score <= cal.calibrated[-1] + 1e-9
    e = rt.events.get_explanation("acme", record.explanation.explanation_ref)
    assert e is not None
    assert e.model_confidence == pytest.approx(d.model_confidence, rel=1e-6)
    assert e.confidence_score == pytest.approx(d.confidence_score, rel=1e-6)
    assert e.details["calibration"]["decisions"] == acted
    assert f"calibrated on this brand's {acted} past sends" in explain_in_words(e)

    batch = decide_many(rt.timing, "acme", [uids[1], uids[30], "sf_stranger"],
                        [True, True, False], ZONE, _window(), 60)  # fmt: skip
    b = batch.decisions
    assert b.model_confidence is not None
    np.testing.assert_allclose(b.confidence, cal.apply(b.model_confidence))
    row = rt.events.get_explanation("acme", batch.explanation_refs[1])
    assert row is not None
    assert row.model_confidence == pytest.approx(float(b.model_confidence[1]), rel=1e-6)
    assert row.details["calibration"]["decisions"] == acted


def test_a_tenant_without_enough_past_sends_states_the_model_confidence(rt: Runtime) -> None:
    _history(rt, "acme")  # another tenant's history does not count
    rt.pipeline.process(
        [
            _event("newco", 100_000 + i, 1, EventType.CLICKED, NOW - timedelta(days=i + 1))
            for i in range(9)
        ]
    )
    uid = rt.identity.owner("newco", Identifier(EMAIL, email_hash(1)))
    assert uid is not None
    assert rt.timing.audience("newco", ZONE, int(NOW.timestamp())).calibration is None
    record = rt.timing.decide("newco", uid, True, ZONE, _window(), 60)
    assert record.decision.model_confidence is None
    e = rt.events.get_explanation("newco", record.explanation.explanation_ref)
    assert e is not None
    assert "calibration" not in e.details
    assert e.model_confidence == pytest.approx(e.confidence_score)
    assert "calibrated" not in explain_in_words(e)


def test_a_schedule_states_its_planned_minutes_through_the_map(rt: Runtime) -> None:
    _history(rt, "acme")
    rt.accounts.connect(
        "acme", "webhook", "hmac",
        {"url": "http://127.0.0.1:9/hook", "secret": "s" * 32, "requests_per_minute": 600,
         "timeout_seconds": 10},
    )  # fmt: skip
    intent = rt.intents.create(
        Intent("acme", "newsletter", "News", "webhook", {"event": "news", "max_batch": 10}), "t"
    )
    people = [Recipient("email", f"reader{i}@acme.test") for i in range(3)]
    w = _window()
    out = schedule(rt, ScheduleRequest(intent, people, w.start, w.end), clock=lambda: NOW)
    cal = rt.timing.audience("acme", ZONE, int(NOW.timestamp())).calibration
    assert cal is not None
    triggers = rt.triggers.page(out.id, limit=10)
    assert len(triggers) == 3
    for t in triggers:
        e = rt.events.get_explanation("acme", t.explanation_ref)
        assert e is not None
        assert e.model_confidence is not None
        assert e.confidence_score == pytest.approx(cal.apply_one(e.model_confidence), rel=1e-6)
        assert e.confidence_score != pytest.approx(e.model_confidence)
        assert e.details["calibration"]["decisions"] == PEOPLE * DAYS


def test_the_api_shows_a_tenants_map_and_says_when_there_is_none(rt: Runtime) -> None:
    from fastapi.testclient import TestClient

    from sendflowr.api import create_app

    _history(rt, "acme")
    with TestClient(create_app(rt.settings, runtime=rt), headers=ADMIN_HEADERS) as api:
        got = api.get("/timing/calibration", params={"tenant": "acme"})
        assert got.status_code == 200, got.text
        body = got.json()
        cal = rt.timing.audience("acme", ZONE, int(NOW.timestamp())).calibration
        assert cal is not None
        assert body["calibrated"] is True
        assert body["decisions"] == PEOPLE * DAYS
        assert body["points"] == [
            {"stated": pytest.approx(x), "calibrated": pytest.approx(y)}
            for x, y in zip(cal.stated.tolist(), cal.calibrated.tolist(), strict=True)
        ]
        assert body["brier_after"] < body["brier_before"]
        assert body["summary"].startswith("Calibrated on 600 past sends")
        none = api.get("/timing/calibration", params={"tenant": "newco"}).json()
        assert none["calibrated"] is False
        assert none["points"] == []
        assert none["decisions"] is None
        assert "fewer than 200 past sends" in none["summary"]
        missing = api.get("/timing/calibration", params={"tenant": "nobody"})
        assert missing.status_code == 404
        bad = api.get("/timing/calibration", params={"tenant": "Not A Tenant!"})
        assert bad.status_code == 422
        assert "tenant" in bad.text


def test_a_merged_persons_engagements_under_their_other_id_count(rt: Runtime) -> None:
    """The opens arrived under a second id, merged into the person the decisions were made
    for after they were made: they are the person's outcomes all the same."""
    _, acted, hits = _history(rt, "acme", split_ids=True)
    cal = rt.timing.audience("acme", ZONE, int(NOW.timestamp())).calibration
    assert cal is not None
    assert cal.decisions == acted
    assert cal.observed_rate == pytest.approx(hits / acted)
