"""Moving one scheduled person: a per-person reschedule, or a hot-path promotion.

Either way the person is decided again (a new decision with its own explanation, naming what
moved it), the minute respects the ESP's capacity (the first of the decision's minute and its
alternatives with room, else the next minute with room), and the old trigger is cancelled and
the new one written in one transaction, so the person has exactly one open trigger.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sendflowr.execution.registry import capacity_per_minute
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.triggers import Trigger
from sendflowr.timing.window import Window, WindowError, check_window

MINUTE = 60


def _room(
    runtime: Runtime, trigger: Trigger, capacity: int, targets: list[int], latency: int, end: int
) -> int | None:
    """The first target minute (of `targets`, then every minute after the first) whose trigger
    minute has room, before `end`."""
    if not targets:
        return None
    first = min(targets) - latency
    booked = runtime.triggers.booked(
        trigger.tenant, trigger.esp, first - first % MINUTE, end - latency
    )

    def free(t: int) -> bool:
        m = t - latency
        return booked.get(m - m % MINUTE, 0) < capacity

    for t in targets:
        if t < end and free(t):
            return t
    t = targets[0]
    while t < end:
        if free(t):
            return t
        t += MINUTE
    return None


def redecide(
    runtime: Runtime,
    trigger: Trigger,
    window: Window,
    *,
    policy: str,
    asap: bool,
    facts: dict[str, Any],
) -> Trigger | None:
    """Decide `trigger`'s person again in `window` (as soon as possible when `asap`) and
    replace the trigger. None when the trigger is no longer scheduled or no minute has room."""
    schedule = runtime.triggers.get_schedule(trigger.schedule_id)
    tenant = runtime.metadata.get_tenant(trigger.tenant)
    zone = ZoneInfo(tenant.timezone)
    latency = schedule.latency_seconds
    end = int(window.end.timestamp())
    if asap:
        window = Window(window.start, min(window.end, window.start + timedelta(minutes=1)))
    record = runtime.timing.decide(
        trigger.tenant, trigger.universal_id, True, zone, window, latency, trigger.intent_id,
        store=False,
    )  # fmt: skip
    d = record.decision
    targets = [d.target_minute_utc, *(t for t, _ in d.alternatives if t > 0)]
    if asap:
        end = max(end, targets[0] + MINUTE)
    intent = runtime.intents.find(trigger.tenant, trigger.intent_id)
    binding = intent.binding if intent is not None else {}
    _, capacity = capacity_per_minute(runtime, trigger.tenant, trigger.esp, binding)
    chosen = _room(runtime, trigger, capacity, targets, latency, end)
    if chosen is None:
        return None
    policies = [policy]
    if chosen != d.target_minute_utc:
        policies.append("esp_capacity")
    target_at = datetime.fromtimestamp(chosen, UTC)
    trigger_at = datetime.fromtimestamp(chosen - latency, UTC)
    explanation = dataclasses.replace(
        record.explanation,
        target_minute_utc=target_at,
        trigger_timestamp_utc=trigger_at,
        policies=tuple(policies),
        details={
            **record.explanation.details,
            "schedule_id": trigger.schedule_id,
            "replaces_decision_id": trigger.decision_id,
            policy: facts,
        },
    )
    runtime.events.insert_explanations([explanation])
    return runtime.triggers.replace(
        trigger.decision_id,
        (record.decision_id, trigger.universal_id, trigger.recipient_type,
         trigger.recipient_value, trigger_at, target_at, explanation.explanation_ref),
        promoted=asap,
        reason=f"replaced by {record.decision_id} ({policy})",
    )  # fmt: skip


def reschedule_person(
    runtime: Runtime,
    tenant: str,
    schedule_id: str,
    universal_id: str,
    send_after: datetime | None,
    send_before: datetime | None,
) -> list[Trigger]:
    """Re-decide one person's scheduled triggers of a campaign in a new window."""
    schedule = runtime.triggers.get_schedule(schedule_id, tenant)
    try:
        window = check_window(
            send_after or schedule.window_start,
            send_before or schedule.window_end,
            schedule.latency_seconds,
            datetime.now(UTC),
        )
    except WindowError as exc:
        raise exc.invalid_input() from None
    moved = []
    for t in runtime.triggers.open_for(tenant, [universal_id]):
        if t.schedule_id != schedule_id:
            continue
        new = redecide(
            runtime, t, window, policy="rescheduled", asap=False,
            facts={"window": [window.start.isoformat(), window.end.isoformat()]},
        )  # fmt: skip
        if new is not None:
            moved.append(new)
    return moved
