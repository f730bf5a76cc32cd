"""ESP accounts over HTTP: connecting Klaviyo with a private API key (checked against the
Klaviyo simulator), status, disconnect, webhook secrets; tenants PATCH and DELETE.

Secrets go in and never come out: no response body or log line carries an API key.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sendflowr.klaviyo_sim import SimServerConfig, run_in_thread
from sendflowr.runtime import Runtime
from sendflowr.secrets import SecretBox, generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.accounts import AccountStore
from sendflowr.storage.metadata.tables import esp_accounts
from tests.conftest import ADMIN_HEADERS

KEY = generate_key()
SIM_KEY = "pk_sim_" + "0123456789abcdef" * 2
OTHER_KEY = "pk_sim_" + "f" * 32


def build_app(runtime: Runtime) -> FastAPI:
    from sendflowr.api import create_app

    return create_app(runtime.settings, runtime=runtime)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with an encryption key (credentials may be stored)."""
    return settings.model_copy(update={"secret_key": SecretStr(KEY), "backfill_worker": False})


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(build_app(runtime), headers=ADMIN_HEADERS) as c:
        yield c


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """A simulated Klaviyo on a local port that accepts SIM_KEY."""
    base_url, stop = run_in_thread(
        SimServerConfig(api_keys=(SIM_KEY,), profiles=5, days=1, rate_limits=False)
    )
    try:
        yield base_url
    finally:
        stop()


def _tenant(client: TestClient, tenant: str = "acme") -> None:
    r = client.post("/api/tenants", json={"id": tenant, "name": tenant.title()})
    assert r.status_code == 201, r.text


def _locs(body: dict[str, Any]) -> list[list[Any]]:
    return [d["loc"] for d in body["detail"]]


def _connect(client: TestClient, sim_url: str, key: str = SIM_KEY, tenant: str = "acme") -> Any:
    return client.put(
        f"/api/tenants/{tenant}/accounts/klaviyo", json={"api_key": key, "api_url": sim_url}
    )


# -- connecting with an API key ----------------------------------------------------------------
@pytest.mark.network
def test_connect_with_an_api_key_stores_it_encrypted_and_never_shows_it(
    client: TestClient, runtime: Runtime, sim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _tenant(client)
    bodies: list[str] = []

    r = _connect(client, sim_url)
    bodies.append(r.text)
    assert r.status_code == 200, r.text
    account = r.json()
    assert account["auth_kind"] == "api_key"
    assert account["status"] == "connected"
    assert account["api_url"] == sim_url
    assert account["account_id"]  # data[0].id of GET /api/accounts
    assert account["has_webhook_secret"] is False

    for path in ("/api/tenants/acme/accounts/klaviyo", "/api/tenants/acme/accounts"):
        got = client.get(path)
        assert got.status_code == 200
        bodies.append(got.text)
    assert client.get("/api/tenants/acme/accounts").json() == [account]
    bodies.append(client.get("/openapi.json").text)

    for text in bodies:
        assert SIM_KEY not in text
        assert SIM_KEY[7:] not in text
    assert SIM_KEY not in caplog.text
    assert SIM_KEY[7:] not in caplog.text

    # Encrypted at rest; the connector gets it back decrypted.
    with runtime.metadata.engine.connect() as conn:
        raw = conn.execute(sa.select(esp_accounts.c.credentials)).scalar()
    assert raw is not None
    assert SIM_KEY not in raw
    assert runtime.accounts.credentials("acme", "klaviyo") == {"api_key": SIM_KEY}


@pytest.mark.network
def test_a_key_klaviyo_refuses_is_422_naming_api_key(
    client: TestClient, runtime: Runtime, sim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _tenant(client)
    r = _connect(client, sim_url, key=OTHER_KEY)
    assert r.status_code == 422, r.text
    assert _locs(r.json()) == [["body", "api_key"]]
    assert "Klaviyo refused this key" in r.json()["detail"][0]["msg"]
    assert OTHER_KEY not in r.text
    assert OTHER_KEY not in caplog.text
    assert runtime.accounts.find("acme", "klaviyo") is None


@pytest.mark.network
def test_unreachable_klaviyo_is_502_with_the_reason(client: TestClient, runtime: Runtime) -> None:
    _tenant(client)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _connect(client, f"http://127.0.0.1:{port}")
    assert r.status_code == 502, r.text
    assert "unreachable" in r.json()["detail"][0]["msg"]
    assert SIM_KEY not in r.text
    assert runtime.accounts.find("acme", "klaviyo") is None


def test_malformed_keys_and_urls_are_422_without_echoing_them(client: TestClient) -> None:
    _tenant(client)
    secret_looking = "sk_live_" + "9" * 30
    cases: list[tuple[dict[str, Any], list[list[Any]]]] = [
        ({"api_key": secret_looking}, [["body", "api_key"]]),
        ({"api_key": "pk_1"}, [["body", "api_key"]]),
        ({"api_key": "pk_" + "a" * 200}, [["body", "api_key"]]),
        ({"api_key": "pk_abc def ghi jkl"}, [["body", "api_key"]]),
        ({"api_key": SIM_KEY, "api_url": "ftp://example.com"}, [["body", "api_url"]]),
        ({"api_key": SIM_KEY, "extra": 1}, [["body", "extra"]]),
        ({}, [["body", "api_key"]]),
    ]
    for body, locs in cases:
        r = client.put("/api/tenants/acme/accounts/klaviyo", json=body)
        assert r.status_code == 422, (body, r.text)
        assert _locs(r.json()) == locs, body
        assert secret_looking not in r.text
        assert SIM_KEY not in r.text
    assert (
        "starts with 'pk_'"
        in client.put(
            "/api/tenants/acme/accounts/klaviyo", json={"api_key": secret_looking}
        ).json()["detail"][0]["msg"]
    )


def test_unknown_tenant_is_404(client: TestClient) -> None:
    r = client.put("/api/tenants/ghost/accounts/klaviyo", json={"api_key": SIM_KEY})
    assert r.status_code == 404
    assert client.get("/api/tenants/ghost/accounts").status_code == 404
    assert client.get("/api/tenants/ghost/accounts/klaviyo").status_code == 404
    assert client.delete("/api/tenants/ghost/accounts/klaviyo").status_code == 404


def test_without_a_secret_key_credentials_are_refused_with_409(runtime: Runtime) -> None:
    keyless_box = SecretBox(None)
    keyless = dataclasses.replace(
        runtime, box=keyless_box, accounts=AccountStore(runtime.metadata, keyless_box)
    )
    with TestClient(build_app(keyless), headers=ADMIN_HEADERS) as client:
        _tenant(client)
        # Refused before Klaviyo is asked (no network is opened: this test has no marker).
        r = client.put("/api/tenants/acme/accounts/klaviyo", json={"api_key": SIM_KEY})
        assert r.status_code == 409, r.text
        detail = r.json()["detail"][0]
        assert detail["type"] == "secret_key_missing"
        assert "SENDFLOWR_SECRET_KEY" in detail["msg"]
        assert SIM_KEY not in r.text
        assert client.get("/api/tenants/acme/accounts").json() == []


# -- status, webhook secrets, disconnect --------------------------------------------------------
def _stored_account(runtime: Runtime, tenant: str = "acme") -> None:
    runtime.accounts.connect(
        tenant, "klaviyo", "api_key", {"api_key": SIM_KEY}, account_id="ACC123"
    )


@pytest.mark.parametrize(
    ("path", "flow"), [("webhook-secret", False), ("flow-webhook-secret", True)]
)
def test_a_webhook_secret_is_shown_once(
    client: TestClient, runtime: Runtime, path: str, flow: bool
) -> None:
    _tenant(client)
    url = f"/api/tenants/acme/accounts/klaviyo/{path}"
    assert client.post(url).status_code == 404  # no account yet
    _stored_account(runtime)

    r = client.post(url)
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    secret = r.json()["secret"]
    assert r.json()["flow"] is flow
    assert len(secret) >= 32
    assert runtime.accounts.webhook_secret("acme", "klaviyo", flow=flow) == secret
    assert runtime.accounts.webhook_secret("acme", "klaviyo", flow=not flow) is None

    account = client.get("/api/tenants/acme/accounts/klaviyo")
    assert account.json()["has_flow_webhook_secret" if flow else "has_webhook_secret"] is True
    for text in (account.text, client.get("/api/tenants/acme/accounts").text):
        assert secret not in text

    again = client.post(url).json()["secret"]  # a new one replaces it
    assert again != secret
    assert runtime.accounts.webhook_secret("acme", "klaviyo", flow=flow) == again

    given = "whsec-" + "x" * 20
    r = client.post(url, json={"secret": given})
    assert r.status_code == 201
    assert r.json()["secret"] == given
    assert runtime.accounts.webhook_secret("acme", "klaviyo", flow=flow) == given

    short = client.post(url, json={"secret": "tooshort"})
    assert short.status_code == 422
    assert _locs(short.json()) == [["body", "secret"]]
    assert "tooshort" not in short.text


def test_account_status_and_delete(client: TestClient, runtime: Runtime) -> None:
    _tenant(client)
    assert client.get("/api/tenants/acme/accounts/klaviyo").status_code == 404
    _stored_account(runtime)
    runtime.accounts.set_status("acme", "klaviyo", "error", "Klaviyo answered 401")
    body = client.get("/api/tenants/acme/accounts/klaviyo").json()
    assert body["status"] == "error"
    assert body["last_error"] == "Klaviyo answered 401"
    assert body["account_id"] == "ACC123"
    assert body["auth_kind"] == "api_key"
    assert body["api_url"] is None

    r = client.delete("/api/tenants/acme/accounts/klaviyo")
    assert r.status_code == 204
    assert r.content == b""
    assert client.get("/api/tenants/acme/accounts/klaviyo").status_code == 404
    assert client.delete("/api/tenants/acme/accounts/klaviyo").status_code == 404
    assert runtime.accounts.find("acme", "klaviyo") is None


# -- tenants PATCH and DELETE --------------------------------------------------------------------
def test_patch_a_tenant(client: TestClient) -> None:
    _tenant(client)
    r = client.patch(
        "/api/tenants/acme",
        json={
            "name": "Acme Ltd",
            "timezone": "Europe/Warsaw",
            "settings": {
                "notification_url": "https://hooks.example/acme",
                "esp_latency_seconds": 90,
            },
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "Acme Ltd"
    assert body["timezone"] == "Europe/Warsaw"
    assert body["settings"] == {
        "notification_url": "https://hooks.example/acme",
        "esp_latency_seconds": 90,
    }
    assert client.get("/api/tenants/acme").json()["timezone"] == "Europe/Warsaw"

    # Only what is sent changes; null resets a setting.
    r = client.patch("/api/tenants/acme", json={"settings": {"notification_url": None}})
    assert r.status_code == 200
    assert r.json()["name"] == "Acme Ltd"
    assert r.json()["settings"] == {"notification_url": None, "esp_latency_seconds": 90}
    assert client.patch("/api/tenants/acme", json={}).json()["name"] == "Acme Ltd"


def test_patch_validation_names_each_field(client: TestClient) -> None:
    _tenant(client)
    r = client.patch(
        "/api/tenants/acme",
        json={
            "name": "",
            "timezone": "Mars/Base",
            "settings": {"notification_url": "ftp://x.example", "esp_latency_seconds": 3601},
        },
    )
    assert r.status_code == 422
    assert sorted(_locs(r.json())) == sorted(
        [
            ["body", "name"],
            ["body", "timezone"],
            ["body", "settings", "notification_url"],
            ["body", "settings", "esp_latency_seconds"],
        ]
    )
    for body, loc in [
        ({"name": None}, ["body", "name"]),
        ({"settings": {"esp_latency_seconds": -1}}, ["body", "settings", "esp_latency_seconds"]),
        ({"settings": {"colour": "red"}}, ["body", "settings", "colour"]),
        ({"id": "other"}, ["body", "id"]),
    ]:
        r = client.patch("/api/tenants/acme", json=body)
        assert r.status_code == 422, body
        assert _locs(r.json()) == [loc], body
    assert client.patch("/api/tenants/ghost", json={"name": "x"}).status_code == 404


def test_delete_a_tenant_cascades(client: TestClient, runtime: Runtime) -> None:
    _tenant(client)
    _tenant(client, "other")
    _stored_account(runtime)
    _stored_account(runtime, "other")
    runtime.accounts.set_webhook_secret("acme", "klaviyo", "w" * 20)
    runtime.accounts.create_oauth_state("acme", "klaviyo", "v" * 43, "http://testserver/cb")

    r = client.delete("/api/tenants/acme")
    assert r.status_code == 204, r.text
    assert client.get("/api/tenants/acme").status_code == 404
    assert runtime.accounts.find("acme", "klaviyo") is None
    assert runtime.accounts.find("other", "klaviyo") is not None
    assert [t["id"] for t in client.get("/api/tenants").json()] == ["other"]
    assert client.delete("/api/tenants/acme").status_code == 404

    # The id is free again, with nothing left over.
    _tenant(client)
    assert client.get("/api/tenants/acme/accounts").json() == []


def test_openapi_documents_the_account_routes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for path, method in [
        ("/api/tenants/{tenant}/accounts", "get"),
        ("/api/tenants/{tenant}/accounts/klaviyo", "put"),
        ("/api/tenants/{tenant}/accounts/klaviyo", "get"),
        ("/api/tenants/{tenant}/accounts/klaviyo", "delete"),
        ("/api/tenants/{tenant}/accounts/klaviyo/webhook-secret", "post"),
        ("/api/tenants/{tenant}/accounts/klaviyo/flow-webhook-secret", "post"),
        ("/api/tenants/{tenant}", "patch"),
        ("/api/tenants/{tenant}", "delete"),
        ("/api/connector/oauth/authorize", "get"),
        ("/api/connector/oauth/callback", "get"),
    ]:
        assert method in paths[path], (path, method)
    schemas = doc["components"]["schemas"]
    for name in ("AccountOut", "KlaviyoApiKeyIn", "WebhookSecretOut", "TenantDetailOut"):
        assert name in schemas
    assert schemas["KlaviyoApiKeyIn"]["properties"]["api_key"]["format"] == "password"
    responses = paths["/api/tenants/{tenant}/accounts/klaviyo"]["get"]["responses"]
    assert "AccountOut" in str(responses["200"])
