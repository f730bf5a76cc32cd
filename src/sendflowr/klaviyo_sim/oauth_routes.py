"""GET /oauth/authorize, POST /oauth/token, POST /oauth/revoke over `OAuthServer`."""

from __future__ import annotations

from starlette.responses import JSONResponse, RedirectResponse, Response

from sendflowr.klaviyo_sim.oauth import OAuthError, parse_form
from sendflowr.klaviyo_sim.state import Ctx

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _error(exc: OAuthError) -> Response:
    headers = dict(_NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="oauth"'
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def authorize(ctx: Ctx) -> Response:
    """Consents at once (or denies, when the sim is set to) and redirects back with 302."""
    try:
        location = ctx.state.oauth.authorize(dict(ctx.query.items()))
    except OAuthError as exc:
        return _error(exc)
    return RedirectResponse(location, status_code=302)


async def _form(ctx: Ctx) -> dict[str, str] | None:
    media = ctx.request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        return None
    return parse_form(await ctx.request.body())


async def token(ctx: Ctx) -> Response:
    oauth = ctx.state.oauth
    try:
        oauth.check_client(ctx.request.headers.get("authorization"))
        form = await _form(ctx)
        if form is None:
            raise OAuthError("invalid_request", "Send application/x-www-form-urlencoded.")
        body = oauth.token(form)
    except OAuthError as exc:
        return _error(exc)
    return JSONResponse(body, headers=_NO_STORE)


async def revoke(ctx: Ctx) -> Response:
    oauth = ctx.state.oauth
    try:
        oauth.check_client(ctx.request.headers.get("authorization"))
        form = await _form(ctx)
        if form is None:
            raise OAuthError("invalid_request", "Send application/x-www-form-urlencoded.")
        oauth.revoke(form)
    except OAuthError as exc:
        return _error(exc)
    return Response(status_code=200)
