"""A brand's webhook ESP account: connect (URL and signing secret), look, delete.

The signing secret goes in (or is generated) and never comes out again: a generated secret is
shown once, in the PUT response that creates it. A PUT without `secret` generates a new one
(a rotation: the receiver must be given it). Without SENDFLOWR_SECRET_KEY nothing is stored
(409).
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from starlette.concurrency import run_in_threadpool

from sendflowr.api.auth import AdminOnly
from sendflowr.api.deps import RuntimeDep
from sendflowr.errors import SendFlowrError
from sendflowr.execution.webhook_esp import (
    DEFAULT_REQUESTS_PER_MINUTE,
    DEFAULT_TIMEOUT_SECONDS,
    ESP,
    REQUESTS_PER_MINUTE_MAX,
    REQUESTS_PER_MINUTE_MIN,
    SECRET_MAX_LENGTH,
    SECRET_MIN_LENGTH,
    TIMEOUT_MAX,
    TIMEOUT_MIN,
    URL_MAX_LENGTH,
    validate_credentials,
)
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.accounts import Account

log = logging.getLogger("sendflowr.api.webhook_esp")

router = APIRouter(prefix="/api/tenants", tags=["accounts"])

NO_STORE = {"Cache-Control": "no-store"}


class WebhookAccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        description=f"where due sends are POSTed: an absolute http(s) URL, at most "
        f"{URL_MAX_LENGTH} characters, without user:password@"
    )
    secret: SecretStr | None = Field(
        None,
        description=f"the HMAC signing secret ({SECRET_MIN_LENGTH} to {SECRET_MAX_LENGTH} "
        "characters); omitted: one is generated and shown once in the response",
    )
    requests_per_minute: int = Field(
        DEFAULT_REQUESTS_PER_MINUTE,
        ge=REQUESTS_PER_MINUTE_MIN,
        le=REQUESTS_PER_MINUTE_MAX,
        description="at most this many POSTs a minute to the URL",
    )
    timeout_seconds: float = Field(
        DEFAULT_TIMEOUT_SECONDS,
        ge=TIMEOUT_MIN,
        le=TIMEOUT_MAX,
        description="a POST not answered within this time is retried later",
    )


class WebhookAccountOut(BaseModel):
    """A connected webhook ESP: never the secret."""

    tenant: str
    esp: str
    auth_kind: str
    status: Literal["connected", "disconnected", "error"]
    url: str | None
    requests_per_minute: int | None = Field(description="null: the settings cannot be read")
    timeout_seconds: float | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class WebhookAccountConnectedOut(WebhookAccountOut):
    secret: str | None = Field(
        description="the generated signing secret, shown only in this response: give it to "
        "the receiver now; null when the request supplied the secret"
    )


def _out(a: Account, runtime: Runtime) -> WebhookAccountOut:
    rpm: int | None = None
    timeout: float | None = None
    try:
        creds = runtime.accounts.credentials(a.tenant, ESP)
    except SendFlowrError:  # key removed or account disconnected: show what is not secret
        pass
    else:
        rpm = creds.get("requests_per_minute")
        timeout = creds.get("timeout_seconds")
    return WebhookAccountOut(
        tenant=a.tenant,
        esp=a.esp,
        auth_kind=a.auth_kind,
        status=a.status,
        url=a.api_url,
        requests_per_minute=rpm,
        timeout_seconds=timeout,
        last_error=a.last_error,
        created_at=a.created_at,
        updated_at=a.updated_at,
    )


def _get(runtime: Runtime, tenant: str) -> WebhookAccountOut:
    runtime.metadata.get_tenant(tenant)
    return _out(runtime.accounts.get(tenant, ESP), runtime)


def _connect(runtime: Runtime, tenant: str, body: WebhookAccountIn) -> WebhookAccountConnectedOut:
    runtime.metadata.get_tenant(tenant)
    generated = body.secret is None
    secret = secrets.token_urlsafe(32) if body.secret is None else body.secret.get_secret_value()
    creds = validate_credentials(
        {
            "url": body.url,
            "secret": secret,
            "requests_per_minute": body.requests_per_minute,
            "timeout_seconds": body.timeout_seconds,
        },
        loc=("body",),
    )
    # Without SENDFLOWR_SECRET_KEY, connect raises SecretsUnavailableError (409) before
    # writing.
    account = runtime.accounts.connect(tenant, ESP, "hmac", creds, api_url=creds["url"])
    log.info(
        "tenant %s: connected the webhook ESP at %s (%s secret)",
        tenant,
        urlsplit(creds["url"]).netloc,
        "generated" if generated else "supplied",
    )
    out = _out(account, runtime)
    return WebhookAccountConnectedOut(**out.model_dump(), secret=secret if generated else None)


def _delete(runtime: Runtime, tenant: str) -> None:
    runtime.metadata.get_tenant(tenant)
    runtime.accounts.get(tenant, ESP)
    runtime.accounts.delete(tenant, ESP)
    log.info("tenant %s: deleted the webhook ESP account", tenant)


@router.put(
    "/{tenant}/accounts/webhook",
    response_model=WebhookAccountConnectedOut,
    dependencies=[AdminOnly],
)
async def connect_webhook_esp(
    tenant: str, body: WebhookAccountIn, runtime: RuntimeDep, response: Response
) -> WebhookAccountConnectedOut:
    """Connect (or replace) the brand's webhook ESP: due sends are POSTed to `url`, signed
    with HMAC-SHA256. The secret is stored encrypted; a generated one is shown only in this
    response, a supplied one never."""
    response.headers.update(NO_STORE)
    return await run_in_threadpool(_connect, runtime, tenant, body)


@router.get("/{tenant}/accounts/webhook", response_model=WebhookAccountOut)
async def get_webhook_esp(
    tenant: str, runtime: RuntimeDep, response: Response
) -> WebhookAccountOut:
    """URL, pacing, timeout and status (never the secret)."""
    response.headers.update(NO_STORE)
    return await run_in_threadpool(_get, runtime, tenant)


@router.delete(
    "/{tenant}/accounts/webhook",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[AdminOnly],
)
async def delete_webhook_esp(tenant: str, runtime: RuntimeDep) -> Response:
    """Forget the webhook ESP account and its secret."""
    await run_in_threadpool(_delete, runtime, tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=NO_STORE)
