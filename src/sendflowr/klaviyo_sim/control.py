"""/_sim/*: the simulator's own controls (not part of Klaviyo's API).

POST/GET/DELETE /_sim/faults, GET/DELETE /_sim/stats, GET /_sim/brand, POST /_sim/live,
POST /_sim/settings. Loopback clients only unless `allow_remote_control`.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse, Response

from sendflowr.klaviyo_sim.faults import KINDS
from sendflowr.klaviyo_sim.state import Ctx
from sendflowr.klaviyo_sim.stats import Stats

_LOOPBACK = ("127.", "::1", "localhost", "testclient")


def allowed(ctx: Ctx) -> bool:
    if ctx.state.config.allow_remote_control:
        return True
    client = ctx.request.client
    return client is None or client.host.startswith(_LOOPBACK)


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


async def _body(ctx: Ctx) -> dict[str, Any] | None:
    raw = await ctx.request.body()
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def add_fault(ctx: Ctx) -> Response:
    body = await _body(ctx)
    if body is None:
        return _error(400, "body: a JSON object")
    kind = body.get("kind")
    if kind not in KINDS:
        return _error(400, f"kind: one of {', '.join(KINDS)}")
    try:
        fault = ctx.state.faults.add(
            kind,
            count=int(body.get("count", 1)),
            path_prefix=str(body.get("path_prefix", "/api/")),
            delay_seconds=None
            if body.get("delay_seconds") is None
            else float(body["delay_seconds"]),
            status=None if body.get("status") is None else int(body["status"]),
            method=body.get("method"),
        )
    except (TypeError, ValueError) as exc:
        return _error(400, str(exc))
    return JSONResponse(
        {"fault": fault.as_dict(), "pending": ctx.state.faults.pending()}, status_code=201
    )


async def list_faults(ctx: Ctx) -> Response:
    return JSONResponse({"pending": ctx.state.faults.pending()})


async def clear_faults(ctx: Ctx) -> Response:
    return JSONResponse({"cleared": ctx.state.faults.clear()})


async def get_stats(ctx: Ctx) -> Response:
    include_ids = ctx.query.get("include_ids", "").lower() in ("1", "true", "yes")
    snapshot = ctx.state.stats.snapshot(include_ids)
    snapshot["brand_events"] = len(ctx.brand.events)
    return Response(orjson.dumps(snapshot), media_type="application/json")


async def reset_stats(ctx: Ctx) -> Response:
    ctx.state.stats = Stats()
    return Response(status_code=204)


async def get_brand(ctx: Ctx) -> Response:
    return Response(orjson.dumps(ctx.brand.summary()), media_type="application/json")


async def live(ctx: Ctx) -> Response:
    """{"events": N, "deliver": true}: N new events now, delivered to the subscribed webhooks
    before answering (outcomes in the answer); "deliver": false only adds them."""
    body = await _body(ctx)
    if body is None:
        return _error(400, "body: a JSON object")
    n = body.get("events", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 100_000:
        return _error(400, "events: an integer from 0 to 100000")
    ordinals = ctx.state.add_live_events(n)
    store = ctx.brand.events
    out: dict[str, Any] = {"created": [store.ids[o] for o in ordinals]}
    if body.get("deliver", True):
        outcomes = await ctx.state.deliver(ordinals)
        out["deliveries"] = [o.as_dict() for o in outcomes]
    return JSONResponse(out, status_code=201)


async def settings(ctx: Ctx) -> Response:
    """{"deny_consent": bool, "rate_limits": bool}: switch behaviour at run time."""
    body = await _body(ctx)
    if body is None:
        return _error(400, "body: a JSON object")
    state = ctx.state
    if "deny_consent" in body:
        state.oauth.deny_consent = bool(body["deny_consent"])
    if "rate_limits" in body:
        state.limiter.enabled = bool(body["rate_limits"])
    return JSONResponse(
        {"deny_consent": state.oauth.deny_consent, "rate_limits": state.limiter.enabled}
    )
