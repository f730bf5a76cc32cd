"""Accounts, profiles, campaigns (and their send jobs), flows, list and segment members."""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.responses import Response

from sendflowr.connectors.klaviyo.constants import MAX_PAGE_SIZE
from sendflowr.klaviyo_sim import resources
from sendflowr.klaviyo_sim.api_events import parse_include
from sendflowr.klaviyo_sim.brand import LIST_ID, SEGMENT_ID, Campaign, Flow, Profile
from sendflowr.klaviyo_sim.errors import ApiError, bad_body, bad_parameter, not_found
from sendflowr.klaviyo_sim.filters import (
    COMPARISONS,
    Condition,
    Field,
    as_string,
    check_allowed,
    filter_objects,
    parse_filter,
    parse_page_size,
    parse_sort,
    sort_objects,
)
from sendflowr.klaviyo_sim.paging import page_of, query_fingerprint
from sendflowr.klaviyo_sim.state import Ctx

_STR = frozenset({"equals", "any"})
PROFILE_FILTERS: Final = {
    "id": _STR,
    "email": _STR,
    "phone_number": _STR,
    "external_id": _STR,
    "_kx": frozenset({"equals"}),
    "created": frozenset({"greater-than", "less-than"}),
    "updated": frozenset({"greater-than", "less-than"}),
}
PROFILE_FIELDS: Final[dict[str, Field[Profile]]] = {
    "id": Field(lambda p: p.id),
    "email": Field(lambda p: p.email),
    "created": Field(lambda p: p.created, "datetime"),
    "updated": Field(lambda p: p.created, "datetime"),
}
PROFILE_SORTS: Final = frozenset(
    {"created", "-created", "email", "-email", "id", "-id", "updated", "-updated"}
)
PROFILE_KEYS: Final = {
    "created": lambda p: (p.created, p.id),
    "updated": lambda p: (p.created, p.id),
    "email": lambda p: p.email,
    "id": lambda p: p.id,
}

CHANNELS: Final = frozenset({"email", "sms", "mobile_push", "whatsapp"})
CAMPAIGN_FILTERS: Final = {
    "messages.channel": frozenset({"equals"}),
    "id": frozenset({"any"}),
    "name": frozenset({"contains"}),
    "status": frozenset({"any", "equals"}),
    "archived": frozenset({"equals"}),
    "created_at": COMPARISONS,
    "scheduled_at": COMPARISONS,
    "updated_at": COMPARISONS,
}
CAMPAIGN_FIELDS: Final[dict[str, Field[Campaign]]] = {
    "id": Field(lambda c: c.id),
    "name": Field(lambda c: c.name),
    "status": Field(lambda c: "Sent"),
    "archived": Field(lambda c: False, "bool"),
    "created_at": Field(lambda c: c.created, "datetime"),
    "scheduled_at": Field(lambda c: c.send_ts, "datetime"),
    "updated_at": Field(lambda c: c.send_ts, "datetime"),
}
CAMPAIGN_SORTS: Final = frozenset(
    f"{sign}{name}"
    for name in ("created_at", "id", "name", "scheduled_at", "updated_at")
    for sign in ("", "-")
)
CAMPAIGN_KEYS: Final = {
    "created_at": lambda c: (c.created, c.id),
    "scheduled_at": lambda c: (c.send_ts, c.id),
    "updated_at": lambda c: (c.send_ts, c.id),
    "id": lambda c: c.id,
    "name": lambda c: (c.name, c.id),
}

_TEXT = frozenset({"contains", "ends-with", "equals", "starts-with"})
FLOW_FILTERS: Final = {
    "id": frozenset({"any"}),
    "name": _TEXT,
    "status": frozenset({"equals"}),
    "archived": frozenset({"equals"}),
    "created": COMPARISONS | {"equals"},
    "updated": COMPARISONS | {"equals"},
    "trigger_type": frozenset({"equals"}),
}
FLOW_FIELDS: Final[dict[str, Field[Flow]]] = {
    "id": Field(lambda f: f.id),
    "name": Field(lambda f: f.name),
    "status": Field(lambda f: "live"),
    "archived": Field(lambda f: False, "bool"),
    "created": Field(lambda f: f.created, "datetime"),
    "updated": Field(lambda f: f.created, "datetime"),
    "trigger_type": Field(lambda f: f.trigger_type),
}
FLOW_SORTS: Final = frozenset(
    f"{sign}{name}"
    for name in ("created", "id", "name", "status", "trigger_type", "updated")
    for sign in ("", "-")
)
FLOW_KEYS: Final = {
    "created": lambda f: (f.created, f.id),
    "updated": lambda f: (f.created, f.id),
    "id": lambda f: f.id,
    "name": lambda f: (f.name, f.id),
    "status": lambda f: f.id,
    "trigger_type": lambda f: (f.trigger_type, f.id),
}

MEMBER_FILTERS: Final = {
    "email": _STR,
    "phone_number": _STR,
    "push_token": _STR,
    "_kx": frozenset({"equals"}),
    "joined_group_at": COMPARISONS,
}
MEMBER_SORTS: Final = frozenset({"joined_group_at", "-joined_group_at"})


# -- accounts --------------------------------------------------------------------------------


async def list_accounts(ctx: Ctx) -> Response:
    b = ctx.brand
    account = resources.account(
        b.account_id,
        f"Simulated brand {b.tenant}",
        b.config.brand_tz,
        b.config.currency,
        b.public_key,
    )
    return ctx.respond(resources.collection([account], ctx.self_url()))


# -- profiles --------------------------------------------------------------------------------


async def list_profiles(ctx: Ctx) -> Response:
    conditions = parse_filter(ctx.query.get("filter"))
    check_allowed(conditions, PROFILE_FILTERS)
    sort = parse_sort(ctx.query.get("sort"), PROFILE_SORTS, "id")
    size = parse_page_size(ctx.query.get("page[size]"), MAX_PAGE_SIZE["/api/profiles"], 20)
    parse_include(ctx, frozenset({"conversations", "push-tokens"}))
    brand = ctx.brand
    candidates: list[Profile] = brand.profiles
    # Fast paths for the lookups a connector makes: one email or one id.
    for c in conditions:
        if c.op == "equals" and c.field in ("email", "id"):
            index = brand.profile_by_email if c.field == "email" else brand.profile_by_id
            found = index.get(as_string(c))
            candidates = [found] if found is not None else []
            break
    profiles = sort_objects(
        filter_objects(candidates, conditions, PROFILE_FIELDS), sort, PROFILE_KEYS
    )
    chunk, next_url, prev_url = page_of(
        ctx, profiles, size, query_fingerprint(ctx, conditions, sort)
    )
    data = [orjson.Fragment(brand.rendered_profiles[p.index]) for p in chunk]
    return ctx.respond(resources.collection(data, ctx.self_url(), next_url, prev_url))


async def get_profile(ctx: Ctx) -> Response:
    parse_include(ctx, frozenset({"conversations", "lists", "push-tokens", "segments"}))
    p = ctx.brand.profile_by_id.get(ctx.params["id"])
    if p is None:
        raise not_found("profile", ctx.params["id"])
    return ctx.respond(
        resources.single(orjson.Fragment(ctx.brand.rendered_profiles[p.index]), ctx.self_url())
    )


# -- campaigns -------------------------------------------------------------------------------


def _channel(conditions: list[Condition]) -> str:
    channels = [as_string(c) for c in conditions if c.field == "messages.channel"]
    if not channels:
        raise bad_parameter(
            "filter",
            "A channel filter is required: filter=equals(messages.channel,'email') "
            "(or 'sms', 'mobile_push').",
        )
    if len(set(channels)) > 1 or channels[0] not in CHANNELS:
        raise bad_parameter(
            "filter", f"Invalid channel {channels[0]!r}; use one of {sorted(CHANNELS)}."
        )
    return channels[0]


def _campaign(c: Campaign) -> resources.Json:
    return resources.campaign(c.id, c.name, c.message_id, c.send_ts, c.created, LIST_ID)


async def list_campaigns(ctx: Ctx) -> Response:
    conditions = parse_filter(ctx.query.get("filter"))
    check_allowed(conditions, CAMPAIGN_FILTERS)
    channel = _channel(conditions)
    sort = parse_sort(ctx.query.get("sort"), CAMPAIGN_SORTS, "id")
    size = parse_page_size(ctx.query.get("page[size]"), MAX_PAGE_SIZE["/api/campaigns"], 100)
    parse_include(ctx, frozenset({"campaign-messages", "tags"}))
    rest = [c for c in conditions if c.field != "messages.channel"]
    campaigns = ctx.brand.campaigns if channel == "email" else []
    chosen = sort_objects(filter_objects(campaigns, rest, CAMPAIGN_FIELDS), sort, CAMPAIGN_KEYS)
    chunk, next_url, prev_url = page_of(ctx, chosen, size, query_fingerprint(ctx, conditions, sort))
    data = [_campaign(c) for c in chunk]
    return ctx.respond(resources.collection(data, ctx.self_url(), next_url, prev_url))


def _find_campaign(ctx: Ctx, ident: str) -> Campaign:
    for c in ctx.brand.campaigns:
        if c.id == ident:
            return c
    raise not_found("campaign", ident)


async def get_campaign(ctx: Ctx) -> Response:
    parse_include(ctx, frozenset({"campaign-messages", "tags"}))
    c = _find_campaign(ctx, ctx.params["id"])
    return ctx.respond(resources.single(_campaign(c), ctx.self_url()))


async def create_send_job(ctx: Ctx) -> Response:
    body = await ctx.json_body()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise bad_body("/data", "/data is required.")
    if data.get("type") != "campaign-send-job":
        raise bad_body("/data/type", "/data/type must be 'campaign-send-job'.")
    ident = data.get("id")
    if not isinstance(ident, str) or not ident:
        raise bad_body("/data/id", "/data/id (the campaign id) is required.")
    _find_campaign(ctx, ident)
    jobs = ctx.state.send_jobs
    if ident in jobs:
        raise ApiError(409, f"Campaign {ident!r} already has a send job.")
    jobs[ident] = ctx.state.clock()
    doc = resources.single(resources.campaign_send_job(ident, "queued"), ctx.self_url())
    return ctx.respond(doc, status=202)


async def get_send_job(ctx: Ctx) -> Response:
    ident = ctx.params["id"]
    created = ctx.state.send_jobs.get(ident)
    if created is None:
        raise not_found("campaign-send-job", ident)
    done = ctx.state.clock() - created >= ctx.state.config.send_job_seconds
    status = "complete" if done else "processing"
    return ctx.respond(resources.single(resources.campaign_send_job(ident, status), ctx.self_url()))


# -- flows -----------------------------------------------------------------------------------


async def list_flows(ctx: Ctx) -> Response:
    conditions = parse_filter(ctx.query.get("filter"))
    check_allowed(conditions, FLOW_FILTERS)
    sort = parse_sort(ctx.query.get("sort"), FLOW_SORTS, "id")
    size = parse_page_size(ctx.query.get("page[size]"), MAX_PAGE_SIZE["/api/flows"], 50)
    parse_include(ctx, frozenset({"flow-actions", "tags"}))
    flows = sort_objects(filter_objects(ctx.brand.flows, conditions, FLOW_FIELDS), sort, FLOW_KEYS)
    chunk, next_url, prev_url = page_of(ctx, flows, size, query_fingerprint(ctx, conditions, sort))
    data = [resources.flow(f.id, f.name, f.trigger_type, f.created) for f in chunk]
    return ctx.respond(resources.collection(data, ctx.self_url(), next_url, prev_url))


async def get_flow(ctx: Ctx) -> Response:
    parse_include(ctx, frozenset({"flow-actions", "tags"}))
    for f in ctx.brand.flows:
        if f.id == ctx.params["id"]:
            doc = resources.single(
                resources.flow(f.id, f.name, f.trigger_type, f.created), ctx.self_url()
            )
            return ctx.respond(doc)
    raise not_found("flow", ctx.params["id"])


# -- list and segment members ----------------------------------------------------------------


async def _members(ctx: Ctx, members: list[tuple[int, int]], allowed: dict[str, Any]) -> Response:
    conditions = parse_filter(ctx.query.get("filter"))
    check_allowed(conditions, allowed)
    sort = parse_sort(ctx.query.get("sort"), MEMBER_SORTS, "joined_group_at")
    size = parse_page_size(
        ctx.query.get("page[size]"), MAX_PAGE_SIZE["/api/lists/{id}/profiles"], 20
    )
    brand = ctx.brand
    fields: dict[str, Field[tuple[int, int]]] = {
        "email": Field(lambda m: brand.profiles[m[0]].email),
        "profile_id": Field(lambda m: brand.profiles[m[0]].id),
        "joined_group_at": Field(lambda m: m[1], "datetime"),
    }
    chosen = filter_objects(members, conditions, fields)
    if sort.startswith("-"):
        chosen = chosen[::-1]
    chunk, next_url, prev_url = page_of(ctx, chosen, size, query_fingerprint(ctx, conditions, sort))
    data = []
    for index, joined in chunk:
        p = brand.profiles[index]
        data.append(resources.member(p.id, p.email, p.tz, p.created, p.last_event, joined))
    return ctx.respond(resources.collection(data, ctx.self_url(), next_url, prev_url))


async def list_members(ctx: Ctx) -> Response:
    if ctx.params["id"] != LIST_ID:
        raise not_found("list", ctx.params["id"])
    return await _members(ctx, ctx.brand.list_members, MEMBER_FILTERS)


async def segment_members(ctx: Ctx) -> Response:
    if ctx.params["id"] != SEGMENT_ID:
        raise not_found("segment", ctx.params["id"])
    allowed = {**MEMBER_FILTERS, "profile_id": _STR}
    return await _members(ctx, ctx.brand.segment_members, allowed)
