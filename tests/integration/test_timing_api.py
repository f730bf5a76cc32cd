"""POST /timing/decide, /timing-decision and explanations, on the embedded deployment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.hashing import hash_email
from sendflowr.runtime import Runtime
from tests.conftest import HASH_KEY

WARSAW = ZoneInfo("Europe/Warsaw")


def _brand(client: TestClient, runtime: Runtime) -> None:
    r = client.post(
        "/api/tenants", json={"id": "acme", "name": "Acme", "timezone": "Europe/Warsaw"}
    )
    assert r.status_code == 201
    # Anna clicks at 09:10 Warsaw time every weekday of the last six weeks; Apple Mail also
    # "opens" every message for her the second it arrives at 06:00.
    now = datetime.now(UTC)
    events = []
    day = (now - timedelta(days=42)).astimezone(WARSAW).date()
    n = 0
    while day < now.astimezone(WARSAW).date():
        if day.weekday() < 5:
            at = datetime(day.year, day.month, day.day, 9, 10, tzinfo=WARSAW)
            sent = datetime(day.year, day.month, day.day, 6, 0, tzinfo=WARSAW)
            for kind, when, machine in (
                (EventType.OPENED, sent + timedelta(seconds=2), True),
                (EventType.CLICKED, at, False),
            ):
                n += 1
                events.append(
                    CanonicalEvent(
                        tenant="acme",
                        esp="klaviyo",
                        esp_event_id=f"anna-{n}",
                        event_type=kind,
                        occurred_at=when,
                        identifiers=Identifiers(
                            email_hash=hash_email(HASH_KEY.encode(), "anna@acme.test")
                        ),
                        is_machine_open=machine,
                    )
                )
        day += timedelta(days=1)
    runtime.pipeline.process(events)


def _decide(client: TestClient, **body: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "tenant": "acme",
        "identifier": {"type": "email", "value": "anna@acme.test"},
    }
    payload.update(body)
    r = client.post("/timing/decide", json=payload)
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def test_a_regular_person_gets_their_minute(client: TestClient, runtime: Runtime) -> None:
    _brand(client, runtime)
    # A window over the next weekday's working morning, Warsaw time.
    day = datetime.now(UTC).astimezone(WARSAW).date() + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    start = datetime(day.year, day.month, day.day, 5, 0, tzinfo=WARSAW)
    d = _decide(
        client,
        send_after=start.isoformat(),
        send_before=(start + timedelta(hours=8)).isoformat(),
        latency_estimate_seconds=300,
        intent_id="promo_jan",
    )
    target = datetime.fromisoformat(str(d["target_minute_utc"]))
    trigger = datetime.fromisoformat(str(d["trigger_timestamp_utc"]))
    local = target.astimezone(WARSAW)
    # Delivered within the hour before 09:10, so the habitual click falls in the horizon.
    assert datetime(day.year, day.month, day.day, 8, 10, tzinfo=WARSAW) < local
    assert local <= datetime(day.year, day.month, day.day, 9, 10, tzinfo=WARSAW)
    assert target - trigger == timedelta(seconds=300)
    assert d["fallback_level"] == "personal"
    assert 0.0 <= float(d["confidence_score"]) <= 1.0  # type: ignore[arg-type]
    weights = d["context_weights"]
    assert isinstance(weights, dict)
    assert abs(sum(weights.values()) - 1.0) < 1e-9
    alts = d["alternatives"]
    assert isinstance(alts, list)
    assert 1 <= len(alts) <= 5
    assert d["intent_id"] == "promo_jan"

    e = client.get(f"/timing/explanations/{d['explanation_ref']}", params={"tenant": "acme"})
    assert e.status_code == 200, e.text
    exp = e.json()
    assert exp["decision_id"] == d["decision_id"]
    assert exp["intent_id"] == "promo_jan"
    assert exp["machine_opens_excluded"] > 20  # the 06:00 Apple opens are not engagement
    assert exp["evidence"]["engagements"] > 20
    assert "machine opens" in exp["summary"]
    assert exp["target_minute_utc"] == d["target_minute_utc"]


def test_a_stranger_is_never_dropped(client: TestClient, runtime: Runtime) -> None:
    _brand(client, runtime)
    d = _decide(client, identifier={"type": "email", "value": "new@acme.test"})
    assert d["fallback_level"] in ("audience", "global")
    weights = d["context_weights"]
    assert isinstance(weights, dict)
    assert weights["personal"] == 0.0
    # The stranger's id is the one they get when first seen.
    runtime.pipeline.process(
        [
            CanonicalEvent(
                tenant="acme",
                esp="klaviyo",
                esp_event_id="new-1",
                event_type=EventType.OPENED,
                occurred_at=datetime.now(UTC) - timedelta(hours=1),
                identifiers=Identifiers(email_hash=hash_email(HASH_KEY.encode(), "new@acme.test")),
            )
        ]
    )
    known = client.get(
        "/api/identity/resolve",
        params={"tenant": "acme", "type": "email", "value": "new@acme.test"},
    )
    assert known.json()["universal_id"] == d["universal_id"]


def test_legacy_shape(client: TestClient, runtime: Runtime) -> None:
    _brand(client, runtime)
    r = client.post(
        "/timing-decision",
        json={"tenant": "acme", "email": "anna@acme.test", "latency_estimate_seconds": 120},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    gap = datetime.fromisoformat(body["target_minute_utc"]) - datetime.fromisoformat(
        body["trigger_timestamp_utc"]
    )
    assert gap == timedelta(seconds=120)
    missing = client.post("/timing-decision", json={"tenant": "acme"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "email"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (
            {"send_after": "2020-01-01T00:00:00Z", "send_before": "2020-01-02T00:00:00Z"},
            "send_before",
        ),
        (
            {"send_after": "2031-01-02T00:00:00Z", "send_before": "2031-01-01T00:00:00Z"},
            "send_before",
        ),
        (
            {"send_after": "2031-01-01T00:00:00Z", "send_before": "2031-01-20T00:00:00Z"},
            "send_before",
        ),
        ({"send_after": "2031-01-01T00:00:00"}, "send_after"),
        ({"identifier": {"type": "fax", "value": "1"}}, "type"),
        ({"identifier": {"type": "email", "value": "nope"}}, "value"),
        ({"latency_estimate_seconds": -1}, "latency_estimate_seconds"),
        ({"channel": "pigeon"}, "channel"),
        ({"tenant": "Not Valid"}, "tenant"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_requests_are_422_naming_the_field(
    client: TestClient, runtime: Runtime, body: dict[str, object], loc: str
) -> None:
    client.post("/api/tenants", json={"id": "acme", "name": "Acme"})
    payload: dict[str, object] = {
        "tenant": "acme",
        "identifier": {"type": "email", "value": "anna@acme.test"},
    }
    payload.update(body)
    r = client.post("/timing/decide", json=payload)
    assert r.status_code == 422, r.text
    assert loc in r.json()["detail"][0]["loc"], r.text


def test_unknown_tenant_and_explanation(client: TestClient) -> None:
    r = client.post(
        "/timing/decide",
        json={"tenant": "ghost", "identifier": {"type": "email", "value": "a@b.test"}},
    )
    assert r.status_code == 404
    client.post("/api/tenants", json={"id": "acme", "name": "Acme"})
    ref = "exp_" + "0" * 32
    assert client.get(f"/timing/explanations/{ref}", params={"tenant": "acme"}).status_code == 404
    assert client.get("/timing/explanations/bad", params={"tenant": "acme"}).status_code == 422


def test_batch_decisions_match_single_ones(client: TestClient, runtime: Runtime) -> None:
    _brand(client, runtime)
    day = datetime.now(UTC).astimezone(WARSAW).date() + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    start = datetime(day.year, day.month, day.day, 5, 0, tzinfo=WARSAW)
    window = {
        "send_after": start.isoformat(),
        "send_before": (start + timedelta(hours=8)).isoformat(),
        "latency_estimate_seconds": 300,
    }
    recipients = [
        {"type": "email", "value": "anna@acme.test"},
        {"type": "email", "value": "someone.new@acme.test"},
    ]
    r = client.post(
        "/timing/decide/batch",
        json={"tenant": "acme", "recipients": recipients, "intent_id": "promo", **window},
    )
    assert r.status_code == 200, r.text
    items = r.json()["decisions"]
    assert [i["index"] for i in items] == [0, 1]
    single = _decide(client, **window)
    assert items[0]["universal_id"] == single["universal_id"]
    assert items[0]["target_minute_utc"] == single["target_minute_utc"]
    assert items[0]["fallback_level"] == "personal"
    assert items[1]["fallback_level"] in ("audience", "global")
    e = client.get(f"/timing/explanations/{items[1]['explanation_ref']}", params={"tenant": "acme"})
    assert e.status_code == 200
    assert e.json()["intent_id"] == "promo"

    bad = client.post(
        "/timing/decide/batch",
        json={
            "tenant": "acme",
            "recipients": [
                recipients[0],
                {"type": "phone", "value": "12"},
                {"type": "x", "value": "y"},
            ],
        },
    )
    assert bad.status_code == 422
    locs = [d["loc"] for d in bad.json()["detail"]]
    assert locs == [["body", "recipients", 1, "value"], ["body", "recipients", 2, "type"]]
    empty = client.post("/timing/decide/batch", json={"tenant": "acme", "recipients": []})
    assert empty.status_code == 422
