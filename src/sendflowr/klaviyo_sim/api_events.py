"""GET/POST /api/events, GET /api/events/{id}, bulk create jobs, and metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from starlette.responses import Response

from sendflowr.connectors.klaviyo.constants import MAX_PAGE_SIZE
from sendflowr.klaviyo_sim import resources
from sendflowr.klaviyo_sim.brand import Metric
from sendflowr.klaviyo_sim.errors import bad_body, bad_parameter, not_found
from sendflowr.klaviyo_sim.eventstore import KEY_MAX, Selection, key_of_time
from sendflowr.klaviyo_sim.filters import (
    COMPARISONS,
    NEXT,
    PREV,
    Field,
    as_datetime_ms,
    as_int,
    as_string,
    check_allowed,
    filter_objects,
    parse_filter,
    parse_page_size,
    parse_sort,
    seconds_bounds,
)
from sendflowr.klaviyo_sim.paging import query_fingerprint
from sendflowr.klaviyo_sim.sparse import (
    EVENT_FIELDS,
    Fields,
    narrowing,
    parse_fields,
    sparse_rendered,
)
from sendflowr.klaviyo_sim.state import Ctx

EVENT_FILTERS: Final = {
    "metric_id": frozenset({"equals"}),
    "profile_id": frozenset({"equals"}),
    "profile": frozenset({"has"}),
    "metric": frozenset({"has"}),
    "datetime": COMPARISONS,
    "timestamp": COMPARISONS,
}
EVENT_SORTS: Final = frozenset({"datetime", "-datetime", "timestamp", "-timestamp"})
EVENT_INCLUDES: Final = frozenset({"profile", "metric", "attributions"})
METRIC_FILTERS: Final = {
    "integration.name": frozenset({"equals"}),
    "integration.category": frozenset({"equals"}),
}
METRIC_FIELDS: Final[dict[str, Field[Metric]]] = {
    "integration.name": Field(lambda m: m.integration["name"]),
    "integration.category": Field(lambda m: m.integration["category"]),
}
MAX_BULK_EVENTS: Final = 1000
_EARLIEST: Final = datetime(1990, 1, 1, tzinfo=UTC)


def parse_include(ctx: Ctx, allowed: frozenset[str]) -> set[str]:
    raw = ctx.query.get("include")
    if not raw:
        return set()
    wanted = {part.strip() for part in raw.split(",") if part.strip()}
    unknown = wanted - allowed
    if unknown:
        raise bad_parameter(
            "include",
            f"Invalid include {', '.join(sorted(unknown))!r}; "
            f"allowed: {', '.join(sorted(allowed))}.",
        )
    return wanted


def _selection(ctx: Ctx) -> tuple[Selection, list[Any]]:
    conditions = parse_filter(ctx.query.get("filter"))
    check_allowed(conditions, EVENT_FILTERS)
    brand = ctx.brand
    metric: int | None = None
    profile: int | None = None
    lo_s: int | None = None
    hi_s: int | None = None
    for c in conditions:
        if c.field == "metric_id":
            m = brand.metric_by_id.get(as_string(c))
            code = -1 if m is None else m.code
            metric = code if metric in (None, code) else -1
        elif c.field == "profile_id":
            p = brand.profile_by_id.get(as_string(c))
            idx = -1 if p is None else p.index
            profile = idx if profile in (None, idx) else -1
        elif c.field in ("datetime", "timestamp"):
            ms = as_datetime_ms(c) if c.field == "datetime" else as_int(c) * 1000
            lo, hi = seconds_bounds(c.op, ms)
            if lo is not None:
                lo_s = lo if lo_s is None else max(lo_s, lo)
            if hi is not None:
                hi_s = hi if hi_s is None else min(hi_s, hi)
        # has(profile), has(metric): every simulated event has both.
    sel = Selection(
        metric=metric,
        profile=profile,
        lo=0 if lo_s is None else key_of_time(lo_s),
        hi=KEY_MAX if hi_s is None else key_of_time(hi_s),
    )
    return sel, conditions


def _included(
    ctx: Ctx, ordinals: list[int], include: set[str], fields: dict[str, Fields]
) -> list[object] | None:
    if not include & {"profile", "metric"}:
        return [] if include else None
    store, brand = ctx.brand.events, ctx.brand
    out: list[object] = []
    if "profile" in include:
        seen: dict[int, None] = {}
        for o in ordinals:
            seen.setdefault(int(store.profile[o]), None)
        profile_fields = narrowing("profile", fields.get("profile"))
        out.extend(orjson.Fragment(brand.rendered_profile(p, profile_fields)) for p in seen)
    if "metric" in include:
        codes: dict[int, None] = {}
        for o in ordinals:
            codes.setdefault(int(store.metric[o]), None)
        metric_fields = narrowing("metric", fields.get("metric"))
        out.extend(
            orjson.Fragment(sparse_rendered(brand.rendered_metrics[m], metric_fields))
            for m in codes
        )
    return out


def _events(ctx: Ctx, ordinals: list[int], fields: dict[str, Fields]) -> list[object]:
    """The event resources, narrowed to `fields[event]` when it leaves an attribute out."""
    rendered = ctx.brand.events.rendered
    event_fields = narrowing("event", fields.get("event"))
    return [orjson.Fragment(sparse_rendered(rendered[o], event_fields)) for o in ordinals]


async def list_events(ctx: Ctx) -> Response:
    sel, conditions = _selection(ctx)
    sort = parse_sort(ctx.query.get("sort"), EVENT_SORTS, "datetime")
    size = parse_page_size(ctx.query.get("page[size]"), MAX_PAGE_SIZE["/api/events"], 200)
    include = parse_include(ctx, EVENT_INCLUDES)
    fields = parse_fields(ctx.query, EVENT_FIELDS)
    # datetime and timestamp order alike: one cursor serves both spellings.
    descending = sort.startswith("-")
    query = query_fingerprint(ctx, conditions, "desc" if descending else "asc")
    codec = ctx.state.cursors
    after = before = None
    token = ctx.query.get("page[cursor]")
    if token:
        position, direction = codec.decode(token, query)
        if direction == PREV:
            before = position
        else:
            after = position
    store = ctx.brand.events
    page = store.page(sel, size, descending, after=after, before=before)
    next_url = prev_url = None
    if page.has_next and page.last_key is not None:
        next_url = ctx.link(codec.encode(query, page.last_key, NEXT))
    if page.has_prev and page.first_key is not None:
        prev_url = ctx.link(codec.encode(query, page.first_key, PREV))
    data = _events(ctx, page.ordinals, fields)
    ctx.state.stats.events_served += len(data)
    doc = resources.collection(
        data, ctx.self_url(), next_url, prev_url, _included(ctx, page.ordinals, include, fields)
    )
    return ctx.respond(doc)


async def get_event(ctx: Ctx) -> Response:
    include = parse_include(ctx, EVENT_INCLUDES)
    fields = parse_fields(ctx.query, EVENT_FIELDS)
    store = ctx.brand.events
    ordinal = store.by_id.get(ctx.params["id"])
    if ordinal is None:
        raise not_found("event", ctx.params["id"])
    ctx.state.stats.events_served += 1
    doc = resources.single(
        _events(ctx, [ordinal], fields)[0],
        ctx.self_url(),
        _included(ctx, [ordinal], include, fields),
    )
    return ctx.respond(doc)


# -- metrics ---------------------------------------------------------------------------------


async def list_metrics(ctx: Ctx) -> Response:
    conditions = parse_filter(ctx.query.get("filter"))
    check_allowed(conditions, METRIC_FILTERS)
    parse_include(ctx, frozenset({"flow-triggers"}))
    metrics = filter_objects(ctx.brand.metrics, conditions, METRIC_FIELDS)
    data = [orjson.Fragment(ctx.brand.rendered_metrics[m.code]) for m in metrics]
    return ctx.respond(resources.collection(data, ctx.self_url()))


async def get_metric(ctx: Ctx) -> Response:
    parse_include(ctx, frozenset({"flow-triggers"}))
    m = ctx.brand.metric_by_id.get(ctx.params["id"])
    if m is None:
        raise not_found("metric", ctx.params["id"])
    return ctx.respond(
        resources.single(orjson.Fragment(ctx.brand.rendered_metrics[m.code]), ctx.self_url())
    )


# -- creating events -------------------------------------------------------------------------


def _obj(value: Any, pointer: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_body(pointer, f"{pointer} must be an object.")
    return value


def _get(obj: dict[str, Any], key: str, pointer: str) -> Any:
    if key not in obj or obj[key] is None:
        raise bad_body(f"{pointer}/{key}", f"{pointer}/{key} is required.")
    return obj[key]


def _type(obj: dict[str, Any], expected: str, pointer: str) -> None:
    if _get(obj, "type", pointer) != expected:
        raise bad_body(f"{pointer}/type", f"{pointer}/type must be {expected!r}.")


def _optional_string(attrs: dict[str, Any], key: str, pointer: str) -> str | None:
    value = attrs.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_body(f"{pointer}/{key}", f"{pointer}/{key} must be a string.")
    return value


def _time(attrs: dict[str, Any], pointer: str, now: datetime) -> datetime:
    value = attrs.get("time")
    if value is None:
        return now
    if not isinstance(value, str):
        raise bad_body(f"{pointer}/time", "time must be an ISO 8601 date-time string.")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise bad_body(f"{pointer}/time", f"time {value!r} is not an ISO 8601 date-time.") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if not _EARLIEST <= when <= now + timedelta(days=365):
        raise bad_body(f"{pointer}/time", "time must be after 1990 and at most a year ahead.")
    return when


def _metric_name(attrs: dict[str, Any], pointer: str) -> str:
    metric = _obj(_get(attrs, "metric", pointer), f"{pointer}/metric")
    data = _obj(_get(metric, "data", f"{pointer}/metric"), f"{pointer}/metric/data")
    _type(data, "metric", f"{pointer}/metric/data")
    mattrs = _obj(
        _get(data, "attributes", f"{pointer}/metric/data"), f"{pointer}/metric/data/attributes"
    )
    name = _get(mattrs, "name", f"{pointer}/metric/data/attributes")
    if not isinstance(name, str) or not name.strip():
        raise bad_body(
            f"{pointer}/metric/data/attributes/name", "The metric name must be a non-empty string."
        )
    return name


_IDENTIFIERS: Final = ("email", "phone_number", "external_id", "anonymous_id", "_kx")


def _profile_key(profile: Any, pointer: str) -> str:
    """Who the event is about (one identifier), validated as the spec's profile object."""
    profile = _obj(profile, pointer)
    data = _obj(_get(profile, "data", pointer), f"{pointer}/data")
    _type(data, "profile", f"{pointer}/data")
    attrs = _obj(_get(data, "attributes", f"{pointer}/data"), f"{pointer}/data/attributes")
    ident = _optional_string(data, "id", f"{pointer}/data")
    for key in _IDENTIFIERS:
        _optional_string(attrs, key, f"{pointer}/data/attributes")
    if ident:
        return "id:" + ident
    for key in _IDENTIFIERS:
        if attrs.get(key):
            return f"{key}:{attrs[key]}"
    raise bad_body(
        f"{pointer}/data/attributes",
        "A profile identifier is required: id, email, phone_number, external_id or anonymous_id.",
    )


def _event_entry(
    attrs: dict[str, Any], pointer: str, profile_key: str, now: datetime
) -> tuple[str, str]:
    """(unique id, deduplication key) of one event's attributes after validating them."""
    props = _get(attrs, "properties", pointer)
    if not isinstance(props, dict):
        raise bad_body(f"{pointer}/properties", "properties must be an object.")
    if len(props) > 400:
        raise bad_body(f"{pointer}/properties", "At most 400 properties.")
    value = attrs.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise bad_body(f"{pointer}/value", "value must be a number.")
    _optional_string(attrs, "value_currency", pointer)
    name = _metric_name(attrs, pointer)
    when = _time(attrs, pointer, now)
    unique_id = _optional_string(attrs, "unique_id", pointer)
    # Without a unique_id Klaviyo deduplicates on the time to the second.
    unique = unique_id or when.replace(microsecond=0).isoformat()
    return unique, f"{profile_key}|{name}|{unique}"


async def create_event(ctx: Ctx) -> Response:
    body = _obj(await ctx.json_body(), "/")
    data = _obj(_get(body, "data", ""), "/data")
    _type(data, "event", "/data")
    attrs = _obj(_get(data, "attributes", "/data"), "/data/attributes")
    profile_key = _profile_key(
        _get(attrs, "profile", "/data/attributes"), "/data/attributes/profile"
    )
    now = datetime.fromtimestamp(ctx.state.clock(), UTC)
    unique, key = _event_entry(attrs, "/data/attributes", profile_key, now)
    ctx.state.stats.record_created(unique, key)
    return Response(status_code=202)


async def bulk_create_events(ctx: Ctx) -> Response:
    body = _obj(await ctx.json_body(), "/")
    data = _obj(_get(body, "data", ""), "/data")
    _type(data, "event-bulk-create-job", "/data")
    attrs = _obj(_get(data, "attributes", "/data"), "/data/attributes")
    outer = "/data/attributes/events-bulk-create"
    batch = _obj(_get(attrs, "events-bulk-create", "/data/attributes"), outer)
    items = _get(batch, "data", outer)
    if not isinstance(items, list):
        raise bad_body(f"{outer}/data", "Must be an array.")
    now = datetime.fromtimestamp(ctx.state.clock(), UTC)
    entries: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        pointer = f"{outer}/data/{i}"
        item = _obj(item, pointer)
        _type(item, "event-bulk-create", pointer)
        iattrs = _obj(_get(item, "attributes", pointer), f"{pointer}/attributes")
        profile_key = _profile_key(
            _get(iattrs, "profile", f"{pointer}/attributes"), f"{pointer}/attributes/profile"
        )
        events = _obj(
            _get(iattrs, "events", f"{pointer}/attributes"), f"{pointer}/attributes/events"
        )
        event_list = _get(events, "data", f"{pointer}/attributes/events")
        if not isinstance(event_list, list):
            raise bad_body(f"{pointer}/attributes/events/data", "Must be an array.")
        for j, ev in enumerate(event_list):
            epointer = f"{pointer}/attributes/events/data/{j}"
            ev = _obj(ev, epointer)
            _type(ev, "event", epointer)
            eattrs = _obj(_get(ev, "attributes", epointer), f"{epointer}/attributes")
            entries.append(_event_entry(eattrs, f"{epointer}/attributes", profile_key, now))
            if len(entries) > MAX_BULK_EVENTS:
                raise bad_body(outer, f"A bulk job holds at most {MAX_BULK_EVENTS} events.")
    if not entries:
        raise bad_body(f"{outer}/data", "At least one event is required.")
    for unique, key in entries:
        ctx.state.stats.record_created(unique, key)
    return Response(status_code=202)
