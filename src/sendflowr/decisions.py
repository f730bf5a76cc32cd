"""Timing decisions for one person: history from the store, the engine, an explanation row.

The engine (timing/engine.py) is pure; this module feeds it: the person's engagement events
(read under their alias set) become an activity profile in the brand's time zone, the tenant's
audience profile is rebuilt from the store at most every few minutes, and every decision
writes its explanation to `timing_explanations` before it is returned.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np

from sendflowr.identity.identifiers import Identifier
from sendflowr.identity.store import IdentityGraphStore
from sendflowr.storage.events.base import EventStore, StoredEvent
from sendflowr.timing.activity import ActivityParams, ActivityProfile, ActivityTable, global_prior
from sendflowr.timing.engine import (
    BatchDecisions,
    BatchScores,
    Decision,
    EngineParams,
    choose,
    decide,
    score_batch,
)
from sendflowr.timing.explanation import Explanation
from sendflowr.timing.features import ENGAGEMENT_WEIGHTS
from sendflowr.timing.window import Window

AUDIENCE_TTL_S: Final = 300.0
AUDIENCE_DAYS: Final = 180  # history that shapes the audience curve
HISTORY_LIMIT: Final = 20_000  # events read for one person


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    decision: Decision
    decision_id: str
    explanation: Explanation
    latency_seconds: int
    window: Window


def _offsets(utc_s: Sequence[int], zone: ZoneInfo) -> np.ndarray[Any, np.dtype[np.int64]]:
    out = np.empty(len(utc_s), np.int64)
    for i, t in enumerate(utc_s):
        off = datetime.fromtimestamp(t, zone).utcoffset()
        out[i] = int(off.total_seconds()) if off is not None else 0
    return out


@dataclass(slots=True)
class _Observed:
    utc: list[int] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)
    machine: list[bool] = field(default_factory=list)


def _engagements(events: Sequence[StoredEvent]) -> _Observed:
    out = _Observed()
    for e in events:
        w = ENGAGEMENT_WEIGHTS.get(e.event_type, 0.0)
        if w <= 0 and not e.is_machine_open:
            continue
        out.utc.append(int(e.occurred_at.timestamp()))
        out.weight.append(w)
        out.machine.append(e.is_machine_open)
    return out


def profile_from_events(
    events: Sequence[StoredEvent], zone: ZoneInfo, now: int, params: ActivityParams
) -> tuple[
    ActivityTable,
    np.ndarray[Any, np.dtype[np.float64]],
    np.ndarray[Any, np.dtype[np.float64]],
    _Observed,
]:
    """One person's activity table (one row) from their stored events."""
    seen = _engagements(events)
    table = ActivityTable.empty(1)
    utc = np.asarray(seen.utc, np.int64)
    aged_w, aged_d = table.observe(
        np.zeros(len(utc), np.int64),
        utc,
        _offsets(seen.utc, zone),
        np.asarray(seen.weight, np.float64),
        now,
        params,
        machine=np.asarray(seen.machine, np.bool_),
    )
    return table, aged_w, aged_d, seen


class TimingService:
    def __init__(
        self,
        events: EventStore,
        identity: IdentityGraphStore,
        params: EngineParams | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.events = events
        self.identity = identity
        self.params = params or EngineParams()
        self.clock = clock
        self._prior = global_prior()
        self._audiences: dict[str, tuple[float, ActivityTable]] = {}
        self._lock = threading.Lock()

    def audience(self, tenant: str, zone: ZoneInfo, now: int) -> ActivityTable:
        """The tenant's aggregate curve: every person's recent history, read in one query and
        folded through the same per-person update, then summed. Cached for a few minutes."""
        with self._lock:
            cached = self._audiences.get(tenant)
            if cached is not None and time.monotonic() - cached[0] < AUDIENCE_TTL_S:
                return cached[1]
        since = datetime.fromtimestamp(now - AUDIENCE_DAYS * 86_400, UTC)
        uids, utc, types, machine = self.events.engagement_history(
            tenant, sorted(ENGAGEMENT_WEIGHTS), since
        )
        audience = ActivityTable.empty(1)
        if uids:
            codes, rows = np.unique(np.asarray(uids), return_inverse=True)
            people = ActivityTable.empty(len(codes))
            utc_a = np.asarray(utc, np.int64)
            offsets = _offsets(utc, zone)
            weights = np.asarray([ENGAGEMENT_WEIGHTS[t] for t in types], np.float64)
            aged_w, aged_d = people.observe(
                rows.astype(np.int64),
                utc_a,
                offsets,
                weights,
                now,
                self.params.activity,
                machine=np.asarray(machine, np.bool_),
            )
            audience.absorb(utc_a, offsets, aged_w, aged_d, now, self.params.activity.half_life_s)
        with self._lock:
            self._audiences[tenant] = (time.monotonic(), audience)
        return audience

    def decide(
        self,
        tenant: str,
        universal_id: str,
        known: bool,
        zone: ZoneInfo,
        window: Window,
        latency_seconds: int,
        intent_id: str = "",
        channel: str = "email",
        *,
        store: bool = True,
    ) -> DecisionRecord:
        """One person's decision; its explanation is written unless `store` is False (the
        caller adds what moved the send, then writes it)."""
        now_dt = self.clock()
        now = int(now_dt.timestamp())
        profile: ActivityProfile | None = None
        machine_opens = 0
        engagements = 0
        last_engagement: str | None = None
        if known:
            stored = self.events.profile_events(
                tenant, self.identity.aliases(tenant, universal_id), limit=HISTORY_LIMIT
            )
            table, _, _, seen = profile_from_events(stored, zone, now, self.params.activity)
            machine_opens = sum(seen.machine)
            engagements = len(seen.utc) - machine_opens
            if engagements:
                profile = table.row(0)
                last_engagement = datetime.fromtimestamp(
                    max(t for t, m in zip(seen.utc, seen.machine, strict=True) if not m), UTC
                ).isoformat()
        decision = decide(
            profile,
            self.audience(tenant, zone, now),
            self._prior,
            int(window.start.timestamp()),
            int(window.end.timestamp()),
            zone,
            latency_seconds,
            now,
            self.params,
        )
        decision_id = str(uuid.uuid4())
        explanation = _explanation(
            tenant,
            decision_id,
            universal_id,
            intent_id,
            now_dt,
            decision,
            machine_opens,
            {
                "engagements": engagements,
                "last_engagement": last_engagement,
                "known_person": known,
                "zone": zone.key,
            },
            {
                "channel": channel,
                "latency_estimate_seconds": latency_seconds,
                "window": [window.start.isoformat(), window.end.isoformat()],
                "alternatives": [[t, s] for t, s in decision.alternatives],
            },
        )
        if store:
            self.events.insert_explanations([explanation])
        return DecisionRecord(decision, decision_id, explanation, latency_seconds, window)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    universal_ids: list[str]
    decisions: BatchDecisions
    decision_ids: list[str]
    explanation_refs: list[str]


def decide_many(
    service: TimingService,
    tenant: str,
    universal_ids: Sequence[str],
    known: Sequence[bool],
    zone: ZoneInfo,
    window: Window,
    latency_seconds: int,
    intent_id: str = "",
) -> BatchRecord:
    """Decisions for many people over one window: their histories in one query, the engine's
    batch form, and one explanation row each."""
    now_dt = service.clock()
    now = int(now_dt.timestamp())
    scored = next(
        score_chunks(
            service, tenant, universal_ids, known, zone, window, now, chunk=len(universal_ids)
        )
    )
    batch = choose(scored.scores, latency_seconds, service.params)
    decision_ids = [str(uuid.uuid4()) for _ in universal_ids]
    explanations = [
        _explanation(
            tenant,
            decision_ids[i],
            uid,
            intent_id,
            now_dt,
            batch.row(i),
            int(scored.machine_opens[i]),
            {"evidence": float(scored.evidence[i]), "known_person": known[i]},
            {"batch": True, "latency_estimate_seconds": latency_seconds},
        )
        for i, uid in enumerate(universal_ids)
    ]
    service.events.insert_explanations(explanations)
    refs = [e.explanation_ref for e in explanations]
    return BatchRecord(list(universal_ids), batch, decision_ids, refs)


@dataclass(frozen=True, slots=True)
class ScoredChunk:
    start: int  # index of the chunk's first person in the audience
    scores: BatchScores
    machine_opens: np.ndarray[Any, np.dtype[np.int64]]
    evidence: np.ndarray[Any, np.dtype[np.float64]]


def score_chunks(
    service: TimingService,
    tenant: str,
    universal_ids: Sequence[str],
    known: Sequence[bool],
    zone: ZoneInfo,
    window: Window,
    now: int,
    chunk: int = 20_000,
) -> Iterator[ScoredChunk]:
    """Candidate scores for a large audience, a chunk at a time (memory stays bounded by the
    chunk, not the audience): the tenant's history is read once, in one query."""
    params = service.params
    since = datetime.fromtimestamp(now - AUDIENCE_DAYS * 86_400, UTC)
    h_uids, h_utc, h_types, h_machine = service.events.engagement_history(
        tenant, sorted(ENGAGEMENT_WEIGHTS), since
    )
    aliases = service.identity.alias_map(tenant)
    index_of = {u: i for i, (u, k) in enumerate(zip(universal_ids, known, strict=True)) if k}
    rows = np.fromiter((index_of.get(aliases.get(u, u), -1) for u in h_uids), np.int64, len(h_uids))
    keep = np.flatnonzero(rows >= 0)
    rows = rows[keep]
    utc = np.asarray(h_utc, np.int64)[keep]
    offsets = _offsets(utc.tolist(), zone)
    weights = np.asarray([ENGAGEMENT_WEIGHTS[h_types[i]] for i in keep.tolist()], np.float64)
    machine = np.asarray(h_machine, np.bool_)[keep] if len(keep) else np.zeros(0, np.bool_)
    order = np.argsort(rows, kind="stable")
    rows, utc, offsets, weights, machine = (
        rows[order],
        utc[order],
        offsets[order],
        weights[order],
        machine[order],
    )
    audience = service.audience(tenant, zone, now)
    start_s, end_s = int(window.start.timestamp()), int(window.end.timestamp())
    for start in range(0, len(universal_ids), chunk):
        n = min(chunk, len(universal_ids) - start)
        lo, hi = np.searchsorted(rows, [start, start + n])
        people = ActivityTable.empty(n)
        if hi > lo:
            people.observe(
                rows[lo:hi] - start, utc[lo:hi], offsets[lo:hi], weights[lo:hi], now,
                params.activity, machine=machine[lo:hi],
            )  # fmt: skip
        has = people.evidence > 0
        arg = np.where(has, np.arange(n), -1).astype(np.int64)
        scores = score_batch(
            people, arg, audience, service._prior, start_s, end_s, zone, now, params
        )
        yield ScoredChunk(
            start,
            scores,
            people.machine_opens.astype(np.int64),
            people.evidence.astype(np.float64),
        )


def _explanation(
    tenant: str,
    decision_id: str,
    universal_id: str,
    intent_id: str,
    created_at: datetime,
    d: Decision,
    machine_opens: int,
    evidence: dict[str, Any],
    details: dict[str, Any],
) -> Explanation:
    """The audit row of one decision (single and batch decisions write the same shape)."""
    return Explanation(
        tenant=tenant,
        explanation_ref="exp_" + decision_id.replace("-", ""),
        decision_id=decision_id,
        universal_id=universal_id,
        intent_id=intent_id,
        created_at=created_at,
        model_version=d.model_version,
        target_minute_utc=datetime.fromtimestamp(d.target_minute_utc, UTC),
        trigger_timestamp_utc=datetime.fromtimestamp(d.trigger_timestamp_utc, UTC),
        confidence_score=d.confidence_score,
        fallback_level=d.fallback_level,
        weight_personal=d.weights["personal"],
        weight_audience=d.weights["audience"],
        weight_global=d.weights["global"],
        machine_opens_excluded=machine_opens,
        evidence=evidence,
        details=details,
    )


def unknown_person_id(identity: IdentityGraphStore, tenant: str, ident: Identifier) -> str:
    """The id the person will get when first seen: decisions for strangers are never dropped."""
    return identity.new_universal_id(tenant, ident)


def explain_in_words(e: Explanation) -> str:
    """The explanation an operator reads."""
    parts = [
        f"Target {e.target_minute_utc:%Y-%m-%d %H:%M} UTC, triggered at "
        f"{e.trigger_timestamp_utc:%H:%M} UTC to allow for delivery.",
    ]
    n = e.evidence.get("engagements", 0)
    if e.fallback_level == "personal":
        parts.append(f"Chosen mainly from this person's own {n} engagements.")
    elif e.fallback_level == "audience":
        parts.append(
            f"This person has little history ({n} engagements), so the brand's audience "
            "pattern weighed most."
        )
    else:
        parts.append("No usable history: a general engagement prior decided.")
    parts.append(
        f"Weights: personal {e.weight_personal:.0%}, audience {e.weight_audience:.0%}, "
        f"global {e.weight_global:.0%}."
    )
    if e.machine_opens_excluded:
        parts.append(
            f"{e.machine_opens_excluded} machine opens (Apple Mail Privacy Protection) were "
            "ignored."
        )
    parts.append(f"Estimated chance of engagement within the hour: {e.confidence_score:.0%}.")
    if e.policies:
        parts.append("Policies applied: " + ", ".join(e.policies) + ".")
    if e.exploration:
        parts.append("This was an exploration send (a randomised time, to keep learning).")
    return " ".join(parts)
