"""The decision explorer's API: GET /timing/engagement/{universal_id} (a person's local-time
grid) and POST /timing/decide with include_curve (the scores the minute was chosen from), on
the embedded deployment (chDB, SQLite)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient

from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.hashing import hash_email
from sendflowr.runtime import Runtime
from tests.conftest import HASH_KEY

PARIS = ZoneInfo("Europe/Paris")
EMAIL = "lea@acme.test"
KLAVIYO = "01KLEA"


def _event(
    n: int,
    kind: EventType,
    at: datetime,
    machine: bool = False,
    email_hash: str | None = None,
    esp_profile_id: str | None = None,
) -> CanonicalEvent:
    return CanonicalEvent(
        tenant="acme",
        esp="klaviyo",
        esp_event_id=f"lea-{n}",
        event_type=kind,
        occurred_at=at,
        identifiers=Identifiers(email_hash=email_hash, esp_profile_id=esp_profile_id),
        is_machine_open=machine,
    )


def _brand(client: TestClient, runtime: Runtime) -> tuple[str, str, list[datetime]]:
    """Léa, in a Paris brand: on each of the last 15 days a delivery at 07:00 local opened by
    her mail client 2 s later (unflagged), a click at 20:15 local; opens at 12:40 local under
    her Klaviyo id (another person until an event names both ids); a flagged machine open.
    Returns her email person's id, the Klaviyo person's id and her human engagement times."""
    r = client.post("/api/tenants", json={"id": "acme", "name": "Acme", "timezone": "Europe/Paris"})
    assert r.status_code == 201, r.text
    email = hash_email(HASH_KEY.encode(), EMAIL)
    today = datetime.now(UTC).astimezone(PARIS).date()
    by_email, by_klaviyo, human = [], [], []
    n = 0
    for back in range(1, 16):
        d = today - timedelta(days=back)
        sent = datetime(d.year, d.month, d.day, 7, 0, tzinfo=PARIS)
        click = datetime(d.year, d.month, d.day, 20, 15, tzinfo=PARIS)
        n += 3
        by_email += [
            _event(n, EventType.RECEIVED, sent, email_hash=email),
            _event(n + 1, EventType.OPENED, sent + timedelta(seconds=2), email_hash=email),
            _event(n + 2, EventType.CLICKED, click, email_hash=email),
        ]
        human.append(click)
        if back % 3 == 0:
            lunch = datetime(d.year, d.month, d.day, 12, 40, tzinfo=PARIS)
            n += 1
            by_klaviyo.append(_event(n, EventType.OPENED, lunch, esp_profile_id=KLAVIYO))
            human.append(lunch)
    d = today - timedelta(days=2)
    flagged = datetime(d.year, d.month, d.day, 3, 0, tzinfo=PARIS)
    by_email.append(_event(900, EventType.OPENED, flagged, machine=True, email_hash=email))
    runtime.pipeline.process(by_email + by_klaviyo)
    uid_email = _resolve(client, "email", EMAIL)
    uid_klaviyo = _resolve(client, "klaviyo_id", KLAVIYO)
    assert uid_email != uid_klaviyo
    # an event naming both ids merges the two people (no engagement of its own: a product view)
    at = datetime.now(UTC) - timedelta(hours=1)
    runtime.pipeline.process(
        [_event(901, EventType.PRODUCT_VIEW, at, email_hash=email, esp_profile_id=KLAVIYO)]
    )
    return uid_email, uid_klaviyo, human


def _resolve(client: TestClient, kind: str, value: str) -> str:
    r = client.get("/api/identity/resolve", params={"tenant": "acme", "type": kind, "value": value})
    assert r.status_code == 200, r.text
    uid: str = r.json()["universal_id"]
    return uid


def _expected(times: list[datetime], zone: ZoneInfo) -> Counter[tuple[int, int]]:
    return Counter((t.astimezone(zone).weekday(), t.astimezone(zone).hour) for t in times)


def _grid_cells(grid: list[list[int]]) -> Counter[tuple[int, int]]:
    return Counter({(d, h): c for d, row in enumerate(grid) for h, c in enumerate(row) if c})


def test_engagement_grid_in_the_tenants_zone_with_machine_opens_apart(
    client: TestClient, runtime: Runtime
) -> None:
    uid_email, uid_klaviyo, human = _brand(client, runtime)
    root = _resolve(client, "email", EMAIL)
    r = client.get(f"/timing/engagement/{root}", params={"tenant": "acme"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["zone"] == "Europe/Paris"
    assert body["days"][0] == "Monday"
    assert body["days"][6] == "Sunday"
    assert body["hours"] == list(range(24))
    assert len(body["grid"]) == 7
    assert all(len(row) == 24 for row in body["grid"])
    # every human click and open, under both of her ids, in its local day and hour
    assert _grid_cells(body["grid"]) == _expected(human, PARIS)
    totals = body["totals"]
    assert totals["clicked"] == 15
    assert totals["opened"] == 5
    assert totals["engagements"] == 20
    assert totals["machine"] == 16  # 15 opens 2 s after delivery, one flagged by the ESP
    assert totals["deliveries"] == 15
    hist = body["history"]
    assert datetime.fromisoformat(hist["first_engagement"]) == min(human)
    assert datetime.fromisoformat(hist["last_engagement"]) == max(human)
    assert not hist["truncated"]
    assert datetime.fromisoformat(hist["until"]) - datetime.fromisoformat(
        hist["since"]
    ) == timedelta(days=180)
    # the merged-away id answers with the survivor and the same grid
    other = uid_klaviyo if root == uid_email else uid_email
    r2 = client.get(f"/timing/engagement/{other}", params={"tenant": "acme"})
    assert r2.status_code == 200, r2.text
    assert r2.json()["universal_id"] == root
    assert r2.json()["grid"] == body["grid"]


def test_engagement_in_another_zone_and_a_shorter_history(
    client: TestClient, runtime: Runtime
) -> None:
    _, _, human = _brand(client, runtime)
    root = _resolve(client, "email", EMAIL)
    tokyo = ZoneInfo("Asia/Tokyo")
    r = client.get(
        f"/timing/engagement/{root}", params={"tenant": "acme", "tz": "Asia/Tokyo", "days": 7}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["zone"] == "Asia/Tokyo"
    since = datetime.fromisoformat(body["history"]["since"])
    recent = [t for t in human if t >= since]
    assert 0 < len(recent) < len(human)
    assert _grid_cells(body["grid"]) == _expected(recent, tokyo)
    assert body["totals"]["engagements"] == len(recent)


def test_engagement_refusals_name_the_field(client: TestClient, runtime: Runtime) -> None:
    _brand(client, runtime)
    root = _resolve(client, "email", EMAIL)
    for params, field in (
        ({"tenant": "acme", "tz": "Mars/Olympus"}, "tz"),
        ({"tenant": "acme", "tz": "../../etc/passwd"}, "tz"),
        ({"tenant": "acme", "tz": "Europe"}, "tz"),
        ({"tenant": "acme", "days": 0}, "days"),
        ({"tenant": "acme", "days": 10_000}, "days"),
    ):
        r = client.get(f"/timing/engagement/{root}", params=params)
        assert r.status_code == 422, (params, r.text)
        assert field in r.text
    assert client.get("/timing/engagement/sf_0000", params={"tenant": "acme"}).status_code == 422
    r = client.get("/timing/engagement/sf_0123456789abcdef", params={"tenant": "acme"})
    assert r.status_code == 404
    r = client.get(f"/timing/engagement/{root}", params={"tenant": "nobody"})
    assert r.status_code == 404


def _window() -> tuple[datetime, datetime]:
    day = datetime.now(UTC).astimezone(PARIS).date() + timedelta(days=1)
    start = datetime(day.year, day.month, day.day, 6, 0, tzinfo=PARIS)
    return start, start + timedelta(hours=24)


def _decide(client: TestClient, **extra: Any) -> dict[str, Any]:
    start, end = _window()
    r = client.post(
        "/timing/decide",
        json={
            "tenant": "acme",
            "identifier": {"type": "email", "value": EMAIL},
            "send_after": start.isoformat(),
            "send_before": end.isoformat(),
            "latency_estimate_seconds": 120,
            **extra,
        },
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_decide_with_the_curve_it_was_chosen_from(client: TestClient, runtime: Runtime) -> None:
    _brand(client, runtime)
    assert _decide(client)["curve"] is None  # opt-in
    d = _decide(client, include_curve=True)
    curve = d["curve"]
    assert curve["horizon_seconds"] == 3600
    points = [
        (datetime.fromisoformat(p["minute_utc"]), p["score"], p["allowed"]) for p in curve["points"]
    ]
    start, end = _window()
    times = [t for t, _, _ in points]
    assert times == sorted(times)
    assert times[0] == start
    assert times[-1] == end - timedelta(minutes=1)
    assert all(p[2] for p in points)  # no policies configured
    # every quarter hour of the day is a point; bounded well below a point per minute
    assert len(points) <= 24 * 4 + 2
    assert all(start + timedelta(minutes=15 * i) in times for i in range(96))
    # the chosen minute is the curve's best point, its score the confidence
    target = datetime.fromisoformat(d["target_minute_utc"])
    best = max(points, key=lambda p: p[1])
    assert best[0] == target
    assert best[1] == d["confidence_score"]
    assert datetime.fromisoformat(d["trigger_timestamp_utc"]) == target - timedelta(seconds=120)
    # delivered within the hour before her 20:15 click
    local = target.astimezone(PARIS)
    assert (local.hour, local.minute) >= (19, 15)
    assert (local.hour, local.minute) <= (20, 15)
    scores = {t: s for t, s, _ in points}
    for alt in d["alternatives"]:
        assert scores[datetime.fromisoformat(alt["target_minute_utc"])] == alt["score"]
    # it is a real decision: its explanation is recorded
    e = client.get(f"/timing/explanations/{d['explanation_ref']}", params={"tenant": "acme"})
    assert e.status_code == 200, e.text
    assert e.json()["decision_id"] == d["decision_id"]


def test_the_curve_marks_minutes_a_policy_refuses(client: TestClient, runtime: Runtime) -> None:
    _brand(client, runtime)
    r = client.put(
        "/api/tenants/acme/policy", json={"quiet_hours": {"start": "19:00", "end": "22:00"}}
    )
    assert r.status_code == 200, r.text
    d = _decide(client, include_curve=True)
    points = [
        (datetime.fromisoformat(p["minute_utc"]), p["score"], p["allowed"])
        for p in d["curve"]["points"]
    ]
    refused = [t for t, _, ok in points if not ok]
    assert refused
    assert all(19 <= t.astimezone(PARIS).hour < 22 for t in refused)
    assert all(ok for t, _, ok in points if not 19 <= t.astimezone(PARIS).hour < 22)
    # the refused evening peak is still drawn; the choice is the best allowed point
    target = datetime.fromisoformat(d["target_minute_utc"])
    allowed_best = max((p for p in points if p[2]), key=lambda p: p[1])
    assert allowed_best[0] == target
    assert max(s for _, s, _ in points) > allowed_best[1]
    assert "quiet_hours" in d["policies"]
