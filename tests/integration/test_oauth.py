"""Klaviyo OAuth end to end against the Klaviyo simulator: the authorize redirect (PKCE S256,
state), the callback (tokens stored encrypted; wrong, reused or expired state; declined
consent; expired code; Klaviyo unreachable), bearer tokens through OAuthTokenProvider (refresh
before expiry, after a 401, refused refresh), and revocation on disconnect.

Tests without the `network` marker use no sockets (the provider's protocol details run over
httpx.MockTransport).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sendflowr.connectors.klaviyo.constants import JSON_API, REVISION
from sendflowr.connectors.klaviyo.oauth import (
    InvalidGrantError,
    KlaviyoOAuth,
    KlaviyoUnavailableError,
    OAuthConfig,
    OAuthTokenProvider,
    ReauthorizeRequiredError,
    code_challenge,
)
from sendflowr.klaviyo_sim import SimServerConfig, run_in_thread
from sendflowr.runtime import Runtime
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.tables import esp_accounts
from tests.conftest import ADMIN_HEADERS

KEY = generate_key()
CLIENT_ID = "sim-client"
CLIENT_SECRET = "sim-client-secret"
PUBLIC_URL = "http://testserver"
CALLBACK = "/api/connector/oauth/callback"


def build_app(runtime: Runtime) -> FastAPI:
    from sendflowr.api import create_app

    return create_app(runtime.settings, runtime=runtime)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """An encryption key and an OAuth app; Klaviyo itself is unreachable unless a test points
    the runtime at the simulator (`sim_runtime`)."""
    return settings.model_copy(
        update={
            "secret_key": SecretStr(KEY),
            "backfill_worker": False,
            "public_url": PUBLIC_URL,
            "klaviyo_client_id": CLIENT_ID,
            "klaviyo_client_secret": SecretStr(CLIENT_SECRET),
            "klaviyo_api_url": "http://klaviyo.invalid",
            "klaviyo_authorize_url": "http://klaviyo.invalid/oauth/authorize",
        }
    )


def _start_sim(**config: Any) -> tuple[str, Callable[[], None]]:
    return run_in_thread(
        SimServerConfig(
            oauth_client_id=CLIENT_ID,
            oauth_client_secret=CLIENT_SECRET,
            profiles=5,
            days=1,
            rate_limits=False,
            **config,
        )
    )


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    base_url, stop = _start_sim()
    try:
        yield base_url
    finally:
        stop()


@pytest.fixture(scope="module")
def instant_expiry_sim_url() -> Iterator[str]:
    """A simulator whose authorisation codes expire at once."""
    base_url, stop = _start_sim(authorization_code_lifetime_seconds=0.0)
    try:
        yield base_url
    finally:
        stop()


def _pointed_at(runtime: Runtime, api_url: str) -> Runtime:
    update = {"klaviyo_api_url": api_url, "klaviyo_authorize_url": api_url + "/oauth/authorize"}
    return dataclasses.replace(runtime, settings=runtime.settings.model_copy(update=update))


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(build_app(runtime), headers=ADMIN_HEADERS) as c:
        c.post("/api/tenants", json={"id": "acme", "name": "Acme"}).raise_for_status()
        yield c


@pytest.fixture
def sim_runtime(runtime: Runtime, sim_url: str) -> Runtime:
    return _pointed_at(runtime, sim_url)


@pytest.fixture
def sim_client(sim_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(build_app(sim_runtime), headers=ADMIN_HEADERS) as c:
        c.post("/api/tenants", json={"id": "acme", "name": "Acme"}).raise_for_status()
        yield c


# -- helpers -----------------------------------------------------------------------------------
def _authorize(client: TestClient, tenant: str = "acme") -> str:
    r = client.get(
        "/api/connector/oauth/authorize", params={"tenant": tenant}, follow_redirects=False
    )
    assert r.status_code == 302, r.text
    return str(r.headers["location"])


def _consent(authorize_url: str, *, deny: bool = False) -> str:
    """The browser at Klaviyo (the simulator consents at once): returns the callback URL's
    path and query that Klaviyo redirects back to."""
    if deny:
        authorize_url += "&sim_deny=1"
    r = httpx.get(authorize_url, follow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    back = urlsplit(r.headers["location"])
    assert f"{back.scheme}://{back.netloc}" == PUBLIC_URL
    assert back.path == CALLBACK
    return f"{back.path}?{back.query}"


def _connect(client: TestClient) -> tuple[httpx.Response, str]:
    callback = _consent(_authorize(client))
    return client.get(callback), callback


def _basic() -> str:
    return "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()


def _accounts_status(sim_url: str, access_token: str) -> int:
    r = httpx.get(
        f"{sim_url}/api/accounts",
        headers={
            "Authorization": f"Bearer {access_token}",
            "revision": REVISION,
            "Accept": JSON_API,
        },
        timeout=10,
    )
    return r.status_code


def _sim_revoke(sim_url: str, token: str) -> None:
    r = httpx.post(
        f"{sim_url}/oauth/revoke",
        data={"token": token},
        headers={"Authorization": _basic()},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def _sim_refresh_error(sim_url: str, refresh_token: str) -> str | None:
    r = httpx.post(
        f"{sim_url}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        headers={"Authorization": _basic()},
        timeout=10,
    )
    return None if r.status_code == 200 else str(r.json().get("error"))


def _page(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert "Traceback" not in r.text
    assert '<html lang="en">' in r.text
    return r.text


def _service_logs(caplog: pytest.LogCaptureFixture) -> str:
    """What SendFlowr itself logged (the test's browser and HTTP clients excluded)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("sendflowr"))


def _secrets_absent(text: str, *values: str) -> None:
    for value in values:
        assert value not in text


# -- authorize ---------------------------------------------------------------------------------
def test_authorize_redirects_to_klaviyo_with_an_s256_challenge_and_state(
    client: TestClient, runtime: Runtime
) -> None:
    location = _authorize(client)
    parts = urlsplit(location)
    assert (
        f"{parts.scheme}://{parts.netloc}{parts.path}" == "http://klaviyo.invalid/oauth/authorize"
    )
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert params["response_type"] == "code"
    assert params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == PUBLIC_URL + CALLBACK
    assert params["scope"] == runtime.settings.klaviyo_scopes
    assert params["code_challenge_method"] == "S256"
    assert len(params["state"]) >= 32
    assert CLIENT_SECRET not in location

    # The state carries the verifier (encrypted) whose S256 hash is the challenge.
    pending = runtime.accounts.consume_oauth_state(params["state"])
    assert pending.tenant == "acme"
    assert pending.redirect_uri == PUBLIC_URL + CALLBACK
    assert 43 <= len(pending.code_verifier) <= 128
    assert code_challenge(pending.code_verifier) == params["code_challenge"]
    assert pending.code_verifier not in location

    # A fresh state and verifier every time.
    again = {k: v[0] for k, v in parse_qs(urlsplit(_authorize(client)).query).items()}
    assert again["state"] != params["state"]
    assert again["code_challenge"] != params["code_challenge"]


def test_authorize_refuses_an_unknown_tenant_or_a_missing_oauth_app(
    client: TestClient, runtime: Runtime
) -> None:
    r = client.get("/api/connector/oauth/authorize", params={"tenant": "ghost"})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert (
        client.get("/api/connector/oauth/authorize", params={"tenant": "Bad!"}).status_code == 422
    )

    unconfigured = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"klaviyo_client_id": None})
    )
    with TestClient(build_app(unconfigured), headers=ADMIN_HEADERS) as c:
        r = c.get("/api/connector/oauth/authorize", params={"tenant": "acme"})
    assert r.status_code == 409
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["klaviyo_client_id"]
    assert "SENDFLOWR_KLAVIYO_CLIENT_ID" in detail["msg"]


# -- callback ----------------------------------------------------------------------------------
@pytest.mark.network
def test_callback_stores_encrypted_tokens_and_the_account_works(
    sim_client: TestClient,
    sim_runtime: Runtime,
    sim_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    r, callback = _connect(sim_client)
    text = _page(r, 200)
    assert "Klaviyo connected" in text

    creds = sim_runtime.accounts.credentials("acme", "klaviyo")
    assert set(creds) == {"access_token", "refresh_token", "expires_at", "scope"}
    assert creds["expires_at"] > time.time() + 3000
    assert "accounts:read" in creds["scope"]
    code = dict(parse_qsl(urlsplit(callback).query))["code"]
    shown = [
        text,
        sim_client.get("/api/tenants/acme/accounts/klaviyo").text,
        sim_client.get("/api/tenants/acme/accounts").text,
    ]
    for body in [*shown, _service_logs(caplog)]:
        _secrets_absent(body, creds["access_token"], creds["refresh_token"], code, CLIENT_SECRET)
    # Every log line, the test's own HTTP clients included (they log URLs, which carry the
    # code on the browser's way back, but never a token or the client secret).
    _secrets_absent(caplog.text, creds["access_token"], creds["refresh_token"], CLIENT_SECRET)

    account = sim_client.get("/api/tenants/acme/accounts/klaviyo").json()
    assert account["auth_kind"] == "oauth"
    assert account["status"] == "connected"
    assert account["account_id"]
    assert account["api_url"] is None

    with sim_runtime.metadata.engine.connect() as conn:
        raw = conn.execute(sa.select(esp_accounts.c.credentials)).scalar()
    assert raw is not None
    _secrets_absent(raw, creds["access_token"], creds["refresh_token"])

    # The Klaviyo client's view: a bearer token from the provider opens the account.
    provider = OAuthTokenProvider(sim_runtime, "acme")
    token = asyncio.run(provider.token())
    assert token == creds["access_token"]
    assert _accounts_status(sim_url, token) == 200


def test_callback_with_an_unknown_state_is_a_400_page(client: TestClient) -> None:
    r = client.get(CALLBACK, params={"code": "CODE-NEVER-SHOWN", "state": "forged-state"})
    text = _page(r, 400)
    assert "not issued by SendFlowr" in text
    assert "CODE-NEVER-SHOWN" not in text
    assert "forged-state" not in text
    assert "Connection not completed" in _page(client.get(CALLBACK, params={"code": "x"}), 400)


def test_callback_with_an_expired_state_is_a_400_page(client: TestClient, runtime: Runtime) -> None:
    state = runtime.accounts.create_oauth_state(
        "acme", "klaviyo", "v" * 64, PUBLIC_URL + CALLBACK, ttl=timedelta(seconds=-1)
    )
    text = _page(client.get(CALLBACK, params={"code": "c", "state": state}), 400)
    assert "expired" in text
    assert "start the connection again" in text


@pytest.mark.network
def test_a_reused_state_is_a_400_page(sim_client: TestClient, sim_runtime: Runtime) -> None:
    first, callback = _connect(sim_client)
    _page(first, 200)
    stored = sim_runtime.accounts.credentials("acme", "klaviyo")
    text = _page(sim_client.get(callback), 400)
    assert "used already" in text
    assert sim_runtime.accounts.credentials("acme", "klaviyo") == stored


@pytest.mark.network
def test_declined_consent_is_a_400_page_and_stores_nothing(
    sim_client: TestClient, sim_runtime: Runtime
) -> None:
    callback = _consent(_authorize(sim_client), deny=True)
    assert "error=access_denied" in callback
    text = _page(sim_client.get(callback), 400)
    assert "declined" in text
    assert sim_runtime.accounts.find("acme", "klaviyo") is None
    assert "used already" in _page(sim_client.get(callback), 400)  # the state is spent


@pytest.mark.network
def test_an_expired_code_is_a_400_page(
    runtime: Runtime, instant_expiry_sim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = build_app(_pointed_at(runtime, instant_expiry_sim_url))
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        c.post("/api/tenants", json={"id": "acme", "name": "Acme"}).raise_for_status()
        callback = _consent(_authorize(c))
        text = _page(c.get(callback), 400)
    assert "the authorisation code expired or was used; connect again" in text.lower()
    assert runtime.accounts.find("acme", "klaviyo") is None
    code = dict(parse_qsl(urlsplit(callback).query))["code"]
    _secrets_absent(text + _service_logs(caplog), code)


@pytest.mark.network
def test_klaviyo_unreachable_at_the_callback_is_a_502_page(
    client: TestClient, runtime: Runtime
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(_pointed_at(runtime, f"http://127.0.0.1:{port}"))
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        location = _authorize(c)
        state = parse_qs(urlsplit(location).query)["state"][0]
        text = _page(c.get(CALLBACK, params={"code": "some-code", "state": state}), 502)
    assert "could not reach Klaviyo" in text
    assert runtime.accounts.find("acme", "klaviyo") is None


# -- bearer tokens -----------------------------------------------------------------------------
@pytest.mark.network
def test_the_provider_refreshes_before_expiry_and_keeps_the_rotated_token(
    sim_client: TestClient, sim_runtime: Runtime, sim_url: str
) -> None:
    _page(_connect(sim_client)[0], 200)
    old = sim_runtime.accounts.credentials("acme", "klaviyo")
    # Four minutes left: inside the five-minute margin.
    sim_runtime.accounts.update_credentials(
        "acme", "klaviyo", {**old, "expires_at": int(time.time()) + 240}
    )
    provider = OAuthTokenProvider(sim_runtime, "acme")
    token = asyncio.run(provider.token())
    new = sim_runtime.accounts.credentials("acme", "klaviyo")
    assert token == new["access_token"] != old["access_token"]
    assert new["refresh_token"] != old["refresh_token"]
    assert new["expires_at"] > time.time() + 3000
    assert _accounts_status(sim_url, token) == 200
    assert _sim_refresh_error(sim_url, old["refresh_token"]) == "invalid_grant"  # rotated
    assert asyncio.run(provider.token()) == token  # no second refresh


@pytest.mark.network
def test_the_provider_refreshes_after_a_401(
    sim_client: TestClient, sim_runtime: Runtime, sim_url: str
) -> None:
    _page(_connect(sim_client)[0], 200)
    provider = OAuthTokenProvider(sim_runtime, "acme")

    async def scenario() -> tuple[str, str]:
        first = await provider.token()
        _sim_revoke(sim_url, first)  # Klaviyo stops accepting it before it expires
        assert _accounts_status(sim_url, first) == 401
        return first, await provider.refresh()

    first, second = asyncio.run(scenario())
    assert second != first
    assert _accounts_status(sim_url, second) == 200
    assert sim_runtime.accounts.credentials("acme", "klaviyo")["access_token"] == second


@pytest.mark.network
def test_a_refused_refresh_marks_the_account_for_reauthorisation(
    sim_client: TestClient, sim_runtime: Runtime, sim_url: str
) -> None:
    _page(_connect(sim_client)[0], 200)
    creds = sim_runtime.accounts.credentials("acme", "klaviyo")
    _sim_revoke(sim_url, creds["refresh_token"])  # the brand removed the app in Klaviyo
    provider = OAuthTokenProvider(sim_runtime, "acme")
    with pytest.raises(ReauthorizeRequiredError) as info:
        asyncio.run(provider.refresh())
    assert "re-authorise" in info.value.message
    _secrets_absent(str(info.value), creds["refresh_token"], creds["access_token"])
    account = sim_client.get("/api/tenants/acme/accounts/klaviyo").json()
    assert account["status"] == "error"
    assert "re-authorise" in account["last_error"]


@pytest.mark.network
def test_delete_revokes_the_tokens_at_klaviyo(
    sim_client: TestClient, sim_runtime: Runtime, sim_url: str
) -> None:
    _page(_connect(sim_client)[0], 200)
    creds = sim_runtime.accounts.credentials("acme", "klaviyo")
    assert _accounts_status(sim_url, creds["access_token"]) == 200

    assert sim_client.delete("/api/tenants/acme/accounts/klaviyo").status_code == 204
    assert sim_runtime.accounts.find("acme", "klaviyo") is None
    assert _accounts_status(sim_url, creds["access_token"]) == 401
    assert _sim_refresh_error(sim_url, creds["refresh_token"]) == "invalid_grant"


@pytest.mark.network
def test_deleting_the_tenant_revokes_too(
    sim_client: TestClient, sim_runtime: Runtime, sim_url: str
) -> None:
    _page(_connect(sim_client)[0], 200)
    creds = sim_runtime.accounts.credentials("acme", "klaviyo")
    assert sim_client.delete("/api/tenants/acme").status_code == 204
    assert _accounts_status(sim_url, creds["access_token"]) == 401


# -- the protocol over a mock transport (no sockets) -------------------------------------------
CONFIG = OAuthConfig(
    client_id=CLIENT_ID,
    client_secret=CLIENT_SECRET,
    api_url="https://a.klaviyo.test",
    authorize_url="https://www.klaviyo.test/oauth/authorize",
    scopes="accounts:read events:read",
    redirect_uri=PUBLIC_URL + CALLBACK,
)


class FakeTokenEndpoint:
    """Records token requests; answers with numbered tokens or a configured error."""

    def __init__(self, error: tuple[int, dict[str, str]] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, str]]] = []
        self.error = error

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # let concurrent callers pile up
        form = dict(parse_qsl(request.content.decode()))
        self.requests.append((dict(request.headers), form))
        if self.error is not None:
            return httpx.Response(self.error[0], json=self.error[1])
        n = len(self.requests)
        return httpx.Response(
            200,
            json={
                "access_token": f"access-{n}",
                "refresh_token": f"refresh-{n}",
                "expires_in": 3600,
                "token_type": "Bearer",
                "scope": "accounts:read",
            },
        )


def _oauth_account(runtime: Runtime, expires_in: int) -> None:
    runtime.accounts.connect(
        "acme",
        "klaviyo",
        "oauth",
        {
            "access_token": "access-0",
            "refresh_token": "refresh-0",
            "expires_at": int(time.time()) + expires_in,
            "scope": "accounts:read",
        },
    )


def _provider(runtime: Runtime, endpoint: FakeTokenEndpoint) -> OAuthTokenProvider:
    oauth = KlaviyoOAuth(CONFIG, transport=httpx.MockTransport(endpoint))
    return OAuthTokenProvider(runtime, "acme", oauth=oauth)


def test_concurrent_callers_share_one_refresh(client: TestClient, runtime: Runtime) -> None:
    _oauth_account(runtime, expires_in=60)
    endpoint = FakeTokenEndpoint()
    providers = [_provider(runtime, endpoint) for _ in range(3)]

    async def many() -> list[str]:
        return await asyncio.gather(*(providers[i % 3].token() for i in range(30)))

    assert set(asyncio.run(many())) == {"access-1"}
    assert len(endpoint.requests) == 1
    headers, form = endpoint.requests[0]
    assert headers["authorization"] == _basic()
    assert headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert form == {"grant_type": "refresh_token", "refresh_token": "refresh-0"}
    stored = runtime.accounts.credentials("acme", "klaviyo")
    assert stored["refresh_token"] == "refresh-1"  # the rotated one is kept


def test_a_valid_token_is_served_without_asking_klaviyo(
    client: TestClient, runtime: Runtime
) -> None:
    _oauth_account(runtime, expires_in=3600)
    endpoint = FakeTokenEndpoint()
    provider = _provider(runtime, endpoint)
    assert asyncio.run(provider.token()) == "access-0"
    assert endpoint.requests == []

    async def after_401() -> list[str]:
        first = await provider.token()
        # Two requests got a 401 with the same token: one refresh serves both.
        both = await asyncio.gather(provider.refresh(), provider.refresh())
        return [first, *both]

    assert asyncio.run(after_401()) == ["access-0", "access-1", "access-1"]
    assert len(endpoint.requests) == 1


def test_refresh_errors_carry_no_secrets(client: TestClient, runtime: Runtime) -> None:
    _oauth_account(runtime, expires_in=0)
    refused = FakeTokenEndpoint(
        (400, {"error": "invalid_grant", "error_description": "refresh-0 is revoked"})
    )
    with pytest.raises(ReauthorizeRequiredError) as info:
        asyncio.run(_provider(runtime, refused).token())
    assert "refresh-0" not in str(info.value)
    assert runtime.accounts.get("acme", "klaviyo").status == "error"

    _oauth_account(runtime, expires_in=0)
    down = FakeTokenEndpoint((503, {"error": "unavailable"}))
    with pytest.raises(KlaviyoUnavailableError) as unavailable:
        asyncio.run(_provider(runtime, down).token())
    assert "503" in str(unavailable.value)
    assert runtime.accounts.get("acme", "klaviyo").status == "connected"  # transient


def test_exchange_sends_the_verifier_with_basic_auth() -> None:
    endpoint = FakeTokenEndpoint()
    oauth = KlaviyoOAuth(CONFIG, transport=httpx.MockTransport(endpoint))
    tokens = asyncio.run(oauth.exchange_code("the-code", "v" * 64))
    assert tokens["access_token"] == "access-1"
    assert tokens["refresh_token"] == "refresh-1"
    assert tokens["expires_at"] >= int(time.time()) + 3590
    headers, form = endpoint.requests[0]
    assert headers["authorization"] == _basic()
    assert form == {
        "grant_type": "authorization_code",
        "code": "the-code",
        "redirect_uri": PUBLIC_URL + CALLBACK,
        "code_verifier": "v" * 64,
    }

    used = FakeTokenEndpoint((400, {"error": "invalid_grant", "error_description": "the-code"}))
    with pytest.raises(InvalidGrantError) as info:
        asyncio.run(
            KlaviyoOAuth(CONFIG, transport=httpx.MockTransport(used)).exchange_code(
                "the-code", "v" * 64
            )
        )
    assert "the-code" not in str(info.value)
