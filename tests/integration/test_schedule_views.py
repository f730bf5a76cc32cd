"""A campaign's dispatch timeline (GET /api/schedules/{id}/timeline) on SQLite and PostgreSQL:
triggers per bucket and status against the planner's capacity and the tenant's other campaigns,
counts, late and failed triggers with their reasons in words, bucket choice and its limits.

Trigger outcomes are written through the trigger store's own executor calls (claim, mark sent,
failed or retry) with chosen times, so lateness is exact without waiting for a clock."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sendflowr.api import create_app
from sendflowr.api.schedule_views import late_reason
from sendflowr.runtime import Runtime
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.schedule_timeline import timeline
from sendflowr.storage.metadata.store import Tenant
from sendflowr.storage.metadata.triggers import Trigger, minute_of
from tests.conftest import ADMIN_HEADERS

TENANT = "brand"
CAPACITY = 9  # webhook: 2 requests a minute x 5 sends, 95% of it bookable
WORKER = "test-worker"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def rt(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Runtime]:
    update: dict[str, Any] = {
        "secret_key": SecretStr(generate_key()),
        "backfill_worker": False,
        "executor": False,
    }
    if request.param == "postgresql":
        update["metadata_url"] = request.getfixturevalue("postgres_url")
    runtime = Runtime.open(settings.model_copy(update=update))
    try:
        runtime.metadata.create_tenant(Tenant(TENANT, "Brand", "UTC"))
        yield runtime
    finally:
        drop = getattr(runtime.events, "drop_database", None)
        if drop is not None:
            drop()
        runtime.close()


@pytest.fixture
def api(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt.settings, runtime=rt), headers=ADMIN_HEADERS) as c:
        resp = c.put(
            f"/api/tenants/{TENANT}/accounts/webhook",
            json={"url": "https://hooks.example.test/in", "requests_per_minute": 2},
        )
        assert resp.status_code in (200, 201), resp.text
        resp = c.post(
            f"/api/tenants/{TENANT}/intents",
            json={
                "intent_id": "letter",
                "name": "Letter",
                "latency_seconds": 0,
                "binding": {"esp": "webhook", "event": "letter", "max_batch": 5},
            },
        )
        assert resp.status_code == 201, resp.text
        yield c


def _schedule(api: TestClient, n: int, start: int = 0, minutes: int = 10) -> dict[str, Any]:
    now = datetime.now(UTC)
    resp = api.post(
        "/api/intents/letter/schedule",
        json={
            "tenant": TENANT,
            "audience": {
                "recipients": [
                    {"type": "email", "value": f"p{i}@example.test"}
                    for i in range(start, start + n)
                ]
            },
            "send_after": now.isoformat(),
            "send_before": (now + timedelta(minutes=minutes)).isoformat(),
        },
    )
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


def _timeline(api: TestClient, schedule_id: str, **query: Any) -> dict[str, Any]:
    resp = api.get(f"/api/schedules/{schedule_id}/timeline", params={"tenant": TENANT, **query})
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def _per_minute(rows: list[Trigger], bucket: int = 60) -> Counter[datetime]:
    return Counter(
        datetime.fromtimestamp(minute_of(t.trigger_at) // bucket * bucket, UTC) for t in rows
    )


def _by_start(out: dict[str, Any]) -> dict[datetime, dict[str, Any]]:
    return {datetime.fromisoformat(b["start"]): b for b in out["buckets"]}


def test_buckets_match_the_plan_and_other_campaigns_share_the_capacity(
    api: TestClient, rt: Runtime
) -> None:
    first = _schedule(api, 30)
    second = _schedule(api, 12, start=100)
    mine = rt.triggers.page(first["schedule_id"], limit=1000)
    theirs = rt.triggers.page(second["schedule_id"], limit=1000)

    out = _timeline(api, first["schedule_id"], bucket="minute")
    assert out["bucket_seconds"] == 60
    assert out["capacity_per_minute"] == out["capacity_per_bucket"] == CAPACITY
    assert out["counts"] == {"scheduled": 30, "sending": 0, "sent": 0, "failed": 0, "cancelled": 0}
    assert out["running"] is True
    assert (out["late_count"], out["failed_count"], out["late"], out["failed"]) == (0, 0, [], [])
    buckets = _by_start(out)
    starts = sorted(buckets)
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(starts))
    assert {k: v["total"] for k, v in buckets.items() if v["total"]} == _per_minute(mine)
    assert {k: v["other_campaigns"] for k, v in buckets.items() if v["other_campaigns"]} == (
        _per_minute(theirs)
    )
    # the planner kept both campaigns together within the capacity of every minute
    assert all(
        b["total"] + b["other_campaigns"] <= b["capacity"] == CAPACITY for b in buckets.values()
    )

    five = _timeline(api, first["schedule_id"], bucket="5min")
    assert five["capacity_per_bucket"] == 5 * CAPACITY
    totals = {k: v["total"] for k, v in _by_start(five).items() if v["total"]}
    assert totals == _per_minute(mine, 300)

    # a cancelled campaign no longer holds capacity; its own timeline counts the cancellations
    cancel = api.post(f"/api/schedules/{second['schedule_id']}/cancel", json={"tenant": TENANT})
    assert cancel.status_code == 200, cancel.text
    again = _timeline(api, first["schedule_id"], bucket="minute")
    assert sum(b["other_campaigns"] for b in again["buckets"]) == 0
    gone = _timeline(api, second["schedule_id"])
    assert gone["counts"]["cancelled"] == 12
    assert gone["running"] is False
    # the list carries each campaign's counts per status (one grouped query for all of them)
    listed = api.get("/api/schedules", params={"tenant": TENANT}).json()
    assert {x["schedule_id"]: x["triggers"] for x in listed} == {
        first["schedule_id"]: {"scheduled": 30},
        second["schedule_id"]: {"cancelled": 12},
    }


def test_late_and_failed_triggers_with_their_reasons(api: TestClient, rt: Runtime) -> None:
    sid = _schedule(api, 20)["schedule_id"]
    later = datetime.now(UTC) + timedelta(hours=1)
    claimed = rt.triggers.claim_due(WORKER, later, 1000, timedelta(hours=2))
    assert len(claimed) == 20
    on_time, late, failed_400, failed_410, retry, _sending = (
        claimed[0:6], claimed[6:9], claimed[9:13], claimed[13:15], claimed[15:18], claimed[18:]
    )  # fmt: skip
    for t in on_time:
        rt.triggers.mark_sent(
            WORKER, [t.decision_id], "webhook", t.trigger_at + timedelta(seconds=5)
        )
    for t in late:
        rt.triggers.mark_sent(
            WORKER, [t.decision_id], "webhook", t.trigger_at + timedelta(minutes=10)
        )
    rt.triggers.mark_failed(WORKER, [t.decision_id for t in failed_400], "HTTP 400: bad event")
    rt.triggers.mark_failed(WORKER, [t.decision_id for t in failed_410], "HTTP 410: gone")
    rt.triggers.mark_retry(WORKER, [t.decision_id for t in retry], "HTTP 503", later)

    out = _timeline(api, sid, bucket="minute")
    assert out["counts"] == {"scheduled": 3, "sending": 2, "sent": 9, "failed": 6, "cancelled": 0}
    assert out["late_count"] == 3  # the retries and the claimed ones are not due yet
    assert sorted(t["decision_id"] for t in out["late"]) == sorted(t.decision_id for t in late)
    for t in out["late"]:
        assert t["late_seconds"] == pytest.approx(600, abs=1)
        assert t["reason"] == "sent 10 min after its trigger time"
    late_minutes = _per_minute(late)
    assert {k: v["late"] for k, v in _by_start(out).items() if v["late"]} == late_minutes
    assert out["failed_count"] == 6
    assert [(r["error"], r["count"]) for r in out["failure_reasons"]] == [
        ("HTTP 400: bad event", 4),
        ("HTTP 410: gone", 2),
    ]
    assert {t["reason"] for t in out["failed"]} == {
        "failed after 1 attempt: HTTP 400: bad event",
        "failed after 1 attempt: HTTP 410: gone",
    }
    assert len(_timeline(api, sid, limit=2)["failed"]) == 2
    # a stricter threshold: the on-time sends (5 s) are late too
    assert _timeline(api, sid, late_after_seconds=1)["late_count"] == 9

    # Two hours on, the unsent ones are due and late, each with its reason in words.
    s = rt.triggers.get_schedule(sid, TENANT)
    future = timeline(rt.metadata, s, 60, later + timedelta(hours=1), 60, 50)
    assert future.late_count == 3 + 3 + 2
    assert {t.status for t in future.late} == {"sent", "scheduled", "sending"}
    words = {t.status: late_reason(t, later + timedelta(hours=1))[1] for t in future.late}
    assert words["scheduled"].endswith("waiting to retry after 1 attempt (HTTP 503)")
    assert words["sending"].endswith(": being sent (attempt 1)")
    assert words["scheduled"].startswith("due 1 h ")


def test_the_timeline_is_a_fixed_number_of_statements(api: TestClient, rt: Runtime) -> None:
    sid = _schedule(api, 25)["schedule_id"]
    _schedule(api, 5, start=200)
    schedule = rt.triggers.get_schedule(sid)
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(str(args[2]))

    sa.event.listen(rt.metadata.engine, "before_cursor_execute", count)
    try:
        timeline(rt.metadata, schedule, 60, datetime.now(UTC), 60, 50)
    finally:
        sa.event.remove(rt.metadata.engine, "before_cursor_execute", count)
    # the buckets, the late list, the failed list, the failure reasons
    assert len(seen) == 4, seen
    assert sum("GROUP BY" in q for q in seen) == 2


def test_bucket_choice_and_bad_queries(api: TestClient) -> None:
    sid = _schedule(api, 3, minutes=2 * 24 * 60)["schedule_id"]
    auto = _timeline(api, sid)
    assert (auto["bucket"], auto["bucket_seconds"]) == ("auto", 900)  # 2 days: 192 of 15 min
    assert auto["capacity_per_bucket"] == 15 * CAPACITY
    assert sum(b["total"] for b in auto["buckets"]) == 3
    hourly = _timeline(api, sid, bucket="hour")
    assert 48 <= len(hourly["buckets"]) <= 50

    url = f"/api/schedules/{sid}/timeline"
    too_fine = api.get(url, params={"tenant": TENANT, "bucket": "minute"})
    assert too_fine.status_code == 422
    assert too_fine.json()["detail"][0]["loc"] == ["query", "bucket"]
    assert "choose a longer bucket" in too_fine.json()["detail"][0]["msg"]
    bad: list[tuple[dict[str, str | int], str]] = [
        ({"bucket": "week"}, "bucket"),
        ({"late_after_seconds": -1}, "late_after_seconds"),
        ({"limit": 0}, "limit"),
    ]
    for query, field in bad:
        resp = api.get(url, params={"tenant": TENANT, **query})
        assert resp.status_code == 422, resp.text
        assert resp.json()["detail"][0]["loc"] == ["query", field]
    missing = api.get("/api/schedules/sch_nope/timeline", params={"tenant": TENANT})
    assert missing.status_code == 404
    assert api.get(url).status_code == 422  # the tenant is required


def test_another_tenants_key_cannot_read_the_timeline(api: TestClient, rt: Runtime) -> None:
    sid = _schedule(api, 3)["schedule_id"]
    rt.metadata.create_tenant(Tenant("other", "Other", "UTC"))
    key = api.post("/api/tenants/other/keys", json={"name": "o", "scopes": ["read"]})
    assert key.status_code == 201, key.text
    other = {"Authorization": f"Bearer {key.json()['key']}"}
    url = f"/api/schedules/{sid}/timeline"
    assert api.get(url, params={"tenant": TENANT}, headers=other).status_code == 403
    mine = api.get(url, params={"tenant": "other"}, headers=other)
    assert mine.status_code == 404
    assert "letter" not in mine.text  # B's intent
    assert api.get(url, params={"tenant": TENANT}).status_code == 200  # the operator
