"""Connecting a brand's Klaviyo account with OAuth (authorisation code + PKCE S256).

1. `GET /api/connector/oauth/authorize?tenant=...` stores a single-use `state` with the PKCE
   code verifier (encrypted) and redirects the browser to Klaviyo's consent page.
2. Klaviyo sends the browser back to `GET /api/connector/oauth/callback` with `code` and
   `state` (or `error`); SendFlowr consumes the state, exchanges the code (HTTP Basic client
   authentication, the verifier) and stores the tokens encrypted.

The callback is seen by a person in a browser, so every outcome is a short HTML page in words
(`api/pages.py`), never JSON, a traceback, a token or the code.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from sendflowr.api.auth import AdminOnly, Authenticated
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.pages import error_page, success_page
from sendflowr.api.routes.accounts import account_id_or_none
from sendflowr.api.schemas import TENANT_PATTERN
from sendflowr.connectors.klaviyo.constants import ESP
from sendflowr.connectors.klaviyo.oauth import (
    InvalidGrantError,
    KlaviyoOAuth,
    KlaviyoUnavailableError,
    OAuthConfig,
    OAuthNotConfiguredError,
    OAuthRefusedError,
    new_code_verifier,
)
from sendflowr.errors import SendFlowrError
from sendflowr.storage.metadata.accounts import OAuthStateError

log = logging.getLogger("sendflowr.api.oauth")

router = APIRouter(prefix="/api/connector/oauth", tags=["connector"])

_ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")
START_AGAIN = "Start the connection again from SendFlowr."


@router.get(
    "/authorize",
    status_code=302,
    response_class=RedirectResponse,
    responses={302: {"description": "to Klaviyo's consent page"}},
    dependencies=[Authenticated, AdminOnly],
)
def authorize(
    request: Request,
    runtime: RuntimeDep,
    tenant: Annotated[str, Query(pattern=TENANT_PATTERN, description="the brand to connect")],
) -> Response:
    """Send the browser to Klaviyo to consent to SendFlowr reading the brand's account.
    404 for an unknown tenant; 409 when the deployment has no OAuth app configured (an HTML
    page when a browser asked, as the dashboard's link does)."""
    runtime.metadata.get_tenant(tenant)
    try:
        config = OAuthConfig.from_settings(runtime.settings)
    except OAuthNotConfiguredError as exc:
        if "text/html" not in request.headers.get("accept", ""):
            raise
        return error_page(
            "Klaviyo OAuth is not configured",
            f"This SendFlowr deployment has no Klaviyo OAuth app: {exc.message}.",
            "Connect the brand with a private API key instead.",
            status_code=409,
            link=("/ui/tenants", "Back to the SendFlowr dashboard"),
        )
    oauth = KlaviyoOAuth(config)
    verifier = new_code_verifier()
    state = runtime.accounts.create_oauth_state(tenant, ESP, verifier, oauth.config.redirect_uri)
    log.info("tenant %s: sent to Klaviyo for OAuth consent", tenant)
    return RedirectResponse(
        oauth.authorization_url(state, verifier),
        status_code=302,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


@router.get(
    "/callback",
    response_class=HTMLResponse,
    responses={
        200: {"description": "connected (an HTML page)"},
        400: {"description": "state or code refused, or consent declined (an HTML page)"},
        409: {"description": "OAuth or encryption not configured (an HTML page)"},
        502: {"description": "Klaviyo unreachable or refused (an HTML page)"},
    },
)
async def callback(
    runtime: RuntimeDep,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=512)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
    error_description: Annotated[str | None, Query(max_length=2048)] = None,
) -> HTMLResponse:
    """Where Klaviyo sends the browser back after consent. Shows an HTML page."""
    if not state:
        return error_page(
            "Connection not completed",
            "This page was opened without the state SendFlowr needs to finish connecting.",
            START_AGAIN,
        )
    try:
        pending = await run_in_threadpool(runtime.accounts.consume_oauth_state, state)
    except OAuthStateError as exc:
        reason = str(exc.errors[0]["msg"]) if exc.errors else "the state is not valid"
        return error_page("Connection not completed", f"SendFlowr refused this link: {reason}.")
    except SendFlowrError as exc:
        return _failure(exc)

    tenant = pending.tenant
    if error is not None:
        if error == "access_denied":
            log.info("tenant %s: consent declined at Klaviyo", tenant)
            return error_page(
                "Connection declined",
                f"The Klaviyo account was not connected to brand {tenant}: the brand declined "
                "access on Klaviyo's consent page.",
                "Nothing was stored. To connect later, start again from SendFlowr.",
            )
        shown = error if _ERROR_CODE.match(error) else "an unknown error"
        log.info("tenant %s: Klaviyo answered the authorisation with %s", tenant, shown)
        return error_page(
            "Connection not completed",
            f"Klaviyo did not authorise the connection ({shown}).",
            START_AGAIN,
        )
    if not code:
        return error_page(
            "Connection not completed",
            "Klaviyo sent the browser back without an authorisation code.",
            START_AGAIN,
        )

    try:
        oauth = KlaviyoOAuth(OAuthConfig.from_settings(runtime.settings))
        tokens = await oauth.exchange_code(code, pending.code_verifier, pending.redirect_uri)
        account_id = await account_id_or_none(
            runtime.settings.klaviyo_api_url, f"Bearer {tokens['access_token']}"
        )
        account = await run_in_threadpool(
            lambda: runtime.accounts.connect(
                tenant, ESP, "oauth", tokens, api_url=None, account_id=account_id
            )
        )
    except SendFlowrError as exc:
        return _failure(exc, tenant)
    log.info("tenant %s: connected a Klaviyo account with OAuth", tenant)
    return success_page(
        "Klaviyo connected",
        f"Brand {account.tenant} is now connected to its Klaviyo account. SendFlowr stored "
        "the access it was granted, encrypted.",
        link=(
            f"/ui/backfill?tenant={quote(account.tenant)}",
            "Back to the SendFlowr dashboard to start its backfill",
        ),
    )


def _failure(exc: SendFlowrError, tenant: str | None = None) -> HTMLResponse:
    """The page for an error after the state was accepted (messages carry no secrets)."""
    who = f"tenant {tenant}: " if tenant else ""
    if isinstance(exc, InvalidGrantError):
        log.info("%sthe authorisation code was refused (invalid_grant)", who)
        return error_page(
            "Connection not completed",
            "The authorisation code expired or was used; connect again.",
            START_AGAIN,
        )
    if isinstance(exc, KlaviyoUnavailableError):
        log.warning("%s%s", who, exc.message)
        return error_page(
            "Klaviyo is unreachable",
            "SendFlowr could not reach Klaviyo to finish connecting. Nothing was stored.",
            "Try again in a few minutes.",
            status_code=502,
        )
    if isinstance(exc, OAuthRefusedError):
        log.warning("%s%s", who, exc.message)
        return error_page(
            "Connection not completed",
            f"Klaviyo refused SendFlowr's request ({exc.error}). If this repeats, the "
            "deployment's Klaviyo OAuth app settings need checking.",
            status_code=502,
        )
    if isinstance(exc, OAuthNotConfiguredError):
        return error_page(
            "Klaviyo OAuth is not configured",
            f"This SendFlowr deployment has no Klaviyo OAuth app: {exc.message}.",
            status_code=409,
        )
    log.warning("%sOAuth callback failed: %s", who, exc.message)
    return error_page("Connection not completed", exc.message, START_AGAIN, status_code=exc.status)
