"""The ASGI app: a small router over Klaviyo's paths, the /api guard, faults and stats.

Paths match with or without a trailing slash (Klaviyo's own links end in one). Every /api
response is JSON:API; unknown paths and methods get Klaviyo's 404/405 error documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import httpx
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from sendflowr.klaviyo_sim import api_events, api_objects, api_webhooks, control, oauth_routes
from sendflowr.klaviyo_sim.brand import Brand, build_brand
from sendflowr.klaviyo_sim.config import SimServerConfig
from sendflowr.klaviyo_sim.errors import ApiError
from sendflowr.klaviyo_sim.faults import apply_fault
from sendflowr.klaviyo_sim.guard import authenticate, check_media_type, check_revision, check_scopes
from sendflowr.klaviyo_sim.state import Ctx, Handler, SimState

log = logging.getLogger(__name__)

API: Final = "api"
OAUTH: Final = "oauth"
CONTROL: Final = "control"


@dataclass(frozen=True, slots=True)
class Route:
    template: str
    kind: str
    methods: dict[str, Handler]
    pattern: re.Pattern[str]


def _route(template: str, kind: str, methods: dict[str, Handler]) -> Route:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return Route(template, kind, methods, re.compile(f"^{regex}/?$"))


ROUTES: Final = (
    _route("/api/accounts", API, {"GET": api_objects.list_accounts}),
    _route("/api/metrics", API, {"GET": api_events.list_metrics}),
    _route("/api/metrics/{id}", API, {"GET": api_events.get_metric}),
    _route("/api/events", API, {"GET": api_events.list_events, "POST": api_events.create_event}),
    _route("/api/events/{id}", API, {"GET": api_events.get_event}),
    _route("/api/event-bulk-create-jobs", API, {"POST": api_events.bulk_create_events}),
    _route("/api/profiles", API, {"GET": api_objects.list_profiles}),
    _route("/api/profiles/{id}", API, {"GET": api_objects.get_profile}),
    _route("/api/campaigns", API, {"GET": api_objects.list_campaigns}),
    _route("/api/campaigns/{id}", API, {"GET": api_objects.get_campaign}),
    _route("/api/campaign-send-jobs", API, {"POST": api_objects.create_send_job}),
    _route("/api/campaign-send-jobs/{id}", API, {"GET": api_objects.get_send_job}),
    _route("/api/flows", API, {"GET": api_objects.list_flows}),
    _route("/api/flows/{id}", API, {"GET": api_objects.get_flow}),
    _route("/api/lists/{id}/profiles", API, {"GET": api_objects.list_members}),
    _route("/api/segments/{id}/profiles", API, {"GET": api_objects.segment_members}),
    _route(
        "/api/webhooks",
        API,
        {"GET": api_webhooks.list_webhooks, "POST": api_webhooks.create_webhook},
    ),
    _route(
        "/api/webhooks/{id}",
        API,
        {"GET": api_webhooks.get_webhook, "DELETE": api_webhooks.delete_webhook},
    ),
    _route("/api/webhook-topics", API, {"GET": api_webhooks.list_topics}),
    _route("/oauth/authorize", OAUTH, {"GET": oauth_routes.authorize}),
    _route("/oauth/token", OAUTH, {"POST": oauth_routes.token}),
    _route("/oauth/revoke", OAUTH, {"POST": oauth_routes.revoke}),
    _route(
        "/_sim/faults",
        CONTROL,
        {"GET": control.list_faults, "POST": control.add_fault, "DELETE": control.clear_faults},
    ),
    _route("/_sim/stats", CONTROL, {"GET": control.get_stats, "DELETE": control.reset_stats}),
    _route("/_sim/brand", CONTROL, {"GET": control.get_brand}),
    _route("/_sim/live", CONTROL, {"POST": control.live}),
    _route("/_sim/settings", CONTROL, {"POST": control.settings}),
)
_BODY_METHODS: Final = frozenset({"POST", "PATCH", "PUT"})


def match(path: str) -> tuple[Route | None, dict[str, str]]:
    for route in ROUTES:
        m = route.pattern.match(path)
        if m:
            return route, m.groupdict()
    return None, {}


class SimApp:
    """The simulated Klaviyo as an ASGI application; `state` is open to tests."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._background: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        route, params = match(path)
        if path.startswith("/_sim"):
            await self._dispatch(route, params, scope, receive, send)
            return
        method: str = scope["method"]
        operation = f"{method} {route.template if route else 'unknown'}"

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.state.stats.record(operation, int(message["status"]))
            await send(message)

        fault = self.state.faults.take(method, path)
        if fault is None:
            await self._dispatch(route, params, scope, receive, recording_send)
            return

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self._dispatch(route, params, scope, receive, send)

        await apply_fault(fault, app, scope, receive, recording_send)

    async def _dispatch(
        self,
        route: Route | None,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        request = Request(scope, receive)
        response = await self._respond(route, params, request)
        await response(scope, receive, send)

    async def _respond(
        self, route: Route | None, params: dict[str, str], request: Request
    ) -> Response:
        path, method = request.url.path, request.method
        if route is None:
            if path.startswith("/api"):
                return ApiError(404, f"No endpoint at {path}.").response()
            return JSONResponse({"error": "not_found"}, status_code=404)
        handler = route.methods.get(method)
        if handler is None:
            allow = ", ".join(sorted(route.methods))
            if route.kind == API:
                return ApiError(
                    405,
                    f"Method {method} is not allowed on {route.template}.",
                    headers={"Allow": allow},
                ).response()
            return JSONResponse(
                {"error": "method_not_allowed"}, status_code=405, headers={"Allow": allow}
            )
        ctx = Ctx(request, self.state, params, (method, route.template))
        if route.kind == CONTROL:
            if not control.allowed(ctx):
                return JSONResponse({"error": "loopback clients only"}, status_code=403)
            return await handler(ctx)
        if self.state.config.base_url is None:
            self.state.public_base = ctx.base
        if route.kind == OAUTH:
            return await handler(ctx)
        return await self._api(ctx, handler)

    async def _api(self, ctx: Ctx, handler: Handler) -> Response:
        state = self.state
        headers: dict[str, str] = {}
        try:
            principal = authenticate(ctx.request, state.api_keys, state.oauth)
            decision = state.limiter.hit(principal.rate_key, ctx.operation)
            if decision is not None:
                headers = decision.headers()
                if not decision.allowed:
                    raise ApiError(
                        429,
                        f"Request was throttled. Expected available in {decision.retry_after} "
                        "second(s).",
                        headers=headers,
                    )
            check_revision(ctx.request)
            check_scopes(principal, ctx.operation)
            if ctx.request.method in _BODY_METHODS:
                check_media_type(ctx.request)
            response = await handler(ctx)
        except ApiError as exc:
            response = exc.response()
        response.headers.update(headers)
        return response

    # -- lifespan and background live events ---------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.state.config.live_events_per_minute > 0:
                    self._background = asyncio.create_task(self._live_loop())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._background is not None:
                    self._background.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._background
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _live_loop(self) -> None:
        rng = np.random.default_rng(self.state.config.seed + 1)
        per_second = self.state.config.live_events_per_minute / 60.0
        while True:
            await asyncio.sleep(1.0)
            n = int(rng.poisson(per_second))
            if n:
                try:
                    await self.state.deliver(self.state.add_live_events(n))
                except (httpx.HTTPError, OSError):  # recorded per webhook; never stop the loop
                    log.exception("live event delivery failed")


def create_sim_app(
    config: SimServerConfig,
    *,
    brand: Brand | None = None,
    clock: Callable[[], float] = time.time,
    webhook_transport: httpx.AsyncBaseTransport | None = None,
) -> SimApp:
    """The simulated Klaviyo for `config`. `brand` reuses an already built brand (tests share
    one); `clock` (unix seconds) drives token expiry and rate limits; `webhook_transport`
    routes webhook deliveries (e.g. to an in-process ASGI receiver)."""
    if brand is None:
        brand = build_brand(config.sim_config())
    return SimApp(SimState(config, brand, clock, webhook_transport))
