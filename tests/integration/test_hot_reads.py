"""The decision path's short-lived copies of tenant, policy and ESP-call rows
(storage/metadata/hot.py): what this process changes is seen at once, what another process
changes within the TTL, and decisions stop querying those tables each."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.hot import HotReads
from sendflowr.storage.metadata.policies import PolicyStore
from sendflowr.storage.metadata.store import MetadataStore
from tests.conftest import ADMIN_HEADERS, open_runtime

T = "hot"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_values_are_kept_for_the_ttl_and_forget_drops_them() -> None:
    clock = Clock()
    hot = HotReads(ttl_s=2.0, timer=clock)
    loads: list[str] = []

    def load(v: str) -> Any:
        def loader() -> str:
            loads.append(v)
            return v

        return loader

    assert hot.get("tenant", "a", load("a1")) == "a1"
    assert hot.get("tenant", "a", load("a2")) == "a1"  # cached
    assert hot.get("policy", "a", load("p1")) == "p1"  # another kind: its own entry
    clock.now += 2.5
    assert hot.get("tenant", "a", load("a3")) == "a3"  # expired
    hot.forget("a")
    assert hot.get("tenant", "a", load("a4")) == "a4"
    assert hot.get("policy", "a", load("p2")) == "p2"
    hot.get("esp_calls", "a", load("e1"), key=60)
    hot.get("esp_calls", "b", load("e2"), key=60)
    hot.forget_kind("esp_calls")
    assert hot.get("esp_calls", "a", load("e3"), key=60) == "e3"
    assert hot.get("esp_calls", "b", load("e4"), key=60) == "e4"
    assert hot.get("policy", "a", load("p3")) == "p2"  # other kinds kept
    assert loads == ["a1", "p1", "a3", "a4", "p2", "e1", "e2", "e3", "e4"]


def test_a_value_loaded_across_a_forget_is_not_kept() -> None:
    hot = HotReads(ttl_s=60.0)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "old"

    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(hot.get("policy", "a", slow)))
    t.start()
    assert started.wait(5)
    hot.forget("a")  # the write committed while the old row was being read
    release.set()
    t.join(5)
    assert got == ["old"]  # its caller gets what it read ...
    assert hot.get("policy", "a", lambda: "new") == "new"  # ... but it was not kept


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    with open_runtime(settings.model_copy(update={"executor": False})) as runtime:
        yield runtime


@pytest.fixture
def api(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt.settings, runtime=rt), headers=ADMIN_HEADERS) as c:
        r = c.post("/api/tenants", json={"id": T, "name": "Hot", "timezone": "UTC"})
        assert r.status_code == 201, r.text
        now = datetime.now(UTC)
        rt.pipeline.process(
            [
                CanonicalEvent(
                    tenant=T,
                    esp="klaviyo",
                    esp_event_id=f"h{d}",
                    event_type=EventType.CLICKED,
                    occurred_at=(now - timedelta(days=d)).replace(hour=9, minute=0),
                    identifiers=Identifiers(esp_profile_id="K1"),
                )
                for d in range(1, 15)
            ]
        )
        yield c


def _decide(api: TestClient) -> dict[str, Any]:
    r = api.post(
        "/timing/decide", json={"tenant": T, "identifier": {"type": "klaviyo_id", "value": "K1"}}
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_decisions_read_tenant_and_policy_rows_once_per_ttl(api: TestClient, rt: Runtime) -> None:
    clock = Clock()
    rt.metadata.hot = HotReads(timer=clock)
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(rt.metadata.engine, "before_cursor_execute", count)
    try:
        for _ in range(5):
            _decide(api)
        clock.now += 3.0  # past the TTL: read again, once
        for _ in range(5):
            _decide(api)
    finally:
        sa.event.remove(rt.metadata.engine, "before_cursor_execute", count)

    def reads(table: str) -> int:
        return sum(1 for s in seen if f"FROM {table}" in s and s.lstrip().startswith("SELECT"))

    assert reads("tenants") == 2
    assert reads("tenant_policies") == 2


def test_a_change_through_this_process_is_seen_at_once(api: TestClient, rt: Runtime) -> None:
    rt.metadata.hot = HotReads(ttl_s=3600.0)  # only an invalidation can refresh it
    assert _decide(api)["suppressed"] is False
    r = api.post(f"/api/tenants/{T}/breaker", json={"reason": "incident 42"})
    assert r.status_code in (200, 201), r.text
    out = _decide(api)
    assert out["suppressed"] is True
    assert out["suppression"]["policy"] == "tenant_breaker"
    r = api.delete(f"/api/tenants/{T}/breaker")
    assert r.status_code in (200, 204), r.text
    assert _decide(api)["suppressed"] is False
    before = _decide(api)["latency_estimate_seconds"]
    r = api.patch(f"/api/tenants/{T}", json={"settings": {"esp_latency_seconds": before + 240}})
    assert r.status_code == 200, r.text
    assert _decide(api)["latency_estimate_seconds"] == before + 240


def test_another_process_change_is_seen_within_the_ttl(api: TestClient, rt: Runtime) -> None:
    clock = Clock()
    rt.metadata.hot = HotReads(ttl_s=2.0, timer=clock)
    assert _decide(api)["suppressed"] is False
    other = MetadataStore(rt.settings.metadata)  # another process's store
    try:
        PolicyStore(other).trip(T, "from the other process", "ops")
    finally:
        other.engine.dispose()
    assert _decide(api)["suppressed"] is False  # still the copy from before
    clock.now += 2.5
    out = _decide(api)
    assert out["suppressed"] is True
    assert "from the other process" in out["suppression"]["reason"]
