"""A brand's ESP accounts: connect Klaviyo with a private API key, look, disconnect, and the
webhook secrets.

Secrets go in and never come out: an API key is checked against Klaviyo, stored encrypted and
never shown again; a webhook secret is shown once, in the response that creates it. Without
SENDFLOWR_SECRET_KEY nothing is stored (409).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from sendflowr.api.auth import AdminOnly
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.schemas import AccountOut, KlaviyoApiKeyIn, WebhookSecretIn, WebhookSecretOut
from sendflowr.connectors.klaviyo.constants import ESP, JSON_API, REVISION
from sendflowr.connectors.klaviyo.oauth import (
    TIMEOUT,
    KlaviyoOAuth,
    KlaviyoUnavailableError,
    OAuthConfig,
)
from sendflowr.errors import InvalidInputError, SendFlowrError
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.accounts import Account

log = logging.getLogger("sendflowr.api.accounts")

router = APIRouter(prefix="/api/tenants", tags=["accounts"])

NO_STORE = {"Cache-Control": "no-store"}


def _out(a: Account) -> AccountOut:
    return AccountOut(
        tenant=a.tenant,
        esp=a.esp,
        auth_kind=a.auth_kind,
        status=a.status,
        account_id=a.account_id,
        api_url=a.api_url,
        last_error=a.last_error,
        has_webhook_secret=a.has_webhook_secret,
        has_flow_webhook_secret=a.has_flow_webhook_secret,
        created_at=a.created_at,
        updated_at=a.updated_at,
    )


async def _get_accounts(
    api_url: str, authorization: str, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.Response:
    """One GET {api_url}/api/accounts; KlaviyoUnavailableError (502) when unreachable."""
    headers = {"Authorization": authorization, "revision": REVISION, "Accept": JSON_API}
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT, transport=transport) as client:
            return await client.get(f"{api_url}/api/accounts", headers=headers)
    except httpx.TransportError as exc:
        host = urlsplit(api_url).netloc
        raise KlaviyoUnavailableError(
            f"Klaviyo is unreachable at {host} ({type(exc).__name__})", field="api_url"
        ) from None


def _account_id(resp: httpx.Response) -> str | None:
    try:
        body: Any = resp.json()
        account_id = body["data"][0].get("id")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise KlaviyoUnavailableError(
            "Klaviyo's answer to GET /api/accounts is not a JSON:API account list"
        ) from None
    return account_id if isinstance(account_id, str) else None


async def verify_api_key(
    api_url: str, key: str, *, transport: httpx.AsyncBaseTransport | None = None
) -> str | None:
    """Check a private key with one GET /api/accounts; returns the Klaviyo account id.

    401/403 -> 422 on body.api_key; unreachable, 429 or 5xx -> 502 with the reason.
    """
    resp = await _get_accounts(api_url, f"Klaviyo-API-Key {key}", transport=transport)
    if resp.status_code in (401, 403):
        reason = (
            "the key is wrong or revoked"
            if resp.status_code == 401
            else "the key lacks the accounts:read scope or is revoked"
        )
        raise InvalidInputError(
            [
                {
                    "loc": ["body", "api_key"],
                    "msg": f"Klaviyo refused this key (HTTP {resp.status_code}: {reason})",
                    "type": "invalid_api_key",
                }
            ]
        )
    if resp.status_code == 429:
        raise KlaviyoUnavailableError(
            "Klaviyo rate-limited the key check (HTTP 429): try again in a minute"
        )
    if resp.status_code >= 400:
        raise KlaviyoUnavailableError(f"Klaviyo answered HTTP {resp.status_code} to the key check")
    return _account_id(resp)


async def account_id_or_none(api_url: str, authorization: str) -> str | None:
    """The Klaviyo account id for fresh OAuth tokens, or None when it cannot be had (the
    connection is stored either way; the id is only shown)."""
    try:
        resp = await _get_accounts(api_url, authorization)
        return _account_id(resp) if resp.status_code == 200 else None
    except SendFlowrError:
        return None


async def revoke_best_effort(runtime: Runtime, tenant: str, esp: str) -> None:
    """Revoke an OAuth account's tokens at Klaviyo; failures are logged and ignored (the
    caller forgets the tokens either way)."""
    account = await run_in_threadpool(runtime.accounts.find, tenant, esp)
    if account is None or account.auth_kind != "oauth" or account.status == "disconnected":
        return
    if esp != ESP:
        return
    try:
        config = OAuthConfig.from_settings(runtime.settings)
        creds = await run_in_threadpool(runtime.accounts.credentials, tenant, esp)
        await KlaviyoOAuth(config).revoke(creds)
    except SendFlowrError as exc:  # messages never carry tokens
        log.warning(
            "tenant %s: could not revoke the %s OAuth tokens (%s); forgetting them anyway",
            tenant,
            esp,
            exc.message,
        )
    except httpx.HTTPError as exc:
        log.warning(
            "tenant %s: could not revoke the %s OAuth tokens (%s); forgetting them anyway",
            tenant,
            esp,
            type(exc).__name__,
        )
    else:
        log.info("tenant %s: revoked the %s OAuth tokens", tenant, esp)


@router.get("/{tenant}/accounts", response_model=list[AccountOut])
def list_accounts(tenant: str, runtime: RuntimeDep) -> list[AccountOut]:
    """The brand's ESP accounts (never a secret)."""
    runtime.metadata.get_tenant(tenant)
    return [_out(a) for a in runtime.accounts.list(tenant)]


@router.get("/{tenant}/accounts/klaviyo", response_model=AccountOut)
def get_klaviyo_account(tenant: str, runtime: RuntimeDep) -> AccountOut:
    """Status, auth kind, Klaviyo account id, API URL, last error, which webhook secrets are
    set (never a secret)."""
    runtime.metadata.get_tenant(tenant)
    return _out(runtime.accounts.get(tenant, ESP))


@router.put("/{tenant}/accounts/klaviyo", response_model=AccountOut, dependencies=[AdminOnly])
async def connect_klaviyo_api_key(
    tenant: str, body: KlaviyoApiKeyIn, runtime: RuntimeDep
) -> AccountOut:
    """Connect (or replace) the brand's Klaviyo account with a private API key. The key is
    checked with Klaviyo first and stored encrypted; it is never shown again."""
    await run_in_threadpool(runtime.metadata.get_tenant, tenant)
    if not runtime.box.available:
        runtime.box.encrypt("")  # raises SecretsUnavailableError (409) naming the setting
    key = body.api_key.get_secret_value()
    api_url = body.api_url or runtime.settings.klaviyo_api_url
    account_id = await verify_api_key(api_url, key)
    account = await run_in_threadpool(
        lambda: runtime.accounts.connect(
            tenant,
            ESP,
            "api_key",
            {"api_key": key},
            api_url=body.api_url,
            account_id=account_id,
        )
    )
    log.info("tenant %s: connected Klaviyo account %s with an API key", tenant, account_id)
    return _out(account)


@router.delete(
    "/{tenant}/accounts/klaviyo",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[AdminOnly],
)
async def delete_klaviyo_account(tenant: str, runtime: RuntimeDep) -> Response:
    """Disconnect: revoke OAuth tokens at Klaviyo (best effort), then forget the account and
    its secrets."""
    await run_in_threadpool(runtime.metadata.get_tenant, tenant)
    await run_in_threadpool(runtime.accounts.get, tenant, ESP)
    await revoke_best_effort(runtime, tenant, ESP)
    await run_in_threadpool(runtime.accounts.delete, tenant, ESP)
    log.info("tenant %s: deleted the Klaviyo account", tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _set_secret(
    runtime: Runtime, tenant: str, body: WebhookSecretIn | None, *, flow: bool
) -> WebhookSecretOut:
    runtime.metadata.get_tenant(tenant)
    runtime.accounts.get(tenant, ESP)
    secret = body.secret.get_secret_value() if body is not None else secrets.token_urlsafe(32)
    runtime.accounts.set_webhook_secret(tenant, ESP, secret, flow=flow)
    log.info("tenant %s: set the Klaviyo %swebhook secret", tenant, "flow " if flow else "")
    return WebhookSecretOut(secret=secret, flow=flow)


@router.post(
    "/{tenant}/accounts/klaviyo/webhook-secret",
    response_model=WebhookSecretOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[AdminOnly],
)
def set_webhook_secret(
    tenant: str, runtime: RuntimeDep, response: Response, body: WebhookSecretIn | None = None
) -> WebhookSecretOut:
    """Generate (or set) the secret Klaviyo signs webhook deliveries with. It is stored
    encrypted and shown only in this response: put it in Klaviyo now."""
    response.headers.update(NO_STORE)
    return _set_secret(runtime, tenant, body, flow=False)


@router.post(
    "/{tenant}/accounts/klaviyo/flow-webhook-secret",
    response_model=WebhookSecretOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[AdminOnly],
)
def set_flow_webhook_secret(
    tenant: str, runtime: RuntimeDep, response: Response, body: WebhookSecretIn | None = None
) -> WebhookSecretOut:
    """The same for flow webhook actions (a separate secret)."""
    response.headers.update(NO_STORE)
    return _set_secret(runtime, tenant, body, flow=True)
