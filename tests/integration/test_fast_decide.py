"""POST /timing/decide through api/fast_decide.py: the answers it gives are the route's own.

Each request is sent to two apps over one runtime: the app as built (the fast path in place)
and the same app without DecideFastPath (every request through FastAPI's route). Refusals
must match byte for byte; decisions (new ids and instants each time) by status, headers and
fields. A counter on the fast path's worker shows which requests it answered."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from sendflowr.api import create_app, fast_decide
from sendflowr.api.schemas import DecisionOut
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.metrics import DECISION_LATENCY
from sendflowr.runtime import Runtime
from tests.conftest import ADMIN_HEADERS

ANNA = {"type": "klaviyo_id", "value": "K1"}


def _without_fast_path(runtime: Runtime) -> FastAPI:
    app = create_app(runtime.settings, runtime=runtime)
    fast: Any = fast_decide.DecideFastPath
    app.user_middleware = [m for m in app.user_middleware if m.cls is not fast]
    return app


@pytest.fixture
def clients(runtime: Runtime) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        TestClient(create_app(runtime.settings, runtime=runtime)) as fast,
        TestClient(_without_fast_path(runtime)) as slow,
    ):
        for tenant in ("acme", "beta"):
            r = fast.post(
                "/api/tenants",
                json={"id": tenant, "name": tenant, "timezone": "Europe/Warsaw"},
                headers=ADMIN_HEADERS,
            )
            assert r.status_code == 201, r.text
        runtime.pipeline.process(
            [
                CanonicalEvent(
                    tenant="acme",
                    esp="klaviyo",
                    esp_event_id="k1-1",
                    event_type=EventType.CLICKED,
                    occurred_at=datetime.now(UTC) - timedelta(days=3),
                    identifiers=Identifiers(esp_profile_id="K1"),
                )
            ]
        )
        yield fast, slow


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many requests the fast path answered (one entry each)."""
    calls: list[int] = []
    real: Callable[..., bytes] = fast_decide._answer

    def counting(*args: Any) -> bytes:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(fast_decide, "_answer", counting)
    return calls


def _tenant_key(c: TestClient, tenant: str) -> dict[str, str]:
    r = c.post(
        f"/api/tenants/{tenant}/keys",
        json={"name": f"{tenant}-w", "scopes": ["write"]},
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


UNKNOWN_UID = "sf_0123456789abcdef"


def _doc(**fields: object) -> bytes:
    return json.dumps({"tenant": "acme", "identifier": ANNA, **fields}).encode()


# new each time, or moved by the clock (the window starts now; evidence decays by the second)
VOLATILE = {"decision_id", "explanation_ref", "window", "target_minute_utc",
            "trigger_timestamp_utc", "alternatives", "confidence_score",
            "context_weights", "curve"}  # fmt: skip


def test_a_decision_is_answered_by_the_fast_path_as_the_route_answers_it(
    clients: tuple[TestClient, TestClient], answered: list[int]
) -> None:
    fast, slow = clients
    for body in (
        {"tenant": "acme", "identifier": ANNA},
        {"tenant": "acme", "identifier": {"type": "klaviyo_id", "value": "stranger"}},
        {"tenant": "acme", "identifier": ANNA, "include_curve": True, "channel": "sms"},
        {"tenant": "acme", "identifier": ANNA, "latency_estimate_seconds": 300},
    ):
        before = len(answered)
        a = fast.post("/timing/decide", json=body, headers=ADMIN_HEADERS)
        assert len(answered) == before + 1  # the fast path answered it
        b = slow.post("/timing/decide", json=body, headers=ADMIN_HEADERS)
        assert len(answered) == before + 1  # the route answered this one
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
        ja, jb = a.json(), b.json()
        assert list(ja) == list(jb)  # same fields, same order
        assert {k: v for k, v in ja.items() if k not in VOLATILE} == {
            k: v for k, v in jb.items() if k not in VOLATILE
        }
        assert ja["context_weights"] == pytest.approx(jb["context_weights"], rel=1e-3)
        assert (ja["curve"] is None) == (jb["curve"] is None)
        assert a.content == DecisionOut.model_validate_json(a.content).model_dump_json().encode()


def test_the_response_bytes_are_the_response_models(runtime: Runtime) -> None:
    """The fast path serialises with the same adapter the route's response field uses."""
    app = create_app(runtime.settings, runtime=runtime)
    (route,) = [
        c.original_route
        for c in iter_route_contexts(app.routes)
        if getattr(c.original_route, "path", None) == "/timing/decide"
    ]
    out = DecisionOut(
        decision_id="d",
        tenant="acme",
        universal_id="sf_0123456789abcdef",
        intent_id="",
        target_minute_utc=None,
        trigger_timestamp_utc=None,
        latency_estimate_seconds=60,
        confidence_score=None,
        window=[],
        alternatives=[],
        fallback_level="global",
        context_weights={"personal": 0.0, "audience": float("nan"), "global": 1.0},
        model_version="m",
        explanation_ref="exp",
    )
    field: Any = route.response_field  # type: ignore[attr-defined]
    value, errors = field.validate(out, {}, loc=("response",))
    assert not errors
    assert fast_decide._OUT.dump_json(out, by_alias=True) == field.serialize_json(value)


def test_refusals_are_the_routes_own(
    clients: tuple[TestClient, TestClient], answered: list[int]
) -> None:
    fast, slow = clients
    acme = _tenant_key(fast, "acme")
    json_type = {"Content-Type": "application/json"}
    k1 = b'"identifier": {"type": "klaviyo_id", "value": "K1"}'
    big = b"1" + b"0" * 30  # past 64 bits: orjson refuses it, the route's parser does not
    cases: list[tuple[dict[str, str], bytes]] = [
        (ADMIN_HEADERS, _doc(tenant="Bad Tenant", identifier={"type": "email", "value": "x"})),
        (ADMIN_HEADERS, _doc(identifier={"type": "klaviyo_id", "value": "a b"})),
        (ADMIN_HEADERS, _doc(identifier={"type": "email", "value": "nope"})),
        (ADMIN_HEADERS, _doc(identifier={"type": "universal_id", "value": UNKNOWN_UID})),
        (ADMIN_HEADERS, _doc(tenant="nobody")),
        (ADMIN_HEADERS, _doc(x=1)),
        (ADMIN_HEADERS, _doc(send_after="2030-01-02T00:00:00Z", send_before="2030-01-01T00:00Z")),
        (ADMIN_HEADERS, _doc(send_after="1999-01-01T00:00:00Z")),
        (ADMIN_HEADERS, _doc(latency_estimate_seconds=-1)),
        (ADMIN_HEADERS, b'{"tenant": "acme", ' + k1 + b', "latency_estimate_seconds": NaN}'),
        (ADMIN_HEADERS, b'{"tenant": "acme", ' + k1 + b', "intent_id": "\\ud800"}'),
        (ADMIN_HEADERS, b'{"tenant": "acme", ' + k1 + b', "latency_estimate_seconds": ' + big + b"}"),  # noqa: E501
        (ADMIN_HEADERS, b"[1, 2]"),
        (ADMIN_HEADERS, b"{not json"),
        (ADMIN_HEADERS, b""),
        (acme, _doc(tenant="beta")),
        (acme, _doc(tenant="beta", identifier={"type": "klaviyo_id"})),
        ({}, _doc()),
        ({"Authorization": "Bearer sfk_000000000000_" + "a" * 40}, b"{}"),
    ]  # fmt: skip
    for headers, content in cases:
        a = fast.post("/timing/decide", content=content, headers={**json_type, **headers})
        b = slow.post("/timing/decide", content=content, headers={**json_type, **headers})
        assert 400 <= a.status_code < 500, (content, a.text)
        assert (a.status_code, a.content) == (b.status_code, b.content), content
        assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate")
    # a chunked body (no Content-Length) is the route's too
    chunks = iter([b'{"tenant": "acme", ', b'"identifier": {"type": "klaviyo_id", "value": "K1"}}'])
    before = len(answered)
    r = fast.post("/timing/decide", content=chunks, headers={**json_type, **ADMIN_HEADERS})
    assert r.status_code == 200, r.text
    assert len(answered) == before


def test_fast_answers_are_timed_under_the_route_template(
    clients: tuple[TestClient, TestClient], answered: list[int]
) -> None:
    fast, _ = clients

    def count() -> float:
        for metric in DECISION_LATENCY.collect():
            for s in metric.samples:
                if s.name.endswith("_count") and s.labels == {
                    "route": "/timing/decide",
                    "method": "POST",
                    "status": "200",
                }:
                    return s.value
        return 0.0

    before = count()
    r = fast.post(
        "/timing/decide", json={"tenant": "acme", "identifier": ANNA}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 200
    assert answered
    assert count() == before + 1
