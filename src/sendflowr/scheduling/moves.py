"""Moving one scheduled person: a per-person reschedule, or a hot-path promotion.

Either way the person is decided again (a new decision with its own explanation, naming what
moved it), the minute respects the ESP's capacity (the first of the decision's minute and its
alternatives with room, else the next minute with room), and the old trigger is cancelled and
the new one written in one transaction, so the person has exactly one open trigger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from sendflowr.execution.registry import capacity_per_minute
from sendflowr.policy_facts import gather
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.triggers import Trigger
from sendflowr.timing.policy import HotPathHit
from sendflowr.timing.window import Window, WindowError, check_window

MINUTE = 60


def _room(
    runtime: Runtime,
    trigger: Trigger,
    capacity: int,
    targets: list[int],
    latency: int,
    end: int,
    allowed: Callable[[int], bool] = lambda t: True,
) -> int | None:
    """The first target minute (of `targets`, then every minute after the first) whose trigger
    minute has room and that the send policies allow, before `end`."""
    if not targets:
        return None
    first = min(targets) - latency
    booked = runtime.triggers.booked(
        trigger.tenant, trigger.esp, first - first % MINUTE, end - latency
    )

    def free(t: int) -> bool:
        m = t - latency
        return booked.get(m - m % MINUTE, 0) < capacity and allowed(t)

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
    """Decide `trigger`'s person again in `window` (as soon as possible when `asap`: the
    earliest minute the send policies allow) and replace the trigger. The policies apply as to
    any decision (a person now suppressed has the trigger cancelled, with the explanation
    saying why). None when the trigger is no longer scheduled, was suppressed, or no minute
    has room."""
    schedule = runtime.triggers.get_schedule(trigger.schedule_id)
    tenant = runtime.metadata.get_tenant(trigger.tenant)
    zone = ZoneInfo(tenant.timezone)
    latency = schedule.latency_seconds
    end = int(window.end.timestamp())
    intent = runtime.intents.find(trigger.tenant, trigger.intent_id)
    ctx = gather(
        runtime.metadata, runtime.events, runtime.identity, trigger.tenant,
        [trigger.universal_id], window.start, window.end, datetime.now(UTC), intent=intent,
        esp=trigger.esp, exclude_decisions=[trigger.decision_id],
    )  # fmt: skip
    if asap:
        at = facts.get("signal_at")
        ctx.facts.hot_path[0] = HotPathHit(
            str(facts.get("signal", policy)),
            int(datetime.fromisoformat(at).timestamp()) if isinstance(at, str) else 0,
            int(facts.get("within_seconds", 0)),
        )
    record = runtime.timing.decide(
        trigger.tenant, trigger.universal_id, True, zone, window, latency, trigger.intent_id,
        store=False, policy=ctx,
    )  # fmt: skip
    moved = {"schedule_id": trigger.schedule_id, "replaces_decision_id": trigger.decision_id}
    if record.suppression is not None:
        s = record.suppression
        runtime.events.insert_explanations(
            [
                dataclasses.replace(
                    record.explanation, details={**record.explanation.details, **moved}
                )
            ]
        )
        runtime.triggers.cancel(
            trigger.tenant, schedule_id=trigger.schedule_id, universal_id=trigger.universal_id,
            reason=f"suppressed by {s.policy}: {s.reason}",
        )  # fmt: skip
        return None
    d = record.decision
    targets = [d.target_minute_utc, *(t for t, _ in d.alternatives if t > 0)]
    applied = record.applied

    def allowed(t: int) -> bool:
        if applied is None:
            return True
        return bool(applied.allowed_at(np.zeros(1, np.int64), np.array([t], np.int64))[0])

    binding = intent.binding if intent is not None else {}
    _, capacity = capacity_per_minute(runtime, trigger.tenant, trigger.esp, binding)
    chosen = _room(runtime, trigger, capacity, targets, latency, end, allowed)
    if chosen is None:
        return None
    policies = list(dict.fromkeys([policy, *record.explanation.policies]))
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
            **moved,
            policy: {**facts, **record.explanation.details.get(policy, {})},
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
