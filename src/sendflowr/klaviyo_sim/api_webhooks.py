"""GET/POST /api/webhooks, GET/DELETE /api/webhooks/{id}, GET /api/webhook-topics."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.responses import Response

from sendflowr.klaviyo_sim import resources
from sendflowr.klaviyo_sim.api_events import parse_include
from sendflowr.klaviyo_sim.errors import bad_body, not_found
from sendflowr.klaviyo_sim.state import Ctx
from sendflowr.klaviyo_sim.webhooks import Webhook, new_webhook_id

_INCLUDES = frozenset({"webhook-topics"})


def topics(ctx: Ctx) -> list[str]:
    return [m.topic for m in ctx.brand.metrics]


def _included(ctx: Ctx, hooks: list[Webhook]) -> list[object] | None:
    if "webhook-topics" not in parse_include(ctx, _INCLUDES):
        return None
    seen: dict[str, None] = {}
    for h in hooks:
        for t in h.topics:
            seen.setdefault(t, None)
    return [resources.webhook_topic(t) for t in seen]


async def list_webhooks(ctx: Ctx) -> Response:
    hooks = list(ctx.state.webhooks.values())
    doc = resources.collection(
        [h.resource() for h in hooks], ctx.self_url(), included=_included(ctx, hooks)
    )
    return ctx.respond(doc)


async def get_webhook(ctx: Ctx) -> Response:
    hook = ctx.state.webhooks.get(ctx.params["id"])
    if hook is None:
        raise not_found("webhook", ctx.params["id"])
    doc = resources.single(hook.resource(), ctx.self_url(), _included(ctx, [hook]))
    return ctx.respond(doc)


async def delete_webhook(ctx: Ctx) -> Response:
    if ctx.state.webhooks.pop(ctx.params["id"], None) is None:
        raise not_found("webhook", ctx.params["id"])
    return Response(status_code=204)


def _string(obj: dict[str, Any], key: str, pointer: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise bad_body(f"{pointer}/{key}", f"{pointer}/{key} must be a non-empty string.")
    return value


async def create_webhook(ctx: Ctx) -> Response:
    body = await ctx.json_body()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise bad_body("/data", "/data is required.")
    if data.get("type") != "webhook":
        raise bad_body("/data/type", "/data/type must be 'webhook'.")
    attrs = data.get("attributes")
    if not isinstance(attrs, dict):
        raise bad_body("/data/attributes", "/data/attributes is required.")
    name = _string(attrs, "name", "/data/attributes")
    url = _string(attrs, "endpoint_url", "/data/attributes")
    secret = _string(attrs, "secret_key", "/data/attributes")
    description = _string(attrs, "description", "/data/attributes", required=False)
    if name is None or url is None or secret is None:  # required=True never gives None
        raise bad_body("/data/attributes", "name, endpoint_url and secret_key are required.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad_body("/data/attributes/endpoint_url", "endpoint_url must be an http(s) URL.")
    rels = data.get("relationships")
    topic_rel = rels.get("webhook-topics") if isinstance(rels, dict) else None
    items = topic_rel.get("data") if isinstance(topic_rel, dict) else None
    pointer = "/data/relationships/webhook-topics/data"
    if not isinstance(items, list) or not items:
        raise bad_body(pointer, "At least one webhook topic is required.")
    known = set(topics(ctx))
    chosen: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") != "webhook-topic":
            raise bad_body(f"{pointer}/{i}", "Each item is {type: webhook-topic, id}.")
        topic = item.get("id")
        if topic not in known:
            raise bad_body(f"{pointer}/{i}/id", f"Unknown webhook topic {topic!r}.")
        chosen.append(str(topic))
    hook = Webhook(
        new_webhook_id(), name, description, url, secret, tuple(chosen), int(ctx.state.clock())
    )
    ctx.state.webhooks[hook.id] = hook
    return ctx.respond(resources.single(hook.resource(), ctx.self_url()), status=201)


async def list_topics(ctx: Ctx) -> Response:
    data = [resources.webhook_topic(t) for t in topics(ctx)]
    return ctx.respond(resources.collection(data, ctx.self_url()))
