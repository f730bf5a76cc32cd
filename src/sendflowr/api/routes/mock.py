"""POST /api/mock/events/generate: simulated events through the real pipeline."""

from __future__ import annotations

import time

import msgspec
from fastapi import APIRouter, Query

from sendflowr.api.auth import PrincipalDep
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.schemas import TENANT_PATTERN, GenerateOut
from sendflowr.archive import keep_accepted
from sendflowr.demo import generate_events, ingest

router = APIRouter(prefix="/api/mock", tags=["mock"])


@router.post("/events/generate", response_model=GenerateOut)
def generate(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    count: int = Query(100, ge=1, le=1_000_000, description="how many events to generate"),
    tenant: str | None = Query(
        None, pattern=TENANT_PATTERN, description="default: the demo tenant"
    ),
    seed: int = Query(1, ge=0, le=2**31 - 1),
) -> GenerateOut:
    """Generate `count` events from the ground-truth simulator and publish them on the bus.

    Answers after they are durable. The same seed gives the same events, so repeating a call
    stores nothing new (events are deduplicated by their deterministic ids)."""
    tenant = tenant or runtime.settings.demo_tenant
    principal.check_tenant(tenant)
    runtime.metadata.get_tenant(tenant)
    started = time.perf_counter()
    events, profiles = generate_events(runtime, tenant, count, seed)
    encode = msgspec.json.Encoder().encode
    keep_accepted(
        runtime,
        tenant=tenant,
        esp=[e.esp for e in events],
        source="mock",
        kind="canonical",
        payloads=[encode(e).decode() for e in events],
        event_ids=[e.event_id for e in events],
    )
    result = ingest(runtime, events, "mock")
    return GenerateOut(
        tenant=tenant,
        generated=len(events),
        stored=result.stored,
        rejected=len(result.rejected),
        profiles=profiles,
        seconds=round(time.perf_counter() - started, 3),
    )
