"""The OAuth server side: authorization code + PKCE (S256), refresh rotation, revocation."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from tests.klaviyo_sim.conftest import REVISION, FakeClock, MakeClient
from tests.klaviyo_sim.contract import validate

REDIRECT = "https://app.sendflowr.test/oauth/callback"
BASIC = "Basic " + base64.b64encode(b"sim-client:sim-client-secret").decode()
SCOPES = "events:read metrics:read profiles:read"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorize(c: TestClient, challenge: str, **extra: str) -> dict[str, list[str]]:
    params = {
        "client_id": "sim-client",
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "state": "st-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scope": SCOPES,
        **extra,
    }
    r = c.get("/oauth/authorize", params=params, follow_redirects=False)
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return parse_qs(urlsplit(location).query)


def exchange(c: TestClient, code: str, verifier: str, **extra: str) -> tuple[int, dict[str, Any]]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
        **extra,
    }
    r = c.post("/oauth/token", data=form, headers={"Authorization": BASIC})
    return r.status_code, r.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "revision": REVISION}


def tokens(c: TestClient) -> dict[str, Any]:
    verifier, challenge = pkce()
    query = authorize(c, challenge)
    status, body = exchange(c, query["code"][0], verifier)
    assert status == 200, body
    return body


def test_code_flow_with_pkce(client: TestClient) -> None:
    verifier, challenge = pkce()
    query = authorize(client, challenge)
    assert query["state"] == ["st-123"]
    status, body = exchange(client, query["code"][0], verifier)
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == SCOPES
    r = client.get("/api/events", params={"page[size]": "1"}, headers=bearer(body["access_token"]))
    assert r.status_code == 200


def test_wrong_verifier_reused_and_expired_codes(make_client: MakeClient) -> None:
    clock = FakeClock()
    c = make_client(clock=clock, authorization_code_lifetime_seconds=60)
    verifier, challenge = pkce()
    code = authorize(c, challenge)["code"][0]
    status, body = exchange(c, code, pkce()[0])
    assert (status, body["error"]) == (400, "invalid_grant")
    status, first = exchange(c, code, verifier)
    assert status == 200
    status, body = exchange(c, code, verifier)
    assert (status, body["error"]) == (400, "invalid_grant")
    # A replayed code revokes what it was exchanged for.
    r = c.get("/api/metrics", headers=bearer(first["access_token"]))
    assert r.status_code == 401
    verifier, challenge = pkce()
    code = authorize(c, challenge)["code"][0]
    clock.advance(61)
    status, body = exchange(c, code, verifier)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "expired" in body["error_description"]


def test_redirect_uri_must_match(client: TestClient) -> None:
    verifier, challenge = pkce()
    code = authorize(client, challenge)["code"][0]
    status, body = exchange(client, code, verifier, redirect_uri="https://evil.test/cb")
    assert (status, body["error"]) == (400, "invalid_grant")


def test_pkce_s256_is_required(client: TestClient) -> None:
    _, challenge = pkce()
    query = authorize(client, challenge, code_challenge_method="plain")
    assert query["error"] == ["invalid_request"]
    assert query["state"] == ["st-123"]
    r = client.get(
        "/oauth/authorize",
        params={"client_id": "someone-else", "redirect_uri": REDIRECT, "response_type": "code"},
        follow_redirects=False,
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_client"


def test_denied_consent_by_setting(make_client: MakeClient) -> None:
    c = make_client(deny_consent=True)
    query = authorize(c, pkce()[1])
    assert query["error"] == ["access_denied"]
    assert "code" not in query
    c.post("/_sim/settings", json={"deny_consent": False})
    assert "code" in authorize(c, pkce()[1])
    c.post("/_sim/settings", json={"deny_consent": True})
    assert authorize(c, pkce()[1])["error"] == ["access_denied"]


def test_client_authentication(client: TestClient) -> None:
    verifier, challenge = pkce()
    code = authorize(client, challenge)["code"][0]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
    }
    wrong = "Basic " + base64.b64encode(b"sim-client:nope").decode()
    for headers in ({}, {"Authorization": wrong}):
        r = client.post("/oauth/token", data=form, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_client"
    r = client.post(
        "/oauth/token", data={"grant_type": "password"}, headers={"Authorization": BASIC}
    )
    assert r.json()["error"] == "unsupported_grant_type"


def test_refresh_rotates_the_refresh_token(client: TestClient) -> None:
    first = tokens(client)
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    r = client.post("/oauth/token", data=form, headers={"Authorization": BASIC})
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    again = client.post("/oauth/token", data=form, headers={"Authorization": BASIC})
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
    assert client.get("/api/metrics", headers=bearer(second["access_token"])).status_code == 200


def test_expired_access_token_is_401(make_client: MakeClient) -> None:
    clock = FakeClock()
    c = make_client(clock=clock, access_token_lifetime_seconds=60)
    body = tokens(c)
    assert body["expires_in"] == 60
    assert c.get("/api/metrics", headers=bearer(body["access_token"])).status_code == 200
    clock.advance(60)
    r = c.get("/api/metrics", headers=bearer(body["access_token"]))
    assert r.status_code == 401
    assert "expired" in r.json()["errors"][0]["detail"]
    validate(r)


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
def test_revoke(client: TestClient, which: str) -> None:
    body = tokens(client)
    r = client.post("/oauth/revoke", data={"token": body[which]}, headers={"Authorization": BASIC})
    assert r.status_code == 200
    assert client.get("/api/metrics", headers=bearer(body["access_token"])).status_code == 401
    form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    refreshed = client.post("/oauth/token", data=form, headers={"Authorization": BASIC})
    # Revoking the refresh token ends the grant; revoking an access token leaves it.
    assert refreshed.status_code == (200 if which == "access_token" else 400)
    unknown = client.post("/oauth/revoke", data={"token": "nope"}, headers={"Authorization": BASIC})
    assert unknown.status_code == 200


def test_scopes_are_enforced_for_tokens(client: TestClient) -> None:
    body = tokens(client)  # events, metrics and profiles read only
    r = client.get("/api/flows", headers=bearer(body["access_token"]))
    assert r.status_code == 403
    assert r.json()["errors"][0]["code"] == "permission_denied"
    validate(r)
    posted = client.post(
        "/api/events",
        content=b"{}",
        headers={**bearer(body["access_token"]), "Content-Type": "application/vnd.api+json"},
    )
    assert posted.status_code == 403
