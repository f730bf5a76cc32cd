"""The tenant a JSON body names is checked before the body is validated (api/auth.py
AuthFirstMiddleware, `_BodyTenant`): a tenant key sending a body that names another tenant is
403 however invalid the rest is, while the body caps (413), the JSON-only rule (422) and the
body itself reach the route exactly as before.

The cross-tenant suite (test_cross_tenant.py) tries every route with a spoiled body; this file
covers what the middleware does with the bytes: chunked bodies, bodies over the cap, other
content types, the demo-tenant default of /timing-decision, several events, big bodies."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.api.limits import BATCH_DECIDE_MAX_BODY, MIB
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from tests.conftest import ADMIN_HEADERS, open_runtime

JSON = {"Content-Type": "application/json"}
BAD_DECIDE = {"identifier": {"type": "email", "value": 12}, "send_after": "not a time"}


@pytest.fixture
def world(settings: Settings) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    """Tenants a, b and the demo tenant; a write key for a and for demo."""
    cfg = settings.model_copy(update={"executor": False, "backfill_worker": False})
    with open_runtime(cfg) as rt, TestClient(create_app(cfg, runtime=rt)) as c:
        _setup(c, rt)
        keys = {}
        for tenant in ("a", cfg.demo_tenant):
            r = c.post(
                f"/api/tenants/{tenant}/keys",
                json={"name": "w", "scopes": ["write"]},
                headers=ADMIN_HEADERS,
            )
            assert r.status_code == 201, r.text
            keys[tenant] = {"Authorization": f"Bearer {r.json()['key']}", **JSON}
        yield c, keys


def _setup(c: TestClient, rt: Runtime) -> None:
    for tenant in ("a", "b", rt.settings.demo_tenant):
        r = c.post("/api/tenants", json={"id": tenant, "name": tenant}, headers=ADMIN_HEADERS)
        assert r.status_code == 201, r.text


def _detail(r: object) -> dict[str, object]:
    first: dict[str, object] = r.json()["detail"][0]  # type: ignore[attr-defined]
    return first


def test_a_body_naming_another_tenant_is_403_however_invalid(
    world: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    c, keys = world
    a = keys["a"]
    r = c.post("/timing/decide", json={"tenant": "b", **BAD_DECIDE}, headers=a)
    assert r.status_code == 403, r.text
    assert _detail(r)["type"] == "forbidden"
    assert "'b'" not in r.text  # nothing of the body echoed
    assert "identifier" not in r.text
    # The same invalid body for a's own tenant: the route's validation answers (422).
    r = c.post("/timing/decide", json={"tenant": "a", **BAD_DECIDE}, headers=a)
    assert r.status_code == 422, r.text
    assert {tuple(e["loc"]) for e in r.json()["detail"]} >= {("body", "identifier", "value")}
    # A tenant that is not even a valid name is not a's either.
    r = c.post("/timing/decide", json={"tenant": "B!!", **BAD_DECIDE}, headers=a)
    assert r.status_code == 403, r.text
    # A tenant that is not a string, or no tenant at all: validation (nothing is named).
    for body in ({"tenant": 7, **BAD_DECIDE}, BAD_DECIDE, {"tenant": ["b"]}):
        r = c.post("/timing/decide", json=body, headers=a)
        assert r.status_code == 422, (body, r.text)
    # Unparseable JSON stays a 422 naming the body.
    r = c.post("/timing/decide", content=b'{"tenant": "b",', headers=a)
    assert r.status_code == 422, r.text
    assert _detail(r)["type"] == "json_invalid"


def test_every_event_of_a_batch_is_checked(
    world: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    c, keys = world
    mine = {"tenant": "a", "esp": "klaviyo", "esp_event_id": 5}  # invalid: no type, no time
    theirs = {"tenant": "b", "bogus": True}
    r = c.post("/api/events", json={"events": [mine, theirs], "extra": 1}, headers=keys["a"])
    assert r.status_code == 403, r.text
    r = c.post("/api/events", json={"events": [mine], "extra": 1}, headers=keys["a"])
    assert r.status_code == 422, r.text  # only a's: validation


def test_timing_decision_without_a_tenant_acts_on_the_demo_tenant(
    world: tuple[TestClient, dict[str, dict[str, str]]],
    settings: Settings,
) -> None:
    """/timing-decision's tenant defaults to the demo tenant: a key of another tenant is 403
    with or without a valid body; the demo tenant's key gets the route's validation."""
    c, keys = world
    bad = {"email": 12, "send_after": "never"}
    for body in (bad, {**bad, "tenant": None}, {"email": "ann@example.com"}):
        r = c.post("/timing-decision", json=body, headers=keys["a"])
        assert r.status_code == 403, (body, r.text)
    r = c.post("/timing-decision", json=bad, headers=keys[settings.demo_tenant])
    assert r.status_code == 422, r.text
    r = c.post("/timing-decision", json={"tenant": "a", **bad}, headers=keys["a"])
    assert r.status_code == 422, r.text


def test_the_body_reaches_the_route_intact(
    world: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    """Read by the middleware, then handed on: in chunks, and over 1 MiB (parsed off the
    event loop), a's own valid request is answered by the route as before."""
    c, keys = world
    a = keys["a"]
    body = {"tenant": "a", "identifier": {"type": "email", "value": "ann@example.com"}}
    raw = orjson.dumps(body)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 7):
            yield raw[i : i + 7]

    r = c.post("/timing/decide", content=chunks(), headers=a)
    assert r.status_code == 200, r.text
    assert r.json()["tenant"] == "a"
    # 2 MiB of JSON whitespace after two recipients: under the batch cap, over the inline parse.
    recipients = [
        {"type": "email", "value": "ann@example.com"},
        {"type": "email", "value": "bob@example.com"},
    ]
    padded = orjson.dumps({"tenant": "a", "recipients": recipients}) + b" " * (2 * MIB)
    r = c.post("/timing/decide/batch", content=padded, headers=a)
    assert r.status_code == 200, r.text
    assert len(r.json()["decisions"]) == 2
    padded_b = orjson.dumps({"tenant": "b", "recipients": 5}) + b" " * (2 * MIB)
    r = c.post("/timing/decide/batch", content=padded_b, headers=a)
    assert r.status_code == 403, r.text
    # The same chunked, naming b and invalid: 403.
    raw_b = orjson.dumps({"tenant": "b", **BAD_DECIDE})
    r = c.post("/timing/decide", content=iter([raw_b[:5], raw_b[5:]]), headers=a)
    assert r.status_code == 403, r.text


def test_body_caps_and_content_types_are_unchanged(
    world: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    """Over the cap is 413 (declared or streamed), another Content-Type 422: the body is not
    read for the tenant check then, so these answers are the same whatever it names."""
    c, keys = world
    a = keys["a"]
    over = orjson.dumps({"tenant": "b", "recipients": []}) + b" " * BATCH_DECIDE_MAX_BODY
    r = c.post("/timing/decide/batch", content=over, headers=a)
    assert r.status_code == 413, r.text
    assert _detail(r)["type"] == "too_large"

    def streamed() -> Iterator[bytes]:
        yield b'{"tenant": "b", "identifier": '
        for _ in range(3):
            yield b" " * (MIB // 2)
        yield b"}"

    r = c.post("/timing/decide", content=streamed(), headers=a)
    assert r.status_code == 413, r.text
    r = c.post(
        "/timing/decide",
        content=b"{}",
        headers={**a, "Content-Length": "not a number"},
    )
    assert r.status_code == 400, r.text  # BodyLimitMiddleware's answer, as before
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        r = c.post(
            "/timing/decide",
            content=orjson.dumps({"tenant": "b"}),
            headers={**a, "Content-Type": content_type},
        )
        assert r.status_code == 422, r.text
        assert _detail(r)["type"] == "unsupported_media_type"


def test_the_operator_is_not_checked_against_the_body(
    world: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    c, _ = world
    headers = {**ADMIN_HEADERS, **JSON}
    r = c.post("/timing/decide", json={"tenant": "b", **BAD_DECIDE}, headers=headers)
    assert r.status_code == 422, r.text  # every tenant is the operator's: validation
    ok = {"tenant": "b", "identifier": {"type": "email", "value": "ann@example.com"}}
    assert c.post("/timing/decide", json=ok, headers=headers).status_code == 200
