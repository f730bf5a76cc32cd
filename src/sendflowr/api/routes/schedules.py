"""Scheduling an intent for an audience, and operating the campaign afterwards: look, list its
triggers, cancel and reschedule (the whole campaign or one person)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from sendflowr.api.auth import PrincipalDep
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.intent_schemas import (
    AudienceIn,
    CancelIn,
    CancelOut,
    RescheduleIn,
    ScheduleIn,
    ScheduleOut,
    TriggerOut,
)
from sendflowr.api.schedule_views import (
    BucketName,
    ScheduleTimelineOut,
    bucket_seconds,
    timeline_out,
)
from sendflowr.connectors.klaviyo.client import KlaviyoError, KlaviyoNotFound
from sendflowr.connectors.klaviyo.constants import ESP as KLAVIYO
from sendflowr.connectors.klaviyo.oauth import KlaviyoUnavailableError
from sendflowr.errors import InvalidInputError
from sendflowr.runtime import Runtime
from sendflowr.scheduling.audience import Recipient
from sendflowr.scheduling.moves import reschedule_person
from sendflowr.scheduling.service import ScheduleRequest, schedule
from sendflowr.storage.metadata.schedule_timeline import counts_by_schedule, timeline
from sendflowr.storage.metadata.triggers import Schedule, Trigger

router = APIRouter(tags=["schedules"])

MAX_LIST_AUDIENCE = 2_000_000


def _one_source(a: AudienceIn) -> None:
    given = [
        n
        for n, v in (
            ("recipients", a.recipients),
            ("klaviyo_list_id", a.klaviyo_list_id),
            ("klaviyo_segment_id", a.klaviyo_segment_id),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise InvalidInputError.at(
            ("body", "audience"),
            "give exactly one of recipients, klaviyo_list_id, klaviyo_segment_id"
            + (f" (got {', '.join(given)})" if given else ""),
        )


async def _klaviyo_audience(runtime: Runtime, tenant: str, a: AudienceIn) -> list[Recipient]:
    """The profiles of a Klaviyo list or segment, addressed by email when they have one."""
    from sendflowr.connectors.klaviyo.factory import open_client

    if runtime.accounts.find(tenant, KLAVIYO) is None:
        raise InvalidInputError.at(
            ("body", "audience"), f"tenant {tenant!r} has not connected Klaviyo"
        )
    field = "klaviyo_list_id" if a.klaviyo_list_id else "klaviyo_segment_id"
    out: list[Recipient] = []
    async with open_client(runtime, tenant) as client:
        pages = (
            client.iter_list_profiles(a.klaviyo_list_id)
            if a.klaviyo_list_id
            else client.iter_segment_profiles(str(a.klaviyo_segment_id))
        )
        try:
            async for profile in pages:
                attrs = profile.get("attributes") or {}
                email = attrs.get("email")
                if isinstance(email, str) and email:
                    out.append(Recipient("email", email))
                elif isinstance(profile.get("id"), str):
                    out.append(Recipient("klaviyo_id", profile["id"]))
                if len(out) > MAX_LIST_AUDIENCE:
                    raise InvalidInputError.at(
                        ("body", "audience", field), f"more than {MAX_LIST_AUDIENCE} profiles"
                    )
        except KlaviyoNotFound:
            raise InvalidInputError.at(
                ("body", "audience", field), "Klaviyo has no such list or segment"
            ) from None
        except KlaviyoError as exc:
            raise KlaviyoUnavailableError(
                f"could not read the audience from Klaviyo: {exc}", field=field
            ) from None
    return out


def schedule_out(
    s: Schedule,
    runtime: Runtime,
    *,
    lateness: bool = True,
    counts: dict[str, int] | None = None,
) -> ScheduleOut:
    """The campaign with its trigger counts (read here unless given); `lateness` reads every
    sent trigger, so lists leave it out."""
    return ScheduleOut(
        schedule_id=s.id,
        tenant=s.tenant,
        intent_id=s.intent_id,
        esp=s.esp,
        status=s.status,
        window=[s.window_start, s.window_end],
        latency_estimate_seconds=s.latency_seconds,
        audience=s.audience,
        capacity_per_minute=s.capacity_per_minute,
        summary=s.summary,
        created_at=s.created_at,
        triggers=runtime.triggers.counts(s.id) if counts is None else counts,
        lateness=runtime.triggers.lateness(s.id) if lateness else {},
    )


def trigger_out(t: Trigger) -> TriggerOut:
    return TriggerOut(
        decision_id=t.decision_id,
        schedule_id=t.schedule_id,
        intent_id=t.intent_id,
        universal_id=t.universal_id,
        recipient_type=t.recipient_type,
        trigger_at=t.trigger_at,
        target_at=t.target_at,
        status=t.status,
        attempts=t.attempts,
        sent_at=t.sent_at,
        sent_via=t.sent_via,
        error=t.error,
        explanation_ref=t.explanation_ref,
        promoted=t.promoted,
    )


@router.post("/api/intents/{intent_id}/schedule", response_model=ScheduleOut, status_code=201)
async def schedule_intent(
    intent_id: str, body: ScheduleIn, runtime: RuntimeDep, principal: PrincipalDep
) -> ScheduleOut:
    """Decide for every recipient, plan within the bound ESP's capacity per minute, and store
    the triggers (answered once they are durable). A Klaviyo list or segment is read through
    the API."""
    principal.check_tenant(body.tenant)
    intent = runtime.intents.get(body.tenant, intent_id)
    _one_source(body.audience)
    if body.audience.recipients is not None:
        recipients = [Recipient(r.type, r.value) for r in body.audience.recipients]
    else:
        recipients = await _klaviyo_audience(runtime, body.tenant, body.audience)
    req = ScheduleRequest(
        intent, recipients, body.send_after, body.send_before, body.latency_estimate_seconds
    )
    record = await run_in_threadpool(schedule, runtime, req)
    return schedule_out(record, runtime)


@router.get("/api/schedules", response_model=list[ScheduleOut])
def list_schedules(
    runtime: RuntimeDep,
    tenant: Annotated[str, Query(min_length=1, max_length=63)],
    intent_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ScheduleOut]:
    runtime.metadata.get_tenant(tenant)
    found = runtime.triggers.list_schedules(tenant, intent_id, limit)
    counts = counts_by_schedule(runtime.metadata, [s.id for s in found])
    return [schedule_out(s, runtime, lateness=False, counts=counts[s.id]) for s in found]


@router.get("/api/schedules/{schedule_id}", response_model=ScheduleOut)
def get_schedule(
    schedule_id: str,
    runtime: RuntimeDep,
    tenant: Annotated[str, Query(min_length=1, max_length=63)],
) -> ScheduleOut:
    """The campaign, its planner summary, its triggers per status and how late sends were."""
    return schedule_out(runtime.triggers.get_schedule(schedule_id, tenant), runtime)


@router.get("/api/schedules/{schedule_id}/triggers", response_model=list[TriggerOut])
def list_triggers(
    schedule_id: str,
    runtime: RuntimeDep,
    tenant: Annotated[str, Query(min_length=1, max_length=63)],
    status: Annotated[
        str | None, Query(pattern="^(scheduled|sending|sent|failed|cancelled)$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[TriggerOut]:
    runtime.triggers.get_schedule(schedule_id, tenant)
    return [trigger_out(t) for t in runtime.triggers.page(schedule_id, status, limit, offset)]


@router.get("/api/schedules/{schedule_id}/timeline", response_model=ScheduleTimelineOut)
def schedule_timeline(
    schedule_id: str,
    runtime: RuntimeDep,
    tenant: Annotated[str, Query(min_length=1, max_length=63)],
    bucket: BucketName = "auto",
    late_after_seconds: Annotated[int, Query(ge=0, le=86_400)] = 60,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ScheduleTimelineOut:
    """The campaign's triggers per time bucket and status against the capacity the planner
    booked (and what the tenant's other campaigns hold on the same ESP), its counts per
    status, and its late triggers (due more than `late_after_seconds` ago and unsent, or
    sent that much after their trigger time) and failed ones, with the reasons in words."""
    s = runtime.triggers.get_schedule(schedule_id, tenant)
    seconds = bucket_seconds(s, bucket)
    now = datetime.now(UTC)
    tl = timeline(runtime.metadata, s, seconds, now, late_after_seconds, limit)
    return timeline_out(s, tl, bucket, now, late_after_seconds, trigger_out)


@router.post("/api/schedules/{schedule_id}/cancel", response_model=CancelOut)
def cancel(
    schedule_id: str, body: CancelIn, runtime: RuntimeDep, principal: PrincipalDep
) -> CancelOut:
    """Cancel the campaign's triggers not yet sent (or only one person's). A trigger already
    being sent finishes."""
    principal.check_tenant(body.tenant)
    runtime.triggers.get_schedule(schedule_id, body.tenant)
    n = runtime.triggers.cancel(
        body.tenant, schedule_id=schedule_id, universal_id=body.universal_id
    )
    if body.universal_id is None:
        runtime.triggers.set_schedule_status(schedule_id, "cancelled")
    return CancelOut(cancelled=n)


@router.post("/api/schedules/{schedule_id}/reschedule", response_model=ScheduleOut)
async def reschedule(
    schedule_id: str, body: RescheduleIn, runtime: RuntimeDep, principal: PrincipalDep
) -> ScheduleOut:
    """Plan again in a new window. For one person (`universal_id`): re-decided in place. For
    the campaign: its unsent triggers are cancelled and their people scheduled as a new
    campaign (returned), planned again within the ESP's capacity."""
    principal.check_tenant(body.tenant)
    old = runtime.triggers.get_schedule(schedule_id, body.tenant)
    if body.universal_id is not None:
        await run_in_threadpool(
            reschedule_person, runtime, body.tenant, schedule_id, body.universal_id,
            body.send_after, body.send_before,
        )  # fmt: skip
        return schedule_out(old, runtime)
    intent = runtime.intents.get(body.tenant, old.intent_id)
    pending = runtime.triggers.take_scheduled(schedule_id, "rescheduled")
    if not pending:
        raise InvalidInputError.at(
            ("path", "schedule_id"), "the campaign has no trigger left to reschedule"
        )
    req = ScheduleRequest(
        intent,
        [Recipient(t.recipient_type, t.recipient_value) for t in pending],
        body.send_after,
        body.send_before,
        old.latency_seconds,
    )
    try:
        record = await run_in_threadpool(schedule, runtime, req)
    except BaseException:
        runtime.triggers.restore([t.decision_id for t in pending])
        raise
    runtime.triggers.set_schedule_status(schedule_id, "rescheduled")
    return schedule_out(record, runtime)
