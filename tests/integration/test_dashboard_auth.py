"""The dashboard's sign-in, session cookie and CSRF protection (api/session.py,
dashboard/routes.py), without a browser: what the cookie allows and what it never allows."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sendflowr.api.session import COOKIE_NAME, CSRF_HEADER
from sendflowr.runtime import Runtime
from tests.conftest import ADMIN_HEADERS, ADMIN_KEY


@pytest.fixture
def web(runtime: Runtime) -> Iterator[TestClient]:
    """A browser-like client: no key header, cookies kept."""
    from sendflowr.api import create_app

    with TestClient(create_app(runtime.settings, runtime=runtime)) as c:
        yield c


def _sign_in(c: TestClient, key: str = ADMIN_KEY, next_: str = "/ui/tenants") -> str:
    r = c.post("/ui/login", data={"api_key": key, "next": next_}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = c.get("/ui/backfill")
    assert page.status_code == 200
    m = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert m is not None
    return m.group(1)


def test_pages_redirect_to_sign_in_and_come_back(web: TestClient) -> None:
    r = web.get("/ui/backfill?tenant=demo", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=%2Fui%2Fbackfill%3Ftenant%3Ddemo"
    r = web.post(
        "/ui/login",
        data={"api_key": ADMIN_KEY, "next": "/ui/backfill?tenant=demo"},
        follow_redirects=False,
    )
    assert (r.status_code, r.headers["location"]) == (303, "/ui/backfill?tenant=demo")
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    for flag in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
        assert flag.lower() in cookie.lower(), cookie
    assert ADMIN_KEY not in cookie  # the cookie names the key, it does not carry it
    page = web.get("/ui/backfill")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-store"


def test_a_bad_key_is_refused_in_words(web: TestClient) -> None:
    r = web.post("/ui/login", data={"api_key": "sfk_x_y"})
    assert r.status_code == 401
    assert "not valid" in r.text
    assert COOKIE_NAME not in r.headers.get("set-cookie", "")
    assert web.post("/ui/login", data={"api_key": ""}).status_code == 401
    assert web.get("/api/tenants").status_code == 401


@pytest.mark.parametrize(
    "target", ["https://evil.example/ui/x", "//evil.example/ui/", "/api/tenants", "/ui\\@evil"]
)
def test_sign_in_never_redirects_off_the_dashboard(web: TestClient, target: str) -> None:
    r = web.post("/ui/login", data={"api_key": ADMIN_KEY, "next": target}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/ui/")


def test_a_sign_in_form_posted_from_another_site_is_refused(web: TestClient) -> None:
    r = web.post(
        "/ui/login", data={"api_key": ADMIN_KEY}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403
    assert COOKIE_NAME not in r.headers.get("set-cookie", "")


def test_the_session_reads_but_writes_only_with_the_csrf_token(web: TestClient) -> None:
    token = _sign_in(web)
    assert web.get("/api/tenants").status_code == 200
    body = {"id": "acme", "name": "Acme"}
    r = web.post("/api/tenants", json=body)
    assert r.status_code == 403
    assert r.json()["detail"][0]["loc"] == [CSRF_HEADER]
    r = web.post("/api/tenants", json=body, headers={CSRF_HEADER: "forged"})
    assert r.status_code == 403
    assert web.get("/api/tenants/acme").status_code == 404  # nothing was created
    r = web.post("/api/tenants", json=body, headers={CSRF_HEADER: token})
    assert r.status_code == 201, r.text


def test_a_tampered_or_foreign_cookie_is_no_session(web: TestClient, runtime: Runtime) -> None:
    _sign_in(web)
    value = web.cookies[COOKIE_NAME]
    web.cookies.set(COOKIE_NAME, value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    assert web.get("/api/tenants").status_code == 401
    assert web.get("/ui/tenants", follow_redirects=False).status_code == 303
    # A cookie signed by another deployment (another hash key) is not accepted either.
    from sendflowr.api.session import SessionCodec

    foreign, _ = SessionCodec(b"another deployment").issue("settings", "x")
    web.cookies.set(COOKIE_NAME, foreign)
    assert web.get("/api/tenants").status_code == 401


def test_revoking_the_key_ends_its_sessions(web: TestClient, client: TestClient) -> None:
    client.post("/api/tenants", json={"id": "acme", "name": "Acme"})
    made = client.post("/api/tenants/acme/keys", json={"name": "ops", "scopes": ["write"]}).json()
    token = _sign_in(web, made["key"])
    assert [t["id"] for t in web.get("/api/tenants").json()] == ["acme"]  # the key's tenant
    assert web.get("/api/tenants/other").status_code == 403
    r = web.post(
        "/api/tenants/acme/keys",
        json={"name": "x", "scopes": ["read"]},
        headers={CSRF_HEADER: token},
    )
    assert r.status_code == 403  # a write key cannot make keys, signed in or not
    assert client.delete(f"/api/tenants/acme/keys/{made['id']}").status_code == 204
    assert web.get("/api/tenants").status_code == 401
    assert web.get("/ui/tenants", follow_redirects=False).status_code == 303


def test_sign_out_needs_the_token_and_ends_the_session(web: TestClient) -> None:
    token = _sign_in(web)
    r = web.post("/ui/logout", data={"csrf_token": "wrong"})
    assert r.status_code == 403
    assert web.get("/api/tenants").status_code == 200  # still signed in
    r = web.post("/ui/logout", data={"csrf_token": token}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/ui/login")
    assert web.get("/api/tenants").status_code == 401


def test_sign_in_attempts_are_limited_per_address(web: TestClient) -> None:
    codes = [web.post("/ui/login", data={"api_key": f"sfk_a_{i}"}).status_code for i in range(21)]
    assert codes[:20] == [401] * 20
    assert codes[20] == 429


def test_forms_are_accepted_only_under_ui(client: TestClient) -> None:
    r = client.post(
        "/api/tenants",
        content="id=acme&name=Acme",
        headers={**ADMIN_HEADERS, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 422
    r = client.post(
        "/ui/login",
        content="api_key=" + "x" * 20_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413


def test_pages_and_assets(web: TestClient) -> None:
    _sign_in(web)
    for slug in ("tenants", "backfill"):
        r = web.get(f"/ui/{slug}")
        assert r.status_code == 200
        assert f'src="/ui/static/js/{slug}.js"' in r.text
        assert web.get(f"/ui/static/js/{slug}.js").status_code == 200
    assert web.get("/ui/nope").status_code == 404
    assert web.get("/ui/static/vendor/uplot/uPlot.iife.min.js").status_code == 200
    assert web.get("/", follow_redirects=False).headers["location"] == "/ui/"
