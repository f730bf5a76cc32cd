"""Authentication runs before the body is read (api/auth.py AuthFirstMiddleware).

FastAPI parses a JSON body before it resolves any dependency, so without the middleware a body
that is not JSON was a 422 to anyone: a caller without a key could probe request schemas. Every
authenticated route that takes a body is enumerated from the app, so a new one is covered here
without editing this file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.api.auth import authenticate
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from tests.conftest import ADMIN_HEADERS, open_runtime

JSON = {"Content-Type": "application/json"}
MALFORMED = [b"{", b'{"tenant": "acme",', b"\xff\xfe", b"[1, 2"]
SAMPLE_IDS = {
    "tenant": "acme",
    "key_id": "0123456789ab",
    "intent_id": "promo",
    "schedule_id": "s1",
    "merge_id": "1",
    "universal_id": "sf_0000000000000000",
}


@dataclass(frozen=True)
class BodyRoute:
    method: str
    template: str
    path: str
    tenant_in_path_or_query: bool
    operator_only: bool
    admin_only: bool
    query: dict[str, str]


def _body_routes(app: object) -> list[BodyRoute]:
    out = []
    for context in iter_route_contexts(app.routes):  # type: ignore[attr-defined]
        route = context.original_route
        template = str(context.path)
        deps = [getattr(d, "dependency", None) for d in getattr(context, "dependencies", ())]
        if not isinstance(route, APIRoute) or route.body_field is None:
            continue
        if authenticate not in deps:
            assert template.startswith(("/ui/", "/api/webhook/")), (
                f"{template} takes a body without an API key: list it as open on purpose"
            )
            continue
        names = {d.__name__ for d in deps if d is not None}
        has_query_tenant = any(p.name == "tenant" for p in route.dependant.query_params)
        for method in sorted((context.methods or set()) - {"HEAD", "OPTIONS"}):
            path = re.sub(r"\{([^}:]+)[^}]*\}", lambda m: SAMPLE_IDS[m.group(1)], template)
            out.append(
                BodyRoute(
                    method,
                    template,
                    path,
                    "{tenant}" in template or has_query_tenant,
                    "_operator" in names,
                    "_admin" in names,
                    {"tenant": "acme"} if has_query_tenant else {},
                )
            )
    return out


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    with open_runtime(
        settings.model_copy(update={"executor": False, "backfill_worker": False})
    ) as runtime:
        yield runtime


@pytest.fixture
def world(rt: Runtime) -> Iterator[tuple[TestClient, dict[str, str], list[BodyRoute]]]:
    """acme and beta, and keys: beta's admin, acme's read, write and admin, one revoked."""
    app = create_app(rt.settings, runtime=rt)
    with TestClient(app) as c:
        for tenant in ("acme", "beta"):
            r = c.post("/api/tenants", json={"id": tenant, "name": tenant}, headers=ADMIN_HEADERS)
            assert r.status_code == 201, r.text
        keys: dict[str, str] = {}
        for name, tenant, scope in (
            ("beta-admin", "beta", "admin"),
            ("acme-read", "acme", "read"),
            ("acme-write", "acme", "write"),
            ("revoked", "acme", "admin"),
        ):
            r = c.post(
                f"/api/tenants/{tenant}/keys",
                json={"name": name, "scopes": [scope]},
                headers=ADMIN_HEADERS,
            )
            assert r.status_code == 201, r.text
            keys[name] = r.json()["key"]
            keys[name + "-id"] = r.json()["id"]
        gone = c.delete(f"/api/tenants/acme/keys/{keys['revoked-id']}", headers=ADMIN_HEADERS)
        assert gone.status_code == 204
        routes = _body_routes(app)
        yield c, keys, routes


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **JSON}


def _send(c: TestClient, r: BodyRoute, raw: bytes, headers: dict[str, str]) -> tuple[int, str]:
    resp = c.request(r.method, r.path, params=r.query, content=raw, headers=headers)
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    first = resp.json()["detail"][0]
    assert set(first) >= {"loc", "msg", "type"}, resp.text  # the usual ErrorOut shape
    return resp.status_code, f"{r.method} {r.path} -> {resp.status_code} {resp.text[:200]}"


def test_no_key_and_a_bad_body_is_401_on_every_authenticated_body_route(
    world: tuple[TestClient, dict[str, str], list[BodyRoute]],
) -> None:
    c, keys, routes = world
    assert len(routes) >= 18, [r.template for r in routes]  # not a vacuous loop
    assert {r.template for r in routes} >= {"/api/operator-keys", "/timing/decide"}
    for r in routes:
        for raw in MALFORMED:
            for headers in (
                JSON,  # no key
                {"Authorization": "Bearer nope", **JSON},
                _h(keys["revoked"]),
            ):
                resp = c.request(r.method, r.path, params=r.query, content=raw, headers=headers)
                what = f"{r.method} {r.path} {headers} -> {resp.status_code} {resp.text[:200]}"
                assert resp.status_code == 401, what
                assert resp.headers["WWW-Authenticate"] == 'Bearer realm="sendflowr"', what
                assert resp.json()["detail"][0]["type"] == "unauthorized", what
        # Nor do a wrong Content-Type or a declared size over the cap tell it anything.
        for headers in ({"Content-Type": "text/plain"}, {}):
            status, what = _send(c, r, b"<x/>", headers)
            assert status == 401, what
        huge = {**JSON, "Content-Length": str(10**9)}
        resp = c.request(r.method, r.path, params=r.query, content=b"{", headers=huge)
        assert resp.status_code == 401, (r.template, resp.status_code, resp.text[:200])


def test_another_tenants_key_and_a_bad_body(
    world: tuple[TestClient, dict[str, str], list[BodyRoute]],
) -> None:
    """beta's admin key at acme: 403 wherever the tenant is in the path or query or the route is
    the operator's, before the body; where the tenant is only in the body, the body must be read
    to know it, so an unreadable one is 422 (to an authenticated caller, naming the body)."""
    c, keys, routes = world
    forbidden = body_tenant = 0
    for r in routes:
        for raw in MALFORMED:
            status, what = _send(c, r, raw, _h(keys["beta-admin"]))
            if r.tenant_in_path_or_query or r.operator_only:
                assert status == 403, what
                forbidden += 1
            else:
                assert status == 422, what
                body_tenant += 1
    assert forbidden > 0
    assert body_tenant > 0


def test_scope_checks_come_before_the_body_too(
    world: tuple[TestClient, dict[str, str], list[BodyRoute]],
) -> None:
    c, keys, routes = world
    for r in routes:
        status, what = _send(c, r, b"{", _h(keys["acme-read"]))
        assert status == 403, what  # every body route changes something: write needed
        assert "'write'" in what or r.operator_only, what
        status, what = _send(c, r, b"{", _h(keys["acme-write"]))
        if r.admin_only or r.operator_only:
            assert status == 403, what  # AdminOnly / OperatorOnly ran before the body
        else:
            assert status == 422, what


def test_a_valid_key_and_a_bad_body_is_422_naming_the_body(
    world: tuple[TestClient, dict[str, str], list[BodyRoute]],
) -> None:
    c, _, routes = world
    for r in routes:
        for raw in MALFORMED:
            resp = c.request(
                r.method,
                r.path,
                params=r.query,
                content=raw,
                headers={
                    **ADMIN_HEADERS,
                    **JSON,
                },
            )
            what = f"{r.method} {r.path} -> {resp.status_code} {resp.text[:200]}"
            assert resp.status_code in (400, 422), what
            err = resp.json()["detail"][0]
            assert err["loc"][0] == "body", what
            if resp.status_code == 422:
                assert err["type"] == "json_invalid", what
                assert err["msg"].startswith("malformed JSON"), what


def test_open_routes_still_answer_by_their_own_rules(
    world: tuple[TestClient, dict[str, str], list[BodyRoute]],
) -> None:
    c, _, _ = world
    hook = c.post("/api/webhook/klaviyo/acme", content=b"{", headers=JSON)
    assert hook.status_code in (400, 401, 409), hook.text  # the signature check, no API key
    assert "WWW-Authenticate" not in hook.headers
    assert c.get("/health").status_code == 200
    login = c.post("/ui/login", data={"key": "nope"}, follow_redirects=False)
    assert "WWW-Authenticate" not in login.headers, login.text  # the sign-in form's own answer


def test_a_bad_body_still_counts_against_the_keys_rate_limit(settings: Settings) -> None:
    """The middleware charges the limit once per request: a bad body is no longer a way
    around it, and a good request is not charged twice (the dependency reuses the check)."""
    cfg = settings.model_copy(update={"executor": False, "rate_limit_write": "3/minute"})
    with open_runtime(cfg) as rt, TestClient(create_app(cfg, runtime=rt)) as c:
        r = c.post("/api/tenants", json={"id": "acme", "name": "A"}, headers=ADMIN_HEADERS)
        assert r.status_code == 201, r.text
        made = c.post(
            "/api/tenants/acme/keys",
            json={"name": "w", "scopes": ["write"]},
            headers=ADMIN_HEADERS,
        )
        write = _h(made.json()["key"])
        body = {"tenant": "acme", "identifier": {"type": "email", "value": "ann@acme.test"}}
        ok = c.post("/timing/decide", json=body, headers=write)
        assert ok.status_code == 200, ok.text
        codes = [
            c.post("/timing/decide", content=b"{", headers=write).status_code for _ in range(3)
        ]
        assert codes == [422, 422, 429]
