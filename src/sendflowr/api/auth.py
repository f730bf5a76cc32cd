"""Who is calling: API keys, scopes, tenant scoping and per-key rate limits.

Every route but `/health`, the signed webhook receivers and the OAuth callback depends on
`authenticate` (the app adds it to each router; see app.py). `AuthFirstMiddleware` runs the
same checks for those routes *before the body is read*: FastAPI parses a JSON body before it
resolves any dependency, so without it a malformed body would be a 422 to a caller with no key.
In order, the check

1. reads the key from `Authorization: Bearer <key>` (or `X-API-Key`): none or a bad one is 401
   with `WWW-Authenticate: Bearer`;
2. charges the key's rate limit (429 with Retry-After);
3. checks the scope the HTTP method needs (GET/HEAD read, anything else write): 403 naming it;
   routes that need admin add `AdminOnly` (or `OperatorOnly`) to their dependencies;
4. checks every `tenant` in the path and query against the key's tenant (403), so a route that
   names its tenant there is scoped without code of its own. Routes that take the tenant in the
   body call `Principal.check_tenant` themselves; objects addressed by id are then read with the
   (checked) tenant, so another tenant's id is a 404;
5. (the middleware) runs the route's `AdminOnly`, `OperatorOnly` or `OperatorRead` too;
6. (the middleware, a tenant key on a route whose body names its tenant) reads the body within
   the route's cap, and answers 403 when it is JSON naming a tenant the key may not use, before
   FastAPI validates it: another tenant's validation errors are never shown (see
   `_BodyTenant`). The body is handed on to the route untouched.

Keys are not cached: each request reads its key's row (one primary-key look-up), so a revoked
key is refused on its next request in every process at once.

The operator (every tenant) is the `admin_api_key` from settings or a key created with
`sendflowr keys create --all-tenants`.

A browser signed in to the dashboard sends no key header: its session cookie (api/session.py)
names a key, which is checked again on every request, and requests that change anything must
carry the session's CSRF token in `X-CSRF-Token`.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import orjson
from fastapi import Depends, Request
from fastapi.routing import RouteContext, iter_route_contexts
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from limits import RateLimitItem, parse
from limits.errors import ConfigurationError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, SecretStr
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from sendflowr.api.asgi_body import read_body, replaying
from sendflowr.api.deps import get_runtime
from sendflowr.api.limits import BODY_METHODS, MIB, cap_for, is_json
from sendflowr.api.local_limits import LocalMovingWindow
from sendflowr.api.schemas import EventsIn
from sendflowr.api.session import (
    COOKIE_NAME,
    CSRF_HEADER,
    SessionCodec,
    SessionData,
    csrf_matches,
    fingerprint,
)
from sendflowr.errors import SendFlowrError
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.keys import KEY_PREFIX, ApiKey, KeyStore, Scope, scope_allows

log = logging.getLogger("sendflowr.api.auth")

SETTINGS_KEY_ID = "settings"  # the principal id of the admin_api_key from settings
TOUCH_EVERY_SECONDS = 60.0  # last_used_at is written at most this often per key and process
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class UnauthorizedError(SendFlowrError):
    status = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="sendflowr"'}


class ForbiddenError(SendFlowrError):
    status = 403
    code = "forbidden"


class RateLimitedError(SendFlowrError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant: str | None  # None: the operator, every tenant
    scope: Scope
    name: str

    @property
    def operator(self) -> bool:
        return self.tenant is None

    def allows(self, scope: str) -> bool:
        return scope_allows(self.scope, scope)

    def can_see(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant

    def check_tenant(self, tenant: str, loc: str = "tenant") -> None:
        """403 unless this key may act on `tenant` (the same answer whether it exists or not,
        so tenant names cannot be probed)."""
        if not self.can_see(tenant):
            raise ForbiddenError(
                f"this API key is for tenant {self.tenant!r} and cannot act on another tenant",
                field=loc,
            )

    def visible(self, tenants: Iterable[str]) -> list[str]:
        return [t for t in tenants if self.can_see(t)]


# Declared as security schemes so the OpenAPI document (and the /docs console's Authorize
# button) shows how to authenticate; auto_error=False: the 401 is ours, with its message.
_bearer = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer sfk_...")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
ApiKeyDep = Annotated[str | None, Depends(_api_key)]


def _token(bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> str | None:
    if bearer is not None and bearer.credentials.strip():
        return bearer.credentials.strip()
    return api_key.strip() if api_key and api_key.strip() else None


class _RateLimits:
    """Per-key limits from settings, counted in memory (one process) or in Redis (shared)."""

    def __init__(self, settings: Settings) -> None:
        self.items: dict[str, RateLimitItem] = {
            "read": parse(settings.rate_limit_read),
            "write": parse(settings.rate_limit_write),
            "admin": parse(settings.rate_limit_admin),
        }
        url = settings.rate_limit_storage_url
        if url is None:
            cache = settings.feature_cache_url
            url = cache if cache.startswith(("redis://", "rediss://")) else "memory://"
        storage: Storage
        options: dict[str, float] = {}
        if url.startswith(("redis://", "rediss://")):
            # a shared counter must never make a request wait long: short socket timeouts
            options = {
                "socket_timeout": settings.feature_cache_socket_timeout_seconds,
                "socket_connect_timeout": settings.feature_cache_connect_timeout_seconds,
            }
        try:
            storage = cast(Storage, storage_from_string(url, **options))
        except ConfigurationError as exc:  # e.g. the redis client library is not installed
            log.warning("rate limits counted per process: %s cannot be used (%s)", url, exc)
            storage = cast(Storage, storage_from_string("memory://"))
        self.storage_kind = type(storage).__name__
        # In this process: api/local_limits.py (the same answers as `limits`' memory storage,
        # at a fraction of its cost per request).
        self.limiter: MovingWindowRateLimiter | LocalMovingWindow = (
            LocalMovingWindow()
            if isinstance(storage, MemoryStorage)
            else MovingWindowRateLimiter(storage)
        )
        # While the shared store is unreachable, count in this process instead (fail over, not
        # open and never an error): a Redis outage must not fail authenticated requests.
        self.local = LocalMovingWindow()
        self.retry_seconds = settings.feature_cache_retry_seconds
        self.down_until = 0.0

    def _limiter(self) -> MovingWindowRateLimiter | LocalMovingWindow:
        return self.local if time.monotonic() < self.down_until else self.limiter

    def hit(self, principal: Principal) -> None:
        item = self.items[principal.scope]
        limiter = self._limiter()
        try:
            allowed = limiter.hit(item, "sendflowr-key", principal.key_id)
        except Exception as exc:  # any failure of the shared store (redis errors, timeouts)
            if limiter is self.local:
                raise
            log.warning(
                "rate-limit store unreachable (%s); counting per process for %.0f s",
                type(exc).__name__,
                self.retry_seconds,
            )
            self.down_until = time.monotonic() + self.retry_seconds
            limiter = self.local
            allowed = limiter.hit(item, "sendflowr-key", principal.key_id)
        if allowed:
            return
        reset = limiter.get_window_stats(item, "sendflowr-key", principal.key_id).reset_time
        retry = max(1, math.ceil(reset - time.time()))
        raise RateLimitedError(
            f"rate limit of {item} for this API key exceeded; retry in {retry} s", retry
        )


class _AuthState:
    """Per-app state: the key store, the limits, when each key's last use was written."""

    def __init__(self, runtime: Runtime) -> None:
        self.keys = KeyStore(runtime.metadata, runtime.hash_key)
        self.limits = _RateLimits(runtime.settings)
        admin = runtime.settings.admin_api_key
        self.admin_key = admin.get_secret_value().encode() if admin is not None else None
        self.touched: dict[str, float] = {}
        self.lock = threading.Lock()
        self.sessions = SessionCodec(runtime.hash_key)

    def checks_without_io(self, token: str | None) -> bool:
        """Whether checking `token` reads nothing (no key row, no shared rate-limit store):
        the settings key with limits counted in this process. AuthFirstMiddleware then checks
        it on the event loop instead of handing it to a worker thread."""
        return (
            token is not None
            and self.admin_key is not None
            and self.limits.storage_kind == "MemoryStorage"
            and hmac.compare_digest(token.encode(), self.admin_key)
        )


_STATE_LOCK = threading.Lock()


def auth_state(request: Request, runtime: Runtime) -> _AuthState:
    state: _AuthState | None = getattr(request.app.state, "sendflowr_auth", None)
    if state is None:
        with _STATE_LOCK:
            state = getattr(request.app.state, "sendflowr_auth", None)
            if state is None:
                state = _AuthState(runtime)
                request.app.state.sendflowr_auth = state
    return state


def _identify(state: _AuthState, token: str) -> Principal | None:
    if state.admin_key is not None and hmac.compare_digest(token.encode(), state.admin_key):
        return Principal(SETTINGS_KEY_ID, None, "admin", "admin_api_key (settings)")
    key = state.keys.verify(token)
    if key is None:
        return None
    now = time.monotonic()
    with state.lock:
        due = now - state.touched.get(key.id, -math.inf) >= TOUCH_EVERY_SECONDS
        if due:
            state.touched[key.id] = now
    if due:
        state.keys.touch(key.id, datetime.now(UTC))
    return Principal(key.id, key.tenant, key.scope, key.name)


def _stored_key_fingerprint(key: ApiKey) -> str:
    return fingerprint(f"{key.id}:{key.created_at.isoformat()}".encode())


def key_fingerprint(state: _AuthState, principal: Principal) -> str:
    """What a session of `principal` is bound to (see api/session.py)."""
    if principal.key_id == SETTINGS_KEY_ID and state.admin_key is not None:
        return fingerprint(state.admin_key)
    key = state.keys.get(principal.key_id)
    return _stored_key_fingerprint(key) if key is not None else fingerprint(b"")


def session_principal(state: _AuthState, session: SessionData) -> Principal | None:
    """The principal a dashboard session names, or None once its key is revoked or replaced."""
    if session.key_id == SETTINGS_KEY_ID:
        if state.admin_key is None or session.fingerprint != fingerprint(state.admin_key):
            return None
        return Principal(SETTINGS_KEY_ID, None, "admin", "admin_api_key (settings)")
    key = state.keys.get(session.key_id)
    if key is None or key.revoked:
        return None
    if not hmac.compare_digest(session.fingerprint, _stored_key_fingerprint(key)):
        return None
    return Principal(key.id, key.tenant, key.scope, key.name)


def identify_key(request: Request, runtime: Runtime, token: str) -> Principal | None:
    """The principal of a pasted API key (the dashboard's sign-in), or None."""
    return _identify(auth_state(request, runtime), token)


def _from_cookie(request: Request, state: _AuthState) -> Principal:
    session = state.sessions.read(request.cookies.get(COOKIE_NAME))
    if session is None:
        raise UnauthorizedError(
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    principal = session_principal(state, session)
    if principal is None:
        raise UnauthorizedError("the dashboard session has ended (its API key was revoked)")
    if request.method not in READ_METHODS and not csrf_matches(
        session, request.headers.get(CSRF_HEADER)
    ):
        raise ForbiddenError(
            f"a signed-in browser must send the page's CSRF token in {CSRF_HEADER}",
            field=CSRF_HEADER,
        )
    return principal


# Where AuthFirstMiddleware leaves the principal it checked, for `authenticate` to reuse, and
# the route it matched (the router's choice), for api/fast_decide.py (ASGI scope keys: nothing
# a client sends can set them).
SCOPE_PRINCIPAL = "sendflowr.principal"
SCOPE_ROUTE = "sendflowr.route"


def authenticate(
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    bearer: BearerDep,
    api_key: ApiKeyDep,
) -> Principal:
    """The caller, after the key, rate-limit, method-scope and path/query tenant checks."""
    checked = request.scope.get(SCOPE_PRINCIPAL)
    if isinstance(checked, Principal):
        return checked  # AuthFirstMiddleware ran these checks before the body was read
    return _check_request(request, runtime, _token(bearer, api_key))


def _check_request(request: Request, runtime: Runtime, token: str | None) -> Principal:
    state = auth_state(request, runtime)
    if token is None:
        principal = _from_cookie(request, state)
    else:
        identified = _identify(state, token)
        if identified is None:
            raise UnauthorizedError("the API key is not valid (unknown, malformed or revoked)")
        principal = identified
    state.limits.hit(principal)
    need = "read" if request.method in READ_METHODS else "write"
    require_scope(principal, need)
    path_tenant = request.path_params.get("tenant")
    if isinstance(path_tenant, str):
        principal.check_tenant(path_tenant)
    for value in request.query_params.getlist("tenant"):
        principal.check_tenant(value)
    request.state.principal = principal
    return principal


def require_scope(principal: Principal, need: str) -> None:
    if not principal.allows(need):
        raise ForbiddenError(
            f"this needs an API key with the {need!r} scope (this key has {principal.scope!r})",
            field="scope",
        )


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def _admin(principal: PrincipalDep) -> Principal:
    require_scope(principal, "admin")
    return principal


def _operator(principal: PrincipalDep) -> Principal:
    require_scope(principal, "admin")
    if not principal.operator:
        raise ForbiddenError("this needs an operator key (one valid on every tenant)")
    return principal


def _operator_read(principal: PrincipalDep) -> Principal:
    if not principal.operator:
        raise ForbiddenError("this needs an operator key (one valid on every tenant)")
    return principal


AdminOnly = Depends(_admin)
"""Route dependency: an admin key (for the route's tenant, or the operator)."""
OperatorOnly = Depends(_operator)
"""Route dependency: an operator admin key."""
OperatorRead = Depends(_operator_read)
"""Route dependency: any operator key (agency-wide reads such as /metrics)."""
Authenticated = Depends(authenticate)
"""Router dependency: any valid key, with the method's scope and the tenant checks."""


def metrics_guard(
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    bearer: BearerDep,
    api_key: ApiKeyDep,
) -> Principal | None:
    """/metrics: an operator key, unless `metrics_public` opens it to a private scrape network."""
    if runtime.settings.metrics_public:
        return None
    return _operator_read(authenticate(request, runtime, bearer, api_key))


# The route dependencies that only look at the principal, so the middleware can run them early.
_PRINCIPAL_GUARDS: dict[Callable[..., Any], Callable[[Principal], Principal]] = {
    _admin: _admin,
    _operator: _operator,
    _operator_read: _operator_read,
}


def _request_token(request: Request) -> str | None:
    """The key as `HTTPBearer` and `APIKeyHeader` read it (see `_bearer`, `_api_key`)."""
    authorization = request.headers.get("Authorization")
    scheme, credentials = get_authorization_scheme_param(authorization)
    bearer = None
    if authorization and scheme.lower() == "bearer" and credentials:
        bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=credentials)
    return _token(bearer, request.headers.get("X-API-Key"))


@dataclass(frozen=True, slots=True)
class _BodyTenant:
    """Where a route's JSON body names the tenant it acts on (found from its body model).

    `top`: the body's own `tenant` field (/timing/decide, /timing/decide/batch,
    /timing-decision, scheduling, cancel, reschedule); `default_demo`: that field is optional
    and, absent or null, the route acts on the demo tenant (/timing-decision); `events`: the
    `tenant` of each of `events` (POST /api/events)."""

    top: bool = False
    default_demo: bool = False
    events: bool = False

    def named(self, doc: Any, demo_tenant: str) -> list[str]:
        """The tenants a parsed body names (only strings: anything else is the route's 422)."""
        if not isinstance(doc, dict):
            return []
        out: list[str] = []
        if self.top:
            tenant = doc.get("tenant")
            if isinstance(tenant, str):
                out.append(tenant)
            elif tenant is None and self.default_demo:
                out.append(demo_tenant)
        if self.events:
            events = doc.get("events")
            if isinstance(events, list):
                out.extend(
                    e["tenant"]
                    for e in events
                    if isinstance(e, dict) and isinstance(e.get("tenant"), str)
                )
        return list(dict.fromkeys(out))


def _body_tenant(context: RouteContext) -> _BodyTenant | None:
    route = context.original_route
    field = getattr(route, "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    if model is EventsIn:
        return _BodyTenant(events=True)
    tenant = model.model_fields.get("tenant")
    if tenant is None:
        return None
    return _BodyTenant(top=True, default_demo=not tenant.is_required() and tenant.default is None)


@dataclass(frozen=True, slots=True)
class _Guarded:
    route: RouteContext
    guards: tuple[Callable[[Principal], Principal], ...]  # run after `authenticate`
    body_tenant: _BodyTenant | None = None  # the body names the tenant: checked before parsing


def _route_table(app: Any) -> list[tuple[RouteContext, _Guarded | None]]:
    table: list[tuple[RouteContext, _Guarded | None]] = []
    for context in iter_route_contexts(app.routes):
        deps = [getattr(d, "dependency", None) for d in getattr(context, "dependencies", ())]
        guarded = None
        if authenticate in deps:
            guards = tuple(_PRINCIPAL_GUARDS[d] for d in deps if d in _PRINCIPAL_GUARDS)
            guarded = _Guarded(context, guards, _body_tenant(context))
        table.append((context, guarded))
    return table


_PARSE_INLINE_BYTES = MIB  # larger bodies are parsed in a worker thread, off the event loop


async def _read_body(scope: AsgiScope, receive: Receive) -> tuple[list[Message], bytes | None]:
    """The request's body messages as read, and the whole body when it is JSON and within the
    route's cap (api/limits.py). None when it is not worth reading (not JSON, a Content-Length
    over the cap or not a number: BodyLimitMiddleware answers those without reading) or when
    reading stopped (past the cap, or the client left): the messages read so far are replayed
    to the app, whose body limit then answers as it would have."""
    method = str(scope.get("method", "GET"))
    if method not in BODY_METHODS:
        return [], None
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    content_type = headers.get(b"content-type")
    if content_type is None or not is_json(content_type.decode("latin-1")):
        return [], None
    cap = cap_for(method, str(scope.get("path", "")))
    declared = headers.get(b"content-length")
    if declared is not None:
        text = declared.decode("latin-1").strip()
        if not text.isdigit() or int(text) > cap:
            return [], None
    messages, body = await read_body(receive, cap)
    if body is None:
        return messages, None
    return [{"type": "http.request", "body": body, "more_body": False}], body


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except ValueError:  # orjson.JSONDecodeError: the route answers 422 as it always has
        return None


async def _check_body_tenant(
    scope: AsgiScope,
    receive: Receive,
    spec: _BodyTenant,
    principal: Principal,
    demo_tenant: str,
) -> Receive:
    """403 (ForbiddenError) when the body names a tenant `principal` may not use; else the
    `receive` to hand the app (the body read here, then the rest)."""
    messages, body = await _read_body(scope, receive)
    if body is not None:
        if len(body) > _PARSE_INLINE_BYTES:
            doc = await run_in_threadpool(_parse, body)
        else:
            doc = _parse(body)
        for tenant in spec.named(doc, demo_tenant):
            principal.check_tenant(tenant)
    return replaying(messages, receive) if messages else receive


class AuthFirstMiddleware:
    """Authenticate before the body is read, on every route that depends on `authenticate`.

    FastAPI reads and parses a JSON body before it resolves a route's dependencies, so a body
    that is not JSON would be answered 422 to anyone, key or not. This pure ASGI middleware
    finds the route the router will pick (the same `matches` the router calls, in the same
    order), and when that route depends on `authenticate` it runs the checks first: the key
    (401), the rate limit (429), the method's scope, the path and query tenant and the route's
    AdminOnly/OperatorOnly/OperatorRead (403). A refusal is answered through the app's own
    exception handlers (api/errors.py), so it is the same response the dependency gives. The
    principal is left in the scope, where `authenticate` finds it (one check, one rate-limit
    hit). Routes without `authenticate` (health, webhooks, the OAuth callback, the dashboard's
    pages, /metrics) pass through untouched.

    On a route whose body names its tenant (`_BodyTenant`), a tenant key's request body is read
    here (within the route's cap, only when it is JSON) and parsed once with orjson: naming a
    tenant the key may not use is 403 before FastAPI validates anything, so a caller never sees
    another tenant's validation errors. The body is then handed to the app as read (BodyLimit
    still counts it against the cap). An operator key, or a body that is not JSON, is not read.

    Per request cost: the match of a path that is a route's whole path (no parameters) is kept
    per (method, path), since the router's answer for it depends on nothing else; the settings
    operator key with limits counted in this process is checked on the event loop (nothing to
    read), any other key in a worker thread (its row is read). The route matched is left in
    the scope too (`SCOPE_ROUTE`), for api/fast_decide.py.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._table: list[tuple[RouteContext, _Guarded | None]] | None = None
        # (method, path) -> the match, for paths that are a route's whole path (no parameters):
        # the router's answer for them depends on nothing else, and there are few of them.
        self._static: dict[tuple[str, str], _Guarded | None] = {}

    def _match(self, scope: AsgiScope) -> tuple[_Guarded, dict[str, Any]] | None:
        if self._table is None:  # the app's routes are all in place by its first request
            self._table = _route_table(scope["app"])
        path = scope.get("path")
        key = (str(scope.get("method")), str(path))
        static = not scope.get("root_path")
        if static and key in self._static:
            hit = self._static[key]
            return None if hit is None else (hit, {})
        for context, guarded in self._table:
            match, child = context.matches(scope)
            if match == Match.FULL:
                params = dict(child.get("path_params", {}))
                route_path = getattr(context.original_route, "path", None)
                if static and not params and route_path == path and len(self._static) < 1024:
                    self._static[key] = guarded
                if guarded is None:
                    return None
                return guarded, params
        return None  # 404, 405 or a redirect: the router answers

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "app" not in scope:
            await self.app(scope, receive, send)
            return
        found = self._match(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        guarded, path_params = found
        scope.setdefault("state", {})
        # A view of the request with the route's path parameters (the router sets them on the
        # real scope later); it shares `state` with the real one.
        request = Request({**scope, "path_params": path_params})
        try:
            runtime = get_runtime(request)
            token = _request_token(request)
            if auth_state(request, runtime).checks_without_io(token):
                principal = _check_request(request, runtime, token)
            else:
                principal = await run_in_threadpool(_check_request, request, runtime, token)
            for guard in guarded.guards:
                guard(principal)
            if guarded.body_tenant is not None and not principal.operator:
                receive = await _check_body_tenant(
                    scope, receive, guarded.body_tenant, principal, runtime.settings.demo_tenant
                )
        except Exception as exc:  # answered as the route's own dependency would be
            response = await _handled(request, exc)
            if response is None:
                raise
            scope["route"] = guarded.route.original_route  # labels (DecisionLatencyMiddleware)
            await response(scope, receive, send)
            return
        scope[SCOPE_PRINCIPAL] = principal
        scope[SCOPE_ROUTE] = guarded.route.original_route
        await self.app(scope, receive, send)


async def _handled(request: Request, exc: Exception) -> Any:
    """The app's exception handler's response for `exc` (errors.py), or None."""
    handlers: dict[Any, Any] = request.app.exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            if inspect.iscoroutinefunction(handler):
                return await handler(request, exc)
            return await run_in_threadpool(handler, request, exc)
    return None


ADMIN_KEY_FILE = "admin.key"


def ensure_admin_key(settings: Settings) -> tuple[Settings, str | None, Path | None]:
    """For `sendflowr run`: the settings with an operator key. Without `admin_api_key`, one is
    generated once under data_dir (owner-only, like the hash key) and reused. Returns the key
    only when it was generated now (so the caller prints it once), and the file it lives in."""
    if settings.admin_api_key is not None:
        return settings, None, None
    path = Path(settings.data_dir) / ADMIN_KEY_FILE
    created: str | None = None
    if path.exists():
        key = path.read_text().strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = f"{KEY_PREFIX}admin_{secrets.token_urlsafe(32)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        created = key
    return settings.model_copy(update={"admin_api_key": SecretStr(key)}), created, path
