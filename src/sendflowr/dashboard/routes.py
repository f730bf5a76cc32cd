"""The operator dashboard's pages: sign-in, sign-out and one server-rendered shell per page.

Each page is a Jinja2 template (templates/<slug>.html) and an ES module (static/js/<slug>.js)
that reads and changes data through the same public JSON API as any client, authenticated by
the session cookie this module sets at sign-in (api/session.py). The pages never receive data
in the HTML itself: what a page shows, the API answered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from sendflowr import __version__
from sendflowr.api.auth import (
    Principal,
    auth_state,
    identify_key,
    key_fingerprint,
    session_principal,
)
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.session import COOKIE_NAME, SESSION_MAX_AGE_SECONDS, SessionData, csrf_matches

log = logging.getLogger("sendflowr.dashboard")

HERE: Final = Path(__file__).parent
STATIC_DIR: Final = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))


@dataclass(frozen=True, slots=True)
class Page:
    slug: str
    title: str


PAGES: Final = (
    Page("tenants", "Tenants"),
    Page("backfill", "Backfill"),
    Page("data", "Data"),
    Page("intents", "Intents"),
    Page("explorer", "Decisions"),
    Page("schedules", "Schedules"),
    Page("health", "Health"),
)
_BY_SLUG: Final = {p.slug: p for p in PAGES}

# Pages load only this origin's scripts and styles: no inline script, no inline style attribute.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# Sign-in attempts per client address: a pasted key is 40+ random characters, so this only
# keeps a script from hammering the key store.
_LOGIN_LIMIT = parse("20/minute")


def _login_limiter(request: Request) -> MovingWindowRateLimiter:
    """One counter per app (the sign-in form is per process, like the page it serves)."""
    limiter: MovingWindowRateLimiter | None = getattr(request.app.state, "sendflowr_login", None)
    if limiter is None:
        limiter = MovingWindowRateLimiter(MemoryStorage())
        request.app.state.sendflowr_login = limiter
    return limiter


router = APIRouter(include_in_schema=False)


def _session(request: Request, runtime: RuntimeDep) -> tuple[SessionData, Principal] | None:
    state = auth_state(request, runtime)
    session = state.sessions.read(request.cookies.get(COOKIE_NAME))
    if session is None:
        return None
    principal = session_principal(state, session)
    return None if principal is None else (session, principal)


def _safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never another host (no open redirect)."""
    if not target:
        return "/ui/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/") or "\\" in target:
        return "/ui/"
    return target


def _same_origin(request: Request) -> bool:
    """Form posts must come from our own pages (a missing Origin is an old browser or a CLI)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _secure(request: Request, runtime: RuntimeDep) -> bool:
    return request.url.scheme == "https" or runtime.settings.public_url.startswith("https://")


def _render(
    request: Request, name: str, context: dict[str, object], status_code: int = 200
) -> HTMLResponse:
    response = templates.TemplateResponse(
        request,
        name,
        {
            "version": __version__,
            "pages": PAGES,
            "page": None,
            "title": "Sign in",
            "principal": None,
            "csrf_token": "",
            "page_css": False,
            **context,
        },
        status_code=status_code,
        headers=dict(PAGE_HEADERS),
    )
    return response


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


@router.get("/", response_class=RedirectResponse)
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=303)


@router.get("/ui", response_class=RedirectResponse)
@router.get("/ui/", response_class=RedirectResponse)
def ui_home(request: Request) -> RedirectResponse:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/ui/{PAGES[0].slug}{query}", status_code=303)


@router.get("/ui/login", response_class=HTMLResponse)
def login_form(request: Request, runtime: RuntimeDep, next: str | None = None) -> Response:
    if _session(request, runtime) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/ui/login", response_class=HTMLResponse)
def login(
    request: Request,
    runtime: RuntimeDep,
    api_key: Annotated[str, Form(max_length=512)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/ui/",
) -> Response:
    target = _safe_next(next)
    if not _same_origin(request):
        return _render(
            request,
            "login.html",
            {"next": target, "error": "This sign-in form was sent from another site."},
            status_code=403,
        )
    client = request.client.host if request.client else "unknown"
    if not _login_limiter(request).hit(_LOGIN_LIMIT, "sendflowr-login", client):
        return _render(
            request,
            "login.html",
            {"next": target, "error": "Too many sign-in attempts: wait a minute and try again."},
            status_code=429,
        )
    token = api_key.strip()
    principal = identify_key(request, runtime, token) if token else None
    if principal is None:
        error = (
            "Paste an API key to sign in."
            if not token
            else "That API key is not valid (unknown, malformed or revoked)."
        )
        return _render(request, "login.html", {"next": target, "error": error}, status_code=401)
    state = auth_state(request, runtime)
    value, _ = state.sessions.issue(principal.key_id, key_fingerprint(state, principal))
    log.info("dashboard sign-in with key %s", principal.key_id)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=SESSION_MAX_AGE_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request, runtime),
    )
    return response


@router.post("/ui/logout", response_class=RedirectResponse)
def logout(
    request: Request,
    runtime: RuntimeDep,
    csrf_token: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    current = _session(request, runtime)
    if current is not None and (
        not _same_origin(request) or not csrf_matches(current[0], csrf_token)
    ):
        return _render(
            request,
            "login.html",
            {"next": "/ui/", "error": "Sign-out refused: the form did not come from this page."},
            status_code=403,
        )
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response


@router.get("/ui/{slug}", response_class=HTMLResponse)
def page(slug: str, request: Request, runtime: RuntimeDep) -> Response:
    page_ = _BY_SLUG.get(slug)
    if page_ is None or not (HERE / "templates" / f"{slug}.html").exists():
        return _render(
            request,
            "not_found.html",
            {"title": "Not found"},
            status_code=404,
        )
    current = _session(request, runtime)
    if current is None:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(here, safe='')}", status_code=303)
    session, principal = current
    return _render(
        request,
        f"{slug}.html",
        {
            "page": page_,
            "title": page_.title,
            "principal": principal,
            "csrf_token": session.csrf,
            "page_css": (STATIC_DIR / "css" / f"{slug}.css").exists(),
        },
    )
