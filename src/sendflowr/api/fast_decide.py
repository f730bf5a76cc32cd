"""POST /timing/decide without the framework's per-request work (issue 5).

A single decision is small (about a millisecond of engine work), so what FastAPI does around
it used to cost more than the decision: matching the route again, solving its dependencies
(each sync one in a worker thread), the endpoint in another worker thread, the response
model validated in a third, then serialised. This pure ASGI middleware, the innermost one
(inside DecisionLatency, AuthFirst and BodyLimit, which all still run), answers the requests
it can answer exactly as the route would, in one worker-thread call:

- only the route AuthFirstMiddleware matched as `POST /timing/decide` (the router's own
  choice, see `SCOPE_ROUTE`), after it authenticated the caller (the principal is in the
  scope: key, rate limit, scope, body tenant already checked);
- only a JSON body with a Content-Length (no chunked body), read through BodyLimit's counted
  `receive` like the route reads it;
- only a body that parses (orjson) and validates as `DecideIn` as FastAPI validates it (the
  model from the parsed document, python mode).

Anything else - no principal, another route, a chunked or empty body, JSON that orjson
refuses (NaN, 65-bit integers, lone surrogates), a body that fails validation, a client that
left - is handed on to the app untouched (the body read so far replayed), so every refusal
(401/403/413/422 and their messages) is the framework's own. Errors raised while deciding
(the tenant check, the window, the identifier) are answered by the app's exception handlers,
as ExceptionMiddleware would answer them; an error with no handler but the catch-all goes on
to ServerErrorMiddleware (500), as it would from the route. The response is the response
model's JSON (`DecisionOut`, by alias) with the same headers; the OpenAPI document is the
route's, which stays registered and answers whatever this does not take.
"""

from __future__ import annotations

import inspect
from typing import Any, Final

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sendflowr.api.asgi_body import read_body, replaying
from sendflowr.api.auth import SCOPE_PRINCIPAL, SCOPE_ROUTE, Principal
from sendflowr.api.limits import MIB, cap_for, is_json
from sendflowr.api.routes import timing
from sendflowr.api.schemas import DecideIn, DecisionOut
from sendflowr.runtime import Runtime

_OUT: Final = TypeAdapter(DecisionOut)  # what FastAPI's response field serialises with
_MAX_INLINE: Final = MIB  # a body this large is not a single decision: the framework takes it


def _declared_length(scope: Scope) -> int | None:
    """The body's Content-Length when the request is one this path takes: a JSON body of a
    declared, non-zero length within the route's cap, not chunked."""
    length: int | None = None
    json_type = False
    for name, value in scope.get("headers", ()):
        key = name.lower()
        if key == b"content-length":
            text = value.strip()
            if length is not None or not text.isdigit():
                return None
            length = int(text)
        elif key == b"content-type":
            json_type = is_json(value.decode("latin-1"))
        elif key == b"transfer-encoding":
            return None
    if length is None or length == 0 or not json_type:
        return None
    if length > min(_MAX_INLINE, cap_for("POST", str(scope.get("path", "")))):
        return None
    return length


def _valid(body: bytes) -> DecideIn | None:
    """The body as the route's model, or None (the framework then answers it)."""
    try:
        doc = orjson.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    try:
        return DecideIn.model_validate(doc)
    except ValidationError:
        return None


def _answer(runtime: Runtime, principal: Principal, body: DecideIn) -> bytes:
    out = timing.decide_one(runtime, principal, body)
    return _OUT.dump_json(out, by_alias=True)


def _handler(app: Any, exc: Exception) -> Any:
    """The handler ExceptionMiddleware would call for `exc`: the app's, by the exception's
    classes in order, except the catch-all (ServerErrorMiddleware's)."""
    handlers: dict[Any, Any] = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None


class DecideFastPath:
    """See the module notes. Add it first (innermost), so the other middlewares wrap it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scope.get(SCOPE_ROUTE)
        principal = scope.get(SCOPE_PRINCIPAL)
        length = None
        if (
            scope["type"] == "http"
            and getattr(route, "endpoint", None) is timing.decide
            and isinstance(principal, Principal)
        ):
            length = _declared_length(scope)
        if length is None:
            await self.app(scope, receive, send)
            return
        messages, body = await read_body(receive, length)
        parsed = _valid(body) if body is not None else None
        if parsed is None:
            await self.app(scope, replaying(messages, receive), send)
            return
        assert isinstance(principal, Principal)
        scope["route"] = route  # as the router sets it (DecisionLatencyMiddleware's label)
        scope["endpoint"] = timing.decide
        app = scope["app"]
        runtime: Runtime = app.state.runtime
        try:
            content = await run_in_threadpool(_answer, runtime, principal, parsed)
        except Exception as exc:
            handler = _handler(app, exc)
            if handler is None:
                raise
            request = Request(scope)
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
            await response(scope, receive, send)
            return
        await Response(content, media_type="application/json")(scope, receive, send)
