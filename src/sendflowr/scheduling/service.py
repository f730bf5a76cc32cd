"""Scheduling an intent for an audience: batch decisions, a capacity-aware plan, durable
triggers, one explanation per person.

1. Resolve the audience to universal ids (strangers get the id they will have).
2. Score every person's candidate minutes in the window, a chunk at a time, keeping each
   person's best few whole minutes (planner.top_minutes).
3. Plan: the bound ESP accepts at most `capacity` calls a minute (its ceiling times
   settings.esp_capacity_share, minus what other campaigns already booked). When many people
   share a best minute the planner moves those who lose least to their next-best minutes.
4. Write one explanation per person (with the ESP-capacity move, when there was one) to the
   event store, then the schedule and its triggers to the metadata store in one transaction.
   The response comes after both are durable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pyarrow as pa

from sendflowr.decisions import score_chunks
from sendflowr.errors import InvalidInputError
from sendflowr.execution.registry import capacity_per_minute
from sendflowr.ids import ordered_ids
from sendflowr.intents import Intent
from sendflowr.policy_facts import gather
from sendflowr.runtime import Runtime
from sendflowr.scheduling import planner
from sendflowr.scheduling.audience import Recipient, resolve
from sendflowr.storage.events.rows import EXPLANATION_SCHEMA
from sendflowr.storage.metadata.triggers import Schedule
from sendflowr.timing.calibration import Calibration
from sendflowr.timing.engine import LEVELS, MODEL_VERSION
from sendflowr.timing.explanation import Explanation
from sendflowr.timing.policy import Applied, Suppression, apply, describe
from sendflowr.timing.window import Window, WindowError, check_window

DEFAULT_LATENCY_SECONDS = 60
CANDIDATES_PER_PERSON = 64


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    intent: Intent
    recipients: Sequence[Recipient]
    send_after: datetime | None = None
    send_before: datetime | None = None
    latency_seconds: int | None = None


def _window(runtime: Runtime, req: ScheduleRequest, now: datetime) -> tuple[int, Window, ZoneInfo]:
    tenant = runtime.metadata.get_tenant(req.intent.tenant)
    latency = req.latency_seconds
    if latency is None:
        latency = req.intent.latency_seconds
    if latency is None:
        latency = int(tenant.settings.get("esp_latency_seconds", DEFAULT_LATENCY_SECONDS))
    send_before = req.send_before
    if send_before is None:
        start = req.send_after or now + timedelta(seconds=latency)
        send_before = start + timedelta(seconds=req.intent.window_seconds)
    try:
        window = check_window(req.send_after, send_before, latency, now)
    except WindowError as exc:
        raise exc.invalid_input() from None
    return latency, window, ZoneInfo(tenant.timezone)


def schedule(
    runtime: Runtime,
    req: ScheduleRequest,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    schedule_id: str | None = None,
) -> Schedule:
    """Plan and store a campaign; InvalidInputError (422) for a bad audience or window, or an
    audience the ESP cannot take within the window."""
    intent = req.intent
    now_dt = clock()
    latency, window, zone = _window(runtime, req, now_dt)
    if not req.recipients:
        raise InvalidInputError.at(("body", "audience"), "the audience is empty")
    audience = resolve(runtime.identity, runtime.hash_key, intent.tenant, req.recipients)
    ceiling, capacity = capacity_per_minute(runtime, intent.tenant, intent.esp, intent.binding)
    now = int(now_dt.timestamp())
    n = len(audience.universal_ids)
    decision_ids = ordered_ids(n)
    refs = ["exp_" + d.replace("-", "") for d in decision_ids]
    policy = gather(
        runtime.metadata, runtime.events, runtime.identity, intent.tenant,
        audience.universal_ids, window.start, window.end, now_dt, intent=intent,
    )  # fmt: skip

    parts: list[planner.Candidates] = []
    weights: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    machine: list[np.ndarray[Any, np.dtype[np.int64]]] = []
    evidence: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    policed = _Policed()
    first = last = 0
    calibration: Calibration | None = None  # the tenant's confidence map (every chunk's)
    for chunk in score_chunks(
        runtime.timing, intent.tenant, audience.universal_ids, audience.known, zone, window, now
    ):
        size = len(chunk.scores.prob)
        calibration = chunk.scores.calibration
        first, last = int(chunk.scores.candidates[0]), int(chunk.scores.candidates[-1])
        applied = apply(
            chunk.scores, policy.config, policy.facts_slice(chunk.start, size), zone,
            decision_ids[chunk.start : chunk.start + size],
        )  # fmt: skip
        top = _allowed_top(applied, planner.top_minutes(
            applied.candidates, applied.scores.prob, CANDIDATES_PER_PERSON
        ))  # fmt: skip
        live = policed.add(chunk.start, applied, top, chunk.scores.weights, chunk.machine_opens)
        parts.append(planner.Candidates(top.minutes[live], top.values[live]))
        weights.append(chunk.scores.weights[live])
        machine.append(chunk.machine_opens[live])
        evidence.append(chunk.evidence[live])
    sid = schedule_id or "sch_" + uuid.uuid4().hex[:24]
    kept = np.flatnonzero(policed.live(n))
    if policed.suppressed:
        runtime.events.insert_explanations(
            policed.explanations(intent, sid, audience.universal_ids, decision_ids, now_dt,
                                 latency, window)
        )  # fmt: skip
    if not len(kept):
        raise InvalidInputError.at(
            ("body", "audience"),
            f"every recipient is suppressed by a policy ({policed.counts()})",
            "suppressed",
        )
    booked = runtime.triggers.booked(
        intent.tenant, intent.esp, _trigger_minute(first, latency), _trigger_minute(last, latency)
    )
    try:
        plan = planner.plan(planner.concat(parts), latency, capacity, booked, first, last)
    except planner.CapacityError as exc:
        raise InvalidInputError.at(("body", "audience"), str(exc), "capacity") from None

    kept_list = kept.tolist()
    uids = [audience.universal_ids[i] for i in kept_list]
    kept_ids = [decision_ids[i] for i in kept_list]
    kept_refs = [refs[i] for i in kept_list]
    w = np.concatenate(weights)
    target = plan.target.astype(np.int64)
    trigger = target - latency
    explanations = _explanations(
        intent, sid, uids, kept_ids, kept_refs, now_dt, plan, w,
        np.concatenate(machine), np.concatenate(evidence), latency, window, capacity,
        [policed.policies.get(i, ()) for i in kept_list],
        [policed.details.get(i, {}) for i in kept_list],
        np.asarray([i in policed.exploring for i in kept_list], np.bool_), calibration,
    )  # fmt: skip
    runtime.events.insert_explanation_table(explanations)

    summary = {
        "moved": int(plan.moved_count),
        "expected_engagement_loss": round(float(plan.total_loss), 6),
        "max_shift_seconds": int(plan.max_shift_seconds),
        "approximate": int(plan.approximate.sum()),
        "duplicates_dropped": audience.duplicates,
        "first_trigger_utc": datetime.fromtimestamp(int(trigger.min()), UTC).isoformat(),
        "last_trigger_utc": datetime.fromtimestamp(int(trigger.max()), UTC).isoformat(),
        "ceiling_per_minute": ceiling,
        "expected_engagement": round(float(plan.value.sum()), 3),
        "suppressed": policed.counts(),
        "policies": policed.moved_counts(),
    }
    record = Schedule(
        id=sid,
        tenant=intent.tenant,
        intent_id=intent.intent_id,
        esp=intent.esp,
        status="scheduled",
        window_start=window.start,
        window_end=window.end,
        latency_seconds=latency,
        audience=n,
        capacity_per_minute=capacity,
        summary=summary,
        created_at=now_dt,
    )
    trig_dt = _datetimes(trigger)
    target_dt = _datetimes(target)
    recipients = audience.recipients
    runtime.triggers.create_schedule(
        record,
        (
            (kept_ids[j], uids[j], recipients[i].type, recipients[i].value, trig_dt[j],
             target_dt[j], kept_refs[j])
            for j, i in enumerate(kept_list)
        ),
    )  # fmt: skip
    return record


def _allowed_top(applied: Applied, top: planner.Candidates) -> planner.Candidates:
    """Each row's best minutes without the refused ones (valued below 0, so last), and a
    forced minute (hot path, exploration) as the row's only candidate."""
    minutes = top.minutes.copy()
    values = top.values.copy()
    refused = ~(values >= 0)
    minutes[refused] = -1
    values[refused] = -np.inf
    for r, (_, t) in applied.forced.items():
        minutes[r] = -1
        values[r] = -np.inf
        minutes[r, 0] = t
        values[r, 0] = applied.value_at(r, t)
    return planner.Candidates(minutes, values)


@dataclass(slots=True)
class _Policed:
    """What the policies did to a campaign's audience (audience indices), chunk by chunk."""

    suppressed: dict[int, tuple[Suppression, int, float, Any]] = field(default_factory=dict)
    policies: dict[int, tuple[str, ...]] = field(default_factory=dict)
    details: dict[int, dict[str, Any]] = field(default_factory=dict)
    exploring: set[int] = field(default_factory=set)

    def add(
        self,
        start: int,
        applied: Applied,
        top: planner.Candidates,
        weights: np.ndarray[Any, np.dtype[np.float64]],
        machine: np.ndarray[Any, np.dtype[np.int64]],
    ) -> np.ndarray[Any, np.dtype[np.bool_]]:
        live = np.asarray([s is None for s in applied.suppressed], np.bool_)
        policies, details = describe(applied, top.minutes[:, 0])
        for r in np.flatnonzero(~live).tolist():
            s = applied.suppressed[r]
            assert s is not None
            best = int(applied.preferred[r])
            self.suppressed[start + r] = (
                s, int(applied.candidates[best]), float(applied.raw[r, best]),
                (weights[r], int(machine[r]), details[r]),
            )  # fmt: skip
        for r in np.flatnonzero(live).tolist():
            if policies[r]:
                self.policies[start + r] = policies[r]
                self.details[start + r] = details[r]
        self.exploring.update(start + int(r) for r in np.flatnonzero(applied.exploration))
        return live

    def live(self, n: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
        out = np.ones(n, np.bool_)
        out[list(self.suppressed)] = False
        return out

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s, *_ in self.suppressed.values():
            out[s.policy] = out.get(s.policy, 0) + 1
        return dict(sorted(out.items()))

    def moved_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for names in self.policies.values():
            for name in names:
                out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items()))

    def explanations(
        self,
        intent: Intent,
        schedule_id: str,
        uids: Sequence[str],
        decision_ids: Sequence[str],
        now: datetime,
        latency: int,
        window: Window,
    ) -> list[Explanation]:
        """An explanation row for each suppressed person (no trigger is written for them);
        the time columns hold the minute they would have had."""
        out = []
        win = [window.start.isoformat(), window.end.isoformat()]
        for i, (s, minute, value, (w, machine, details)) in sorted(self.suppressed.items()):
            out.append(
                Explanation(
                    tenant=intent.tenant,
                    explanation_ref="exp_" + decision_ids[i].replace("-", ""),
                    decision_id=decision_ids[i],
                    universal_id=uids[i],
                    intent_id=intent.intent_id,
                    created_at=now,
                    model_version=MODEL_VERSION,
                    target_minute_utc=datetime.fromtimestamp(minute, UTC),
                    trigger_timestamp_utc=datetime.fromtimestamp(minute - latency, UTC),
                    confidence_score=min(1.0, max(0.0, value)),
                    fallback_level=LEVELS[int(np.argmax(w))],
                    weight_personal=float(w[0]),
                    weight_audience=float(w[1]),
                    weight_global=float(w[2]),
                    machine_opens_excluded=machine,
                    policies=tuple(s.policy.split("+")),
                    evidence={},
                    details={"schedule_id": schedule_id, "window": win, **details},
                )
            )
        return out


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def _trigger_minute(target: int, latency: int) -> int:
    t = target - latency
    return t - t % 60


def _datetimes(seconds: np.ndarray[Any, np.dtype[np.int64]]) -> list[datetime]:
    cache: dict[int, datetime] = {}
    out = []
    for s in seconds.tolist():
        d = cache.get(s)
        if d is None:
            d = cache[s] = datetime.fromtimestamp(s, UTC)
        out.append(d)
    return out


def _explanations(
    intent: Intent,
    schedule_id: str,
    uids: Sequence[str],
    decision_ids: Sequence[str],
    refs: Sequence[str],
    now: datetime,
    plan: planner.Plan,
    weights: np.ndarray[Any, np.dtype[np.float64]],
    machine: np.ndarray[Any, np.dtype[np.int64]],
    evidence: np.ndarray[Any, np.dtype[np.float64]],
    latency: int,
    window: Window,
    capacity: int,
    policies: Sequence[tuple[str, ...]],
    policy_details: Sequence[dict[str, Any]],
    exploring: np.ndarray[Any, np.dtype[np.bool_]],
    calibration: Calibration | None = None,
) -> pa.Table:
    """One explanation row per person, built in columns (a million rows in seconds). The
    stated confidence is the planned minute's value through the tenant's map, if it has one."""
    n = len(uids)
    dumps = orjson.dumps
    win = [window.start.isoformat(), window.end.isoformat()]
    moved = plan.moved.tolist()
    preferred = plan.preferred.tolist()
    target = plan.target.tolist()
    value = plan.value.tolist()
    pref_value = plan.preferred_value.tolist()
    details = []
    described = None if calibration is None else calibration.describe()
    for i in range(n):
        d: dict[str, Any] = {
            "schedule_id": schedule_id,
            "latency_estimate_seconds": latency,
            "window": win,
        }
        if moved[i]:
            d["esp_capacity"] = {
                "preferred_minute_utc": datetime.fromtimestamp(preferred[i], UTC).isoformat(),
                "moved_seconds": target[i] - preferred[i],
                "expected_engagement_preferred": round(pref_value[i], 6),
                "expected_engagement_assigned": round(value[i], 6),
                "capacity_per_minute": capacity,
                "esp": intent.esp,
            }
        if policies[i]:
            for name, info in policy_details[i].items():
                if isinstance(info, dict) and "chosen_minute_utc" in info:
                    info = {**info, "chosen_minute_utc": _iso(target[i])}
                d[name] = info
        if described is not None:
            d["calibration"] = described
        details.append(dumps(d).decode())
    known_ev = evidence.tolist()
    ev = [dumps({"evidence": round(e, 4), "known_person": e > 0}).decode() for e in known_ev]
    levels = np.asarray(LEVELS, dtype=object)[np.argmax(weights, axis=1)]
    stated = np.clip(plan.value, 0.0, 1.0).astype(np.float64)
    created = np.full(n, int(now.timestamp() * 1000), np.int64)
    empty: list[str] = []
    capacity_policy = ["esp_capacity"]
    cols: dict[str, Any] = {
        "tenant": pa.array([intent.tenant] * n, pa.string()),
        "explanation_ref": refs,
        "decision_id": decision_ids,
        "universal_id": uids,
        "intent_id": pa.array([intent.intent_id] * n, pa.string()),
        "created_at": pa.array(created, pa.timestamp("ms", tz="UTC")),
        "model_version": pa.array([MODEL_VERSION] * n, pa.string()),
        "target_minute_utc": pa.array(plan.target * 1000, pa.timestamp("ms", tz="UTC")),
        "trigger_timestamp_utc": pa.array(
            (plan.target - latency) * 1000, pa.timestamp("ms", tz="UTC")
        ),
        "confidence_score": (stated if calibration is None else calibration.apply(stated)).astype(
            np.float32
        ),
        "fallback_level": levels.tolist(),
        "weight_personal": weights[:, 0].astype(np.float32),
        "weight_audience": weights[:, 1].astype(np.float32),
        "weight_global": weights[:, 2].astype(np.float32),
        "evidence": ev,
        "machine_opens_excluded": machine.astype(np.uint32),
        "policies": [
            [*p, *capacity_policy] if m else (list(p) if p else empty)
            for p, m in zip(policies, moved, strict=True)
        ],
        "exploration": exploring,
        "details": details,
        "model_confidence": stated.astype(np.float32),
    }
    return pa.Table.from_pydict(cols, schema=EXPLANATION_SCHEMA)
