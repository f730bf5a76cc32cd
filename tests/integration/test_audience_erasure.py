"""An erasure reaches the tenant's cached audience curve in every process (issue 9).

Two timing services over the same stores stand for two processes of one deployment: the first
runs the erasure (and drops its curve at once), the second has its own metadata connection and
only learns of the erasure from the shared audit table, at most `erasure_check_s` later. Real
stores throughout: chDB events, SQLite or PostgreSQL metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.decisions import TimingService, decide_many
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.erasure import erase_person
from sendflowr.identity.hashing import hash_email
from sendflowr.identity.identifiers import EMAIL, Identifier
from sendflowr.identity.store import IdentityGraphStore
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import MetadataStore, Tenant
from sendflowr.timing.activity import ActivityTable
from sendflowr.timing.window import Window
from tests.conftest import ADMIN_HEADERS, HASH_KEY, open_runtime

KEY = HASH_KEY.encode()
ZONE = ZoneInfo("UTC")
CHECK_S = 5.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def rt(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Runtime]:
    settings = settings.model_copy(update={"executor": False})
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        settings = settings.model_copy(update={"metadata_url": url})
    with open_runtime(settings) as runtime:
        runtime.metadata.ensure_tenant(Tenant("acme", "acme", "UTC"))
        yield runtime


@pytest.fixture
def other_metadata(rt: Runtime) -> Iterator[MetadataStore]:
    """The second process's own connection to the deployment's metadata database."""
    store = MetadataStore(rt.settings.metadata)
    try:
        yield store
    finally:
        store.close()


def _history(rt: Runtime, now: datetime) -> str:
    """Ann clicks at 03:xx UTC, a lot; twelve others open at 15:xx. Ann's universal id."""
    events = []
    for day in range(1, 41):
        at = (now - timedelta(days=day)).replace(hour=3, minute=10 + day % 40)
        events.append(_event(f"ann-{day}", EventType.CLICKED, at, "ann@x.test"))
    for p in range(12):
        for day in range(1, 5):
            at = (now - timedelta(days=day * 3 + p)).replace(hour=15, minute=5 + p)
            events.append(_event(f"p{p}-{day}", EventType.OPENED, at, f"p{p}@x.test"))
    rt.pipeline.process(events)
    uid = rt.identity.owner("acme", Identifier(EMAIL, hash_email(KEY, "ann@x.test")))
    assert uid is not None
    return uid


def _event(eid: str, kind: EventType, at: datetime, email: str) -> CanonicalEvent:
    return CanonicalEvent(
        tenant="acme",
        esp="klaviyo",
        esp_event_id=eid,
        event_type=kind,
        occurred_at=at,
        identifiers=Identifiers(email_hash=hash_email(KEY, email)),
    )


def _erase(rt: Runtime, uid: str) -> int:
    done = erase_person(
        "acme", uid, "test", identity=rt.identity, events=rt.events, features=rt.features,
        triggers=rt.triggers, metadata=rt.metadata, hash_key=rt.hash_key,
    )  # fmt: skip
    return done.audit_id


def _same(a: ActivityTable, b: ActivityTable) -> bool:
    return bool(
        np.array_equal(a.bins, b.bins)
        and np.array_equal(a.evidence, b.evidence)
        and np.array_equal(a.prompted, b.prompted)
    )


def _window(now: datetime) -> Window:
    start = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return Window(start, start + timedelta(hours=24))


def _stranger_target(svc: TimingService, now: datetime) -> int:
    """A person without history decides by the audience: their target minute."""
    rec = svc.decide("acme", "sf_00000000000000ff", False, ZONE, _window(now), 60, store=False)
    return rec.decision.target_minute_utc


def test_an_erasure_reaches_every_process_audience(
    rt: Runtime, other_metadata: MetadataStore
) -> None:
    now_dt = datetime.now(UTC)
    now = int(now_dt.timestamp())
    ann = _history(rt, now_dt)
    clock_a, clock_b = Clock(), Clock()
    # A fixed decision clock: a curve is built as of the `now` of the call that builds it.
    first = TimingService(
        rt.events, rt.identity, clock=lambda: now_dt, features=rt.features,
        erasure_check_s=CHECK_S, monotonic=clock_a,
    )  # fmt: skip
    second = TimingService(
        rt.events,
        IdentityGraphStore(other_metadata, rt.hash_key),
        clock=lambda: now_dt,
        erasure_check_s=CHECK_S,
        monotonic=clock_b,
    )
    with_ann = first.audience("acme", ZONE, now)
    assert second.audience("acme", ZONE, now) is not with_ann  # each process its own cache
    assert _same(second.audience("acme", ZONE, now), with_ann)
    target_with = _stranger_target(first, now_dt)
    assert _stranger_target(second, now_dt) == target_with
    assert datetime.fromtimestamp(target_with, UTC).hour in (2, 3)  # ann's hour dominates

    audit_id = _erase(rt, ann)
    first.forget_audience("acme")  # what the erase route does in its process
    assert rt.identity.latest_erasure_id("acme") == audit_id > 0

    # What the curve is without ann (a service with nothing cached), and that it differs.
    without = TimingService(rt.events, rt.identity).audience("acme", ZONE, now)
    assert not _same(without, with_ann)

    # The erasing process: its very next decision uses the rebuilt curve (no clock moved).
    assert _same(first.audience("acme", ZONE, now), without)
    target_without = _stranger_target(first, now_dt)
    assert target_without != target_with
    assert datetime.fromtimestamp(target_without, UTC).hour in (14, 15)

    # The other process: still its curve until the check interval passes...
    clock_b.t += CHECK_S / 2
    assert _same(second.audience("acme", ZONE, now), with_ann)
    assert _stranger_target(second, now_dt) == target_with
    # ... and a fresh one at the first decision after it.
    clock_b.t += CHECK_S / 2
    assert _stranger_target(second, now_dt) == target_without
    assert _same(second.audience("acme", ZONE, now), without)


def test_the_erase_route_drops_the_curve_of_its_process(rt: Runtime) -> None:
    now_dt = datetime.now(UTC)
    now = int(now_dt.timestamp())
    ann = _history(rt, now_dt)
    rt.timing.erasure_check_s = 3_600.0  # only the route's own call can refresh it here
    with_ann = rt.timing.audience("acme", ZONE, now)
    assert rt.timing.audience("acme", ZONE, now) is with_ann  # cached
    with TestClient(create_app(rt.settings, runtime=rt), headers=ADMIN_HEADERS) as api:
        r = api.delete(f"/api/identity/{ann}", params={"tenant": "acme"})
        assert r.status_code == 200, r.text
    after = rt.timing.audience("acme", ZONE, now)
    assert after is not with_ann
    assert not _same(after, with_ann)
    assert _same(after, TimingService(rt.events, rt.identity).audience("acme", ZONE, now))


def test_decisions_do_not_query_the_erasure_audit_each(
    rt: Runtime, other_metadata: MetadataStore
) -> None:
    now_dt = datetime.now(UTC)
    now = int(now_dt.timestamp())
    _history(rt, now_dt)
    clock = Clock()
    svc = TimingService(
        rt.events,
        IdentityGraphStore(other_metadata, rt.hash_key),
        erasure_check_s=CHECK_S,
        monotonic=clock,
    )
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "identity_erasures" in statement:
            reads.append(statement)

    sa.event.listen(other_metadata.engine, "before_cursor_execute", count)
    try:
        svc.audience("acme", ZONE, now)
        assert len(reads) == 1  # built under the tenant's latest erasure id
        people = [f"sf_{i:016x}" for i in range(500)]
        for _ in range(50):
            _stranger_target(svc, now_dt)
        for _ in range(3):
            decide_many(svc, "acme", people, [False] * len(people), ZONE, _window(now_dt), 60)
        assert len(reads) == 1
        clock.t += CHECK_S
        for _ in range(20):
            _stranger_target(svc, now_dt)
        decide_many(svc, "acme", people, [False] * len(people), ZONE, _window(now_dt), 60)
        assert len(reads) == 2  # one check per interval per tenant, whatever the traffic
    finally:
        sa.event.remove(other_metadata.engine, "before_cursor_execute", count)


def test_latest_erasure_id_is_per_tenant(rt: Runtime) -> None:
    rt.metadata.ensure_tenant(Tenant("beta", "beta", "UTC"))
    assert rt.identity.latest_erasure_id("acme") == 0
    ann = _history(rt, datetime.now(UTC))
    audit_id = _erase(rt, ann)
    assert rt.identity.latest_erasure_id("acme") == audit_id
    assert rt.identity.latest_erasure_id("beta") == 0
