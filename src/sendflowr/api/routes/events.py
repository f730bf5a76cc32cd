"""Canonical events: ingest a batch, count what is stored."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Path

from sendflowr.api.auth import PrincipalDep
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.schemas import (
    TENANT_PATTERN,
    EventCountsOut,
    EventsIn,
    IngestOut,
    invisible_characters,
)
from sendflowr.archive import keep_accepted
from sendflowr.errors import InvalidInputError
from sendflowr.events import parse_events
from sendflowr.identity.identifiers import from_event

router = APIRouter(prefix="/api/events", tags=["events"])


@router.post("", response_model=IngestOut)
def ingest_events(body: EventsIn, runtime: RuntimeDep, principal: PrincipalDep) -> IngestOut:
    """Validate every event first: one bad event rejects the request and nothing is written.

    Answers only after the events are durable (stored, or acknowledged by the bus)."""
    for raw in body.events:  # before any validation message can echo another tenant
        tenant = raw.get("tenant")
        if isinstance(tenant, str):
            principal.check_tenant(tenant, "tenant")
    parsed = parse_events(body.events)
    for event in parsed.events:
        principal.check_tenant(event.tenant, "tenant")
    errors = [
        {"loc": ["body", "events", index, *err.loc], "msg": err.msg, "type": "value_error"}
        for index, exc in parsed.rejected
        for err in exc.errors
    ]
    bad = {index for index, _ in parsed.rejected}
    good_index = [i for i in range(len(body.events)) if i not in bad]
    errors += [
        {
            "loc": ["body", "events", good_index[r.index], *e.loc],
            "msg": e.msg,
            "type": "value_error",
        }
        for r in runtime.pipeline.future_rejections(parsed.events)
        for e in r.errors
    ]
    # Identity resolution refuses an event whose every identifier is a placeholder: say so
    # here, before anything is archived or stored.
    blocklist = runtime.identity.blocklist
    errors += [
        {
            "loc": ["body", "events", good_index[i], "identifiers"],
            "msg": "every identifier is empty or a blocked placeholder (null, anonymous, ...)",
            "type": "value_error",
        }
        for i, e in enumerate(parsed.events)
        if not from_event(e.esp, e.identifiers, blocklist).usable
    ]
    errors += [
        {"loc": ["body", "events", good_index[i], *loc], "msg": msg, "type": "value_error"}
        for i, e in enumerate(parsed.events)
        for loc, msg in invisible_characters(e)
    ]
    for tenant in sorted({e.tenant for e in parsed.events}):
        if runtime.metadata.find_tenant(tenant) is None:
            errors.append(
                {
                    "loc": ["body", "events", "tenant"],
                    "msg": f"no tenant {tenant!r}",
                    "type": "value_error",
                }
            )
    if errors:
        raise InvalidInputError(errors)
    keep_accepted(
        runtime,
        tenant=[e.tenant for e in parsed.events],
        esp=[e.esp for e in parsed.events],
        source="api",
        kind="canonical",
        payloads=[orjson.dumps(p, default=str).decode() for p in body.events],
        event_ids=[e.event_id for e in parsed.events],
    )
    result = runtime.bus.publish(parsed.events, source="api")
    if result.rejected:
        raise InvalidInputError(
            [
                {"loc": ["body", "events", r.index, *e.loc], "msg": e.msg, "type": "value_error"}
                for r in result.rejected
                for e in r.errors
            ]
        )
    return IngestOut(
        received=result.received, stored=result.stored, profiles_updated=result.profiles_updated
    )


@router.get("/{tenant}/counts", response_model=EventCountsOut)
def event_counts(runtime: RuntimeDep, tenant: str = Path(pattern=TENANT_PATTERN)) -> EventCountsOut:
    """Stored events by type (each event once, however often it was delivered)."""
    runtime.metadata.get_tenant(tenant)
    by_type = runtime.events.count_by_type(tenant)
    return EventCountsOut(tenant=tenant, total=sum(by_type.values()), by_type=by_type)
