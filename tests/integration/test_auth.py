"""API keys end to end on SQLite and PostgreSQL: created once, stored hashed, scoped, revoked;
401/403 answers; per-key rate limits with 429 and Retry-After; the routes left open; the
operator key `sendflowr run` generates."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from sendflowr.api import create_app
from sendflowr.api.auth import ensure_admin_key
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.tables import api_keys
from tests.conftest import ADMIN_HEADERS, ADMIN_KEY


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def rt(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Runtime]:
    settings = settings.model_copy(
        update={"executor": False, "backfill_worker": False, "rate_limit_read": "5/minute"}
    )
    if request.param == "postgresql":
        settings = settings.model_copy(
            update={"metadata_url": request.getfixturevalue("postgres_url")}
        )
    runtime = Runtime.open(settings)
    try:
        yield runtime
    finally:
        runtime.events._command(f"DROP DATABASE IF EXISTS `{runtime.events.database}`")
        runtime.close()


@pytest.fixture
def app_client(rt: Runtime) -> Iterator[TestClient]:
    """No default key: each request says who it is."""
    with TestClient(create_app(rt.settings, runtime=rt)) as c:
        c.post("/api/tenants", json={"id": "acme", "name": "Acme"}, headers=ADMIN_HEADERS)
        c.post("/api/tenants", json={"id": "beta", "name": "Beta"}, headers=ADMIN_HEADERS)
        yield c


def _key(c: TestClient, tenant: str, *scopes: str) -> str:
    r = c.post(
        f"/api/tenants/{tenant}/keys",
        json={"name": f"{tenant}-{scopes[-1]}", "scopes": list(scopes)},
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_key_lifecycle_hashed_scoped_revocable(app_client: TestClient, rt: Runtime) -> None:
    c = app_client
    r = c.post(
        "/api/tenants/acme/keys",
        json={"name": "reporting", "scopes": ["read", "write"]},
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 201, r.text
    assert r.headers["Cache-Control"] == "no-store"
    made = r.json()
    key = made["key"]
    assert re.fullmatch(r"sfk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    assert key.startswith(f"sfk_{made['id']}_")
    assert (made["tenant"], made["scope"], made["scopes"]) == ("acme", "write", ["read", "write"])
    assert made["last_used_at"] is None

    # Stored hashed: the secret appears nowhere in the database.
    secret = key.split("_", 2)[2]
    with rt.metadata.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(api_keys)).mappings()]
    assert len(rows) == 1
    assert secret not in repr(rows)
    assert key not in repr(rows)
    assert re.fullmatch(r"[0-9a-f]{64}", rows[0]["secret_hash"])

    # It works (also as X-API-Key), sees only its tenant, and its use is recorded.
    assert [t["id"] for t in c.get("/api/tenants", headers=_h(key)).json()] == ["acme"]
    assert c.get("/api/tenants/acme/policy", headers={"X-API-Key": key}).status_code == 200
    listed = c.get("/api/tenants/acme/keys", headers=ADMIN_HEADERS).json()
    assert [k["id"] for k in listed] == [made["id"]]
    assert listed[0]["last_used_at"] is not None
    assert "key" not in listed[0]
    assert c.get("/api/tenants/beta/keys", headers=ADMIN_HEADERS).json() == []

    # A wrong secret for a real id is refused.
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert c.get("/api/tenants/acme", headers=_h(forged)).status_code == 401

    # Another tenant's path cannot revoke it; its own can, at once.
    assert (
        c.delete(f"/api/tenants/beta/keys/{made['id']}", headers=ADMIN_HEADERS).status_code == 404
    )
    assert (
        c.delete(f"/api/tenants/acme/keys/{made['id']}", headers=ADMIN_HEADERS).status_code == 204
    )
    gone = c.get("/api/tenants/acme", headers=_h(key))
    assert gone.status_code == 401
    assert gone.headers["WWW-Authenticate"].startswith("Bearer")
    revoked = c.get("/api/tenants/acme/keys", headers=ADMIN_HEADERS).json()
    assert revoked[0]["revoked_at"] is not None


def test_missing_or_bad_keys_are_401(app_client: TestClient) -> None:
    c = app_client
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": "Bearer sfk_0123456789ab_" + "x" * 43},
        {"X-API-Key": "sfk_zzz"},
    ):
        r = c.get("/api/tenants", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="sendflowr"'
        assert r.json()["detail"][0]["type"] == "unauthorized"


def test_scopes_admin_includes_write_includes_read(app_client: TestClient) -> None:
    c = app_client
    read, write, admin = (_key(c, "acme", s) for s in ("read", "write", "admin"))
    decide = {"tenant": "acme", "identifier": {"type": "email", "value": "ann@x.test"}}

    assert c.get("/api/tenants/acme/policy", headers=_h(read)).status_code == 200
    r = c.post("/timing/decide", json=decide, headers=_h(read))
    assert r.status_code == 403
    assert "'write'" in r.json()["detail"][0]["msg"]

    assert c.post("/timing/decide", json=decide, headers=_h(write)).status_code == 200
    for method, path, body in (
        ("POST", "/api/tenants/acme/keys", {"name": "x", "scopes": ["read"]}),
        ("POST", "/api/tenants/acme/breaker", {"reason": "x"}),
        ("DELETE", "/api/identity/sf_0000000000000000?tenant=acme", None),
        ("DELETE", "/api/tenants/acme", None),
    ):
        r = c.request(method, path, json=body, headers=_h(write))
        assert r.status_code == 403, (method, path, r.text)
        assert "'admin'" in r.json()["detail"][0]["msg"]

    # A tenant admin manages its own keys and breaker, but creates no tenants.
    made = c.post(
        "/api/tenants/acme/keys", json={"name": "x", "scopes": ["read"]}, headers=_h(admin)
    )
    assert made.status_code == 201
    assert (
        c.post("/api/tenants/acme/breaker", json={"reason": "x"}, headers=_h(admin)).status_code
        == 200
    )
    assert (
        c.post("/api/tenants", json={"id": "new", "name": "N"}, headers=_h(admin)).status_code
        == 403
    )
    assert c.get("/metrics", headers=_h(admin)).status_code == 403  # operator only
    assert c.get("/metrics", headers=ADMIN_HEADERS).status_code == 200


def test_rate_limit_per_key_429_with_retry_after(app_client: TestClient) -> None:
    c = app_client
    first, second = _key(c, "acme", "read"), _key(c, "acme", "read")
    codes = [c.get("/api/tenants/acme", headers=_h(first)).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    r = c.get("/api/tenants/acme", headers=_h(first))
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.json()["detail"][0]["type"] == "rate_limited"
    # The limit is the key's, not everyone's.
    assert c.get("/api/tenants/acme", headers=_h(second)).status_code == 200


def test_every_route_but_the_open_ones_needs_a_key(app_client: TestClient) -> None:
    """Enumerated from the app: a new route is guarded unless it is listed open here."""
    c = app_client
    open_routes = {
        "/health",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/api/webhook/klaviyo/{tenant}",
        "/api/webhook/klaviyo/{tenant}/flow",
        "/api/connector/oauth/callback",
        # the dashboard: sign-in, and page shells that redirect to it without a session
        # (tests/integration/test_dashboard_auth.py); their data comes from the routes here
        "/",
        "/favicon.ico",
        "/ui",
        "/ui/",
        "/ui/login",
        "/ui/logout",
        "/ui/{slug}",
    }
    checked = 0
    guarded: set[str] = set()
    for context in iter_route_contexts(c.app.routes):  # type: ignore[attr-defined]
        template = str(context.path)
        path = re.sub(r"\{[^}]+\}", "x", template)
        for method in (context.methods or set()) - {"HEAD", "OPTIONS"}:
            r = c.request(method, path)
            if template in open_routes:
                assert "WWW-Authenticate" not in r.headers, (method, template)
                continue
            assert r.status_code == 401, (method, template, r.status_code)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            # A body that is not JSON is no way around it: 401 before the body is read.
            json_type = {"Content-Type": "application/json"}
            bad = c.request(method, path, content=b"{", headers=json_type)
            assert bad.status_code == 401, (method, template, bad.status_code, bad.text[:200])
            checked += 1
            guarded.add(template)
    assert checked > 50
    assert {"/api/operator-keys", "/api/operator-keys/{key_id}"} <= guarded
    assert c.get("/health").status_code == 200
    # The webhook receiver answers by its signature check, not by an API key.
    hook = c.post("/api/webhook/klaviyo/acme", content=b"{}")
    assert hook.status_code in (400, 401, 409)
    assert "WWW-Authenticate" not in hook.headers


def test_metrics_can_be_made_public(settings: Settings) -> None:
    rt = Runtime.open(settings.model_copy(update={"metrics_public": True, "executor": False}))
    try:
        with TestClient(create_app(rt.settings, runtime=rt)) as c:
            assert c.get("/metrics").status_code == 200
            assert c.get("/api/tenants").status_code == 401
    finally:
        rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
        rt.close()


def test_run_generates_the_operator_key_once(tmp_path: Path, settings: Settings) -> None:
    bare = settings.model_copy(update={"admin_api_key": None, "data_dir": tmp_path / "var"})
    first, shown, path = ensure_admin_key(bare)
    assert shown is not None
    assert path is not None
    assert first.admin_api_key is not None
    assert first.admin_api_key.get_secret_value() == shown
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, shown_again, _ = ensure_admin_key(bare)
    assert shown_again is None  # printed once only
    assert again.admin_api_key is not None
    assert again.admin_api_key.get_secret_value() == shown
    configured, none, no_path = ensure_admin_key(settings)
    assert (configured, none, no_path) == (settings, None, None)


def test_cli_keys_create_list_revoke(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from sendflowr.cli import app
    from sendflowr.storage.metadata.store import Tenant

    monkeypatch.setenv("SENDFLOWR_METADATA_URL", settings.metadata_url)
    monkeypatch.setenv("SENDFLOWR_HASH_KEY", settings.hash_key.get_secret_value())  # type: ignore[union-attr]
    monkeypatch.setenv("SENDFLOWR_DATA_DIR", str(tmp_path / "var"))
    rt = Runtime.open(settings)
    try:
        rt.metadata.ensure_tenant(Tenant("acme", "Acme", "UTC"))
        runner = CliRunner()
        made = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--scope", "write"])
        assert made.exit_code == 0, made.output
        key = made.stdout.strip().splitlines()[-1]
        assert key.startswith("sfk_")
        op = runner.invoke(app, ["keys", "create", "--all-tenants", "--scope", "admin"])
        assert op.exit_code == 0, op.output
        op_key = op.stdout.strip().splitlines()[-1]
        both = runner.invoke(app, ["keys", "create"])
        assert both.exit_code == 2
        with TestClient(create_app(rt.settings, runtime=rt)) as c:
            assert c.get("/api/tenants/acme/policy", headers=_h(key)).status_code == 200
            assert c.put("/api/tenants/acme/policy", json={}, headers=_h(key)).status_code == 200
            assert c.get("/api/tenants/acme/keys", headers=_h(key)).status_code == 403
            assert c.get("/api/tenants", headers=_h(op_key)).status_code == 200
            listed = runner.invoke(app, ["keys", "list"])
            assert listed.exit_code == 0
            assert key.split("_")[1] in listed.stdout
            assert key not in listed.stdout
            assert runner.invoke(app, ["keys", "revoke", key]).exit_code == 0
            assert c.get("/api/tenants/acme/policy", headers=_h(key)).status_code == 401
            assert runner.invoke(app, ["keys", "revoke", "0123456789ab"]).exit_code == 2
    finally:
        rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
        rt.close()


@pytest.mark.redis
def test_rate_limits_are_shared_through_redis(settings: Settings) -> None:
    """Two API processes (two apps here) count one key's requests together in Redis."""
    cfg = settings.model_copy(
        update={
            "executor": False,
            "rate_limit_read": "4/minute",
            "rate_limit_storage_url": "redis://127.0.0.1:6379/13",  # fresh key ids: no clash
        }
    )
    rt = Runtime.open(cfg)
    try:
        one, two = create_app(cfg, runtime=rt), create_app(cfg, runtime=rt)
        with TestClient(one) as a, TestClient(two) as b:
            a.post("/api/tenants", json={"id": "acme", "name": "Acme"}, headers=ADMIN_HEADERS)
            key = _key(a, "acme", "read")
            codes = [
                client.get("/api/tenants/acme", headers=_h(key)).status_code
                for client in (a, b, a, b, a, b)
            ]
            assert codes == [200, 200, 200, 200, 429, 429]
            assert one.state.sendflowr_auth.limits.storage_kind == "RedisStorage"
    finally:
        rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
        rt.close()
