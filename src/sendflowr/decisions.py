"""Timing decisions for one person: history from the store, the engine, an explanation row.

The engine (timing/engine.py) is pure; this module feeds it: the person's engagement events
(read under their alias set) become an activity profile in the brand's time zone, the tenant's
audience profile is rebuilt from the store at most every few minutes, and every decision
writes its explanation to `timing_explanations`: a batch before it is returned (one columnar
insert), a single decision through the store's explanation buffer (a background write within
tens of milliseconds; reading it back, erasure and shutdown write it first).

An erasure reaches the cached audience curve: the process that ran it drops the tenant's curve
at once (`TimingService.forget_audience`), and every process re-reads the tenant's latest
erasure audit id (shared metadata) at most every ERASURE_CHECK_S and drops a curve built before
it. The check is per tenant and time-based, never per decision.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pyarrow as pa

from sendflowr.identity.identifiers import Identifier
from sendflowr.identity.store import IdentityGraphStore
from sendflowr.ids import ordered_ids
from sendflowr.people import features_for
from sendflowr.storage.events.base import EventStore
from sendflowr.storage.events.rows import EXPLANATION_SCHEMA
from sendflowr.storage.features.base import FeatureCache
from sendflowr.storage.features.memory import MemoryFeatureCache
from sendflowr.storage.features.rebuild import fold_arrays, fold_stored
from sendflowr.tenant_calibration import tenant_calibration
from sendflowr.timing.activity import (
    ActivityParams,
    ActivityProfile,
    ActivityTable,
    global_prior,
    summed,
)
from sendflowr.timing.calibration import Calibration
from sendflowr.timing.engine import (
    LEVELS,
    MODEL_VERSION,
    SCORE_BLOCK,
    AudienceScores,
    BatchDecisions,
    BatchScores,
    Decision,
    EngineParams,
    audience_archetypes,
    audience_key,
    audience_scores,
    choose,
    score_batch,
    utc_offsets,
)
from sendflowr.timing.explanation import Explanation
from sendflowr.timing.features import (
    ENGAGEMENT_WEIGHTS,
    FeatureTable,
    FoldContext,
    ProfileFeatures,
    zone_tag,
)
from sendflowr.timing.policy import Applied, Suppression, apply, choose_allowed, describe
from sendflowr.timing.window import Window

if TYPE_CHECKING:
    from sendflowr.policy_facts import PolicyContext

AUDIENCE_TTL_S: Final = 300.0
ERASURE_CHECK_S: Final = 5.0  # how often a cached audience looks for a newer erasure
AUDIENCE_DAYS: Final = 180  # history that shapes the audience curve


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    decision: Decision
    decision_id: str
    explanation: Explanation
    latency_seconds: int
    window: Window
    suppression: Suppression | None = None  # set: no send (decision holds the unpoliced minute)
    applied: Applied | None = None  # the policies' masks, when policies were applied


def _offsets(utc_s: Sequence[int], zone: ZoneInfo) -> np.ndarray[Any, np.dtype[np.int64]]:
    utc = np.asarray(utc_s, np.int64)
    return utc_offsets(utc - utc % 60, zone)


DELIVERY_TYPE: Final = "received"
# What a timing history reads: the engagement signals and the deliveries behind them.
HISTORY_TYPES: Final = (*sorted(ENGAGEMENT_WEIGHTS), DELIVERY_TYPE)


def fold_history(
    table: ActivityTable,
    rows: np.ndarray[Any, np.dtype[np.int64]],
    utc_s: np.ndarray[Any, np.dtype[np.int64]],
    types: Sequence[str],
    machine: np.ndarray[Any, np.dtype[np.bool_]],
    zone: ZoneInfo,
    now: int,
    params: ActivityParams,
) -> tuple[np.ndarray[Any, np.dtype[np.float64]], np.ndarray[Any, np.dtype[np.float64]]]:
    """Fold stored events (row, UTC s, type, machine flag) into `table`: engagement signals
    by their weight, machine opens excluded and counted, `received` as deliveries (the
    send-time-bias correction and latency). The path from a tenant's history to profiles for
    audiences, schedules and `sendflowr evaluate --simulated`; the feature cache folds one
    person's events with timing.features.fold_batch."""
    weights = np.fromiter((ENGAGEMENT_WEIGHTS.get(t, 0.0) for t in types), np.float64, len(types))
    delivery = np.fromiter((t == DELIVERY_TYPE for t in types), np.bool_, len(types))
    return table.observe(
        rows,
        utc_s,
        _offsets(utc_s.tolist(), zone),
        weights,
        now,
        params,
        machine=machine & ~delivery,
        delivery=delivery,
    )


@dataclass(slots=True)
class _CachedAudience:
    table: ActivityTable
    built: float  # monotonic seconds
    erasure_id: int  # the tenant's latest erasure audit id, read before the history
    checked: float  # when erasure_id was last compared with the audit table


class TimingService:
    def __init__(
        self,
        events: EventStore,
        identity: IdentityGraphStore,
        params: EngineParams | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        features: FeatureCache | None = None,
        *,
        erasure_check_s: float = ERASURE_CHECK_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = events
        self.identity = identity
        # per-person timing features, rebuilt from `events` on a miss (private if not shared)
        self.features: FeatureCache = features if features is not None else MemoryFeatureCache()
        self.params = params or EngineParams()
        self.clock = clock
        self._prior = global_prior()
        self.erasure_check_s = erasure_check_s
        self._monotonic = monotonic
        self._audiences: dict[str, _CachedAudience] = {}
        self._forgotten: dict[str, int] = {}  # per tenant: forget_audience calls so far
        self._builders: dict[str, threading.Lock] = {}  # per tenant: held while building
        # per tenant: the last window scored against its audience (see `scored_audience`)
        self._scored: dict[str, tuple[ActivityTable, AudienceScores]] = {}
        self._lock = threading.Lock()

    def forget_audience(self, tenant: str) -> None:
        """Drop the tenant's cached audience curve: the next decision rebuilds it from the
        store. Called after an erasure in this process (other processes notice it through the
        erasure audit within ERASURE_CHECK_S)."""
        with self._lock:
            self._audiences.pop(tenant, None)
            self._scored.pop(tenant, None)
            # a rebuild already reading the history must not store its (older) curve
            self._forgotten[tenant] = self._forgotten.get(tenant, 0) + 1

    def audience(self, tenant: str, zone: ZoneInfo, now: int) -> ActivityTable:
        """The tenant's aggregate curve: every person's recent history, read in one query and
        folded through the same per-person update (deliveries included), then summed. Cached
        for AUDIENCE_TTL_S; dropped sooner when the tenant's latest erasure audit id (read at
        most every `erasure_check_s`, by one caller while the others keep the cached curve)
        differs from the one it was built under."""
        stale: ActivityTable | None = None  # an expired curve (not an erased one)
        with self._lock:
            cached = self._audiences.get(tenant)
            mono = self._monotonic()
            if cached is not None and mono - cached.built < AUDIENCE_TTL_S:
                if mono - cached.checked < self.erasure_check_s:
                    return cached.table
                cached.checked = mono  # this caller checks; concurrent ones use the curve
            elif cached is not None:
                stale, cached = cached.table, None
            builder = self._builders.setdefault(tenant, threading.Lock())
        if cached is not None:
            if self.identity.latest_erasure_id(tenant) == cached.erasure_id:
                return cached.table
            with self._lock:
                if self._audiences.get(tenant) is cached:
                    del self._audiences[tenant]
        # One build per tenant at a time: while it runs, callers with an expired curve keep
        # it and the others wait for the new one (no stampede of identical builds).
        if not builder.acquire(blocking=stale is None):
            assert stale is not None
            return stale
        try:
            with self._lock:
                built = self._audiences.get(tenant)
                forgotten = self._forgotten.get(tenant, 0)
                if built is not None and self._monotonic() - built.built < AUDIENCE_TTL_S:
                    return built.table  # built while this caller waited
            # read before the history: an erasure committed later shows as newer
            erasure_id = self.identity.latest_erasure_id(tenant)
            audience = self._build_audience(tenant, zone, now)
            with self._lock:
                if self._forgotten.get(tenant, 0) == forgotten:
                    mono = self._monotonic()
                    self._audiences[tenant] = _CachedAudience(audience, mono, erasure_id, mono)
            return audience
        finally:
            builder.release()

    def scored_audience(
        self, tenant: str, zone: ZoneInfo, window: Window, now: int
    ) -> tuple[ActivityTable, AudienceScores]:
        """The tenant's audience and what scoring `window` at `now` takes from it and the
        prior (engine.audience_scores), the latter kept for the tenant's last window: single
        decisions within the same minute and window minutes share it. The cached audience
        is never changed in place, so its identity says it is the same."""
        audience = self.audience(tenant, zone, now)
        start, end = int(window.start.timestamp()), int(window.end.timestamp())
        key = audience_key(start, end, zone, now, self.params)
        with self._lock:
            hit = self._scored.get(tenant)
        if hit is not None and hit[0] is audience and hit[1].key == key:
            return hit
        shared = audience_scores(audience, self._prior, start, end, zone, now, self.params)
        with self._lock:
            self._scored[tenant] = (audience, shared)
        return audience, shared

    def _build_audience(self, tenant: str, zone: ZoneInfo, now: int) -> ActivityTable:
        # One columnar read (numpy columns, ids and types dictionary-encoded) folded as the
        # bulk rebuild folds, instead of a row read holding every event as Python objects
        # (a tuple, an id and a type string an event), which stopped at 2 million events: at
        # 390,000 events 1.8-2.3 s of CPU a build instead of 2.6-3.0 s. Per stored id, as
        # before (the audience is a sum), in a fixed order, so every process builds the
        # same curve from the same events.
        since = datetime.fromtimestamp(now - AUDIENCE_DAYS * 86_400, UTC)
        arrays = self.events.engagement_arrays(tenant, HISTORY_TYPES, since).in_order()
        audience = ActivityTable.empty(1)
        if len(arrays):
            _, folded = fold_arrays(arrays, {}, FoldContext(zone, now, self.params.activity))
            people = folded.activity
            audience = summed(people, now, self.params.activity.half_life_s)
            audience.archetypes = audience_archetypes(people, zone, now, self.params)
            audience.calibration = tenant_calibration(
                self.events, self.identity, tenant, arrays, now - AUDIENCE_DAYS * 86_400, now,
                self.params.horizon_s, self.params.activity.machine_open_s,
            )  # fmt: skip
        return audience

    def person_profile(
        self, tenant: str, universal_id: str, zone: ZoneInfo, now: int
    ) -> ProfileFeatures:
        """The person's timing features (activity profile in `zone`, evidence counts) from the
        feature cache; on a miss, rebuilt from their events under every alias and cached."""
        return features_for(
            tenant,
            universal_id,
            self.events,
            self.features,
            self.identity,
            zone,
            now,
            self.params.activity,
        )

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
        policy: PolicyContext | None = None,
    ) -> DecisionRecord:
        """One person's decision; its explanation is written unless `store` is False (the
        caller adds what moved the send, then writes it). With `policy` (one row of facts) the
        send policies mask, move or suppress it (timing.policy)."""
        now_dt = self.clock()
        now = int(now_dt.timestamp())
        profile: ActivityProfile | None = None
        machine_opens = 0
        engagements = 0
        last_engagement: str | None = None
        median_latency: float | None = None
        degraded: dict[str, list[str]] = {}
        if known:
            feats = self.person_profile(tenant, universal_id, zone, now)
            if self.features.degraded():  # rebuilt from the event store: correct, slower
                degraded["degraded"] = ["feature_cache"]
            machine_opens = feats.machine_opens_excluded
            engagements = feats.engagements
            if engagements:
                profile = feats.activity
                median_latency = profile.median_latency_s
                last_engagement = datetime.fromtimestamp(profile.last_engagement, UTC).isoformat()
        decision_id = str(uuid.uuid4())
        applied: Applied | None = None
        suppression: Suppression | None = None
        policies: tuple[str, ...] = ()
        policy_details: dict[str, Any] = {}
        audience, shared = self.scored_audience(tenant, zone, window, now)
        scores = score_batch(
            profile.table() if profile is not None else ActivityTable.empty(1),
            np.array([0 if profile is not None else -1], np.int64),
            audience,
            self._prior,
            int(window.start.timestamp()),
            int(window.end.timestamp()),
            zone,
            now,
            self.params,
            shared,
        )
        if policy is None:
            decision = choose(scores, latency_seconds, self.params).row(0)
        else:
            applied = apply(scores, policy.config, policy.facts, zone, [decision_id])
            suppression = applied.suppressed[0]
            if suppression is not None:  # the minute it would have had, for the record
                decision = choose(scores, latency_seconds, self.params).row(0)
                policy_list, detail_list = describe(applied, np.array([decision.target_minute_utc]))
            else:  # described at the minute it chose
                allowed = choose_allowed(applied, latency_seconds, self.params)
                decision = allowed.decisions.row(0)
                policy_list, detail_list = allowed.policies, allowed.details
            policies, policy_details = policy_list[0], detail_list[0]
        calibration = (
            {} if audience.calibration is None else {"calibration": audience.calibration.describe()}
        )
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
                "median_latency_seconds": median_latency,
                **degraded,
            },
            {
                "channel": channel,
                "latency_estimate_seconds": latency_seconds,
                "window": [window.start.isoformat(), window.end.isoformat()],
                "alternatives": [[t, s] for t, s in decision.alternatives],
                **calibration,
                **policy_details,
            },
            policies,
            bool(applied is not None and applied.exploration[0]),
        )
        if store:  # written within tens of ms; any read of it writes it first (buffer notes)
            self.events.buffer_explanations([explanation])
        return DecisionRecord(
            decision, decision_id, explanation, latency_seconds, window, suppression, applied
        )


@dataclass(frozen=True, slots=True)
class BatchRecord:
    universal_ids: list[str]
    decisions: BatchDecisions
    decision_ids: list[str]
    explanation_refs: list[str]
    suppressed: list[Suppression | None] = field(default_factory=list)  # per row; [] none
    exploration: list[bool] = field(default_factory=list)
    policies: list[tuple[str, ...]] = field(default_factory=list)


def decide_many(
    service: TimingService,
    tenant: str,
    universal_ids: Sequence[str],
    known: Sequence[bool],
    zone: ZoneInfo,
    window: Window,
    latency_seconds: int,
    intent_id: str = "",
    policy: PolicyContext | None = None,
) -> BatchRecord:
    """Decisions for many people over one window: their features from the feature cache
    (misses rebuilt from the store in one query, see `batch_features`), the engine's batch
    form a chunk at a time on DECIDE_THREADS threads, and one explanation row each, written
    in one insert. With `policy` (a row of facts per person) the send policies mask, move or
    suppress each decision."""
    now_dt = service.clock()
    now = int(now_dt.timestamp())
    n = len(universal_ids)
    feats = batch_features(service, tenant, universal_ids, known, zone, now)
    audience, shared = service.scored_audience(tenant, zone, window, now)
    params = service.params
    start_s, end_s = int(window.start.timestamp()), int(window.end.timestamp())
    decision_ids = ordered_ids(n)

    # People with a history are scored DECIDE_CHUNK at a time (whole engine blocks, so the
    # float32 products round as in one call over the batch); everyone without one shares one
    # row (audience and prior), scored and chosen once.
    step = max(1, DECIDE_CHUNK // SCORE_BLOCK) * SCORE_BLOCK
    with_history = np.flatnonzero(feats.rows >= 0)
    where = [with_history[lo : lo + step] for lo in range(0, len(with_history), step)]
    if len(with_history) < n or n == 0:
        where.append(np.flatnonzero(feats.rows < 0))

    def scored(at: np.ndarray[Any, np.dtype[np.int64]]) -> BatchScores:
        no_history = len(at) > 0 and feats.rows[at[0]] < 0  # the one shared row
        rows = np.full(1, -1, np.int64) if no_history else feats.rows[at]
        return score_batch(
            feats.table, rows, audience, service._prior, start_s, end_s, zone, now, params,
            shared,
        )  # fmt: skip

    def chosen(at: np.ndarray[Any, np.dtype[np.int64]]) -> BatchDecisions:
        return choose(scored(at), latency_seconds, params)

    threads = DECIDE_THREADS if len(where) > 1 else 1
    suppressed: list[Suppression | None] = [None] * n
    policies: list[tuple[str, ...]] = [()] * n
    details: Sequence[dict[str, Any]] = [{}] * n  # one shared empty dict: read only
    exploring = [False] * n
    if policy is None:
        decided = _map(chosen, where, threads)
        calibrated = decided[0].model_confidence is not None  # the one audience's map, or none
        fields = (*_DECISION_FIELDS, "model_confidence") if calibrated else _DECISION_FIELDS
        batch = BatchDecisions(*_spread(n, where, decided, fields))
    else:
        parts = _map(scored, where, threads)
        prob, weights = _spread(n, where, parts, ("prob", "weights"))
        scores = BatchScores(parts[0].candidates, prob, weights, parts[0].calibration)
        applied = apply(scores, policy.config, policy.facts, zone, decision_ids)
        allowed = choose_allowed(applied, latency_seconds, params)
        batch, policies, details = allowed.decisions, allowed.policies, allowed.details
        suppressed = applied.suppressed
        exploring = applied.exploration.tolist()
    refs = explanation_refs(decision_ids)
    service.events.insert_explanation_table(
        explanation_table(
            tenant, decision_ids, refs, universal_ids, intent_id, now_dt, batch,
            feats.machine_opens, feats.evidence, known, latency_seconds, policies, details,
            exploring, audience.calibration,
        )
    )  # fmt: skip
    return BatchRecord(
        list(universal_ids), batch, decision_ids, refs, suppressed, exploring, policies
    )


# Batch scoring: chunks of this many people with a history (rounded to whole engine blocks),
# on this many threads (numpy and BLAS release the GIL in the products and reductions; BLAS
# should run one thread per worker, e.g. OPENBLAS_NUM_THREADS=1, or its own threads fight the
# workers for the cores).
DECIDE_CHUNK: Final = 8_192
DECIDE_THREADS: Final = max(1, min(2, os.cpu_count() or 1))


_T = TypeVar("_T")
_A = TypeVar("_A")


def _map(fn: Callable[[_A], _T], items: Sequence[_A], threads: int) -> list[_T]:
    """`[fn(x) for x in items]`, on `threads` threads when more than one."""
    if threads <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(threads, thread_name_prefix="decide") as pool:
        return list(pool.map(fn, items))


def _spread(
    n: int,
    where: Sequence[np.ndarray[Any, np.dtype[np.int64]]],
    parts: Sequence[Any],
    fields: Sequence[str],
) -> list[np.ndarray[Any, Any]]:
    """Per field, an (n, ...) array holding part i's rows at where[i] (a one-row part, the
    shared row of people without history, is broadcast)."""
    out = []
    for name in fields:
        first = getattr(parts[0], name)
        whole = np.empty((n, *first.shape[1:]), first.dtype)
        for at, part in zip(where, parts, strict=True):
            whole[at] = getattr(part, name)
        out.append(whole)
    return out


_DECISION_FIELDS: Final = (
    "target",
    "trigger",
    "confidence",
    "alternatives",
    "alternative_scores",
    "level",
    "weights",
)
_REF_COLUMNS: Final = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def explanation_refs(decision_ids: Sequence[str]) -> list[str]:
    """`"exp_" + id without its dashes` for each decision id (vectorised)."""
    if not decision_ids:
        return []
    raw = np.array(decision_ids, "S36").view(np.uint8).reshape(-1, 36)
    out = np.empty((len(raw), 36), np.uint8)
    out[:, :4] = np.frombuffer(b"exp_", np.uint8)
    out[:, 4:] = raw[:, _REF_COLUMNS]
    refs: list[str] = out.view("S36").ravel().astype("U36").tolist()
    return refs


def explanation_table(
    tenant: str,
    decision_ids: Sequence[str],
    refs: Sequence[str],
    universal_ids: Sequence[str],
    intent_id: str,
    created_at: datetime,
    batch: BatchDecisions,
    machine_opens: np.ndarray[Any, np.dtype[np.int64]],
    evidence: np.ndarray[Any, np.dtype[np.float64]],
    known: Sequence[bool],
    latency_seconds: int,
    policies: Sequence[tuple[str, ...]],
    details: Sequence[dict[str, Any]],
    exploring: Sequence[bool],
    calibration: Calibration | None = None,
) -> pa.Table:
    """A batch's explanation rows in columns (EXPLANATION_SCHEMA): the same content as
    `_explanation` gives each decision, without a Python object per row. The JSON of the
    evidence and details is written per row only where it differs from its neighbours'."""
    n = len(decision_ids)
    dumps = orjson.dumps
    common: dict[str, Any] = {"batch": True, "latency_estimate_seconds": latency_seconds}
    if calibration is not None:
        common["calibration"] = calibration.describe()
    plain = dumps(common).decode()
    detail_json = (
        [dumps({**common, **d}).decode() if d else plain for d in details]
        if any(details)
        else [plain] * n
    )
    # the evidence JSON: one text for everyone without evidence (most of a large batch)
    ev = np.asarray(evidence, np.float64)
    is_known = np.fromiter(map(bool, known), np.bool_, n)
    ev_json = np.empty(n, object)
    for flag in (False, True):
        ev_json[(ev == 0) & (is_known == flag)] = dumps(
            {"evidence": 0.0, "known_person": flag}
        ).decode()
    some = np.flatnonzero(ev != 0)
    ev_json[some] = [
        dumps({"evidence": e, "known_person": k}).decode()
        for e, k in zip(ev[some].tolist(), is_known[some].tolist(), strict=True)
    ]
    ms = pa.timestamp("ms", tz="UTC")
    created = (created_at - _EPOCH) // timedelta(milliseconds=1)
    cols: dict[str, Any] = {
        "tenant": pa.array([tenant] * n, pa.string()),
        "explanation_ref": pa.array(refs, pa.string()),
        "decision_id": pa.array(decision_ids, pa.string()),
        "universal_id": pa.array(universal_ids, pa.string()),
        "intent_id": pa.array([intent_id] * n, pa.string()),
        "created_at": pa.array(np.full(n, created, np.int64), ms),
        "model_version": pa.array([MODEL_VERSION] * n, pa.string()),
        "target_minute_utc": pa.array(np.asarray(batch.target, np.int64) * 1000, ms),
        "trigger_timestamp_utc": pa.array(np.asarray(batch.trigger, np.int64) * 1000, ms),
        "confidence_score": np.asarray(batch.confidence, np.float64).astype(np.float32),
        "fallback_level": pa.DictionaryArray.from_arrays(
            pa.array(np.asarray(batch.level, np.int32)), pa.array(LEVELS, pa.string())
        ).cast(pa.string()),
        "weight_personal": batch.weights[:, 0].astype(np.float32),
        "weight_audience": batch.weights[:, 1].astype(np.float32),
        "weight_global": batch.weights[:, 2].astype(np.float32),
        "evidence": pa.array(ev_json, pa.string()),
        "machine_opens_excluded": np.asarray(machine_opens).astype(np.uint32),
        "policies": _string_lists(policies),
        "exploration": np.asarray(exploring, np.bool_),
        "details": pa.array(detail_json, pa.string()),
        "model_confidence": np.asarray(batch.engine_confidence, np.float64).astype(np.float32),
    }
    return pa.Table.from_pydict(cols, schema=EXPLANATION_SCHEMA)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _string_lists(rows: Sequence[tuple[str, ...]]) -> pa.Array:
    """A list<string> column from per-row tuples (offsets and values, not a list per row)."""
    lengths = np.fromiter(map(len, rows), np.int32, len(rows))
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = [v for row in rows if row for v in row]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.string()))


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
    chunk, not the audience): each chunk's features from the feature cache, its misses
    rebuilt in one query (`batch_features`)."""
    params = service.params
    audience, shared = service.scored_audience(tenant, zone, window, now)
    start_s, end_s = int(window.start.timestamp()), int(window.end.timestamp())
    for start in range(0, len(universal_ids), chunk):
        stop = start + chunk
        feats = batch_features(
            service, tenant, universal_ids[start:stop], known[start:stop], zone, now
        )
        scores = score_batch(
            feats.table, feats.rows, audience, service._prior, start_s, end_s, zone, now,
            params, shared,
        )  # fmt: skip
        yield ScoredChunk(start, scores, feats.machine_opens, feats.evidence)


@dataclass(frozen=True, slots=True)
class BatchFeatures:
    """What a batch of recipients brings to the engine (row i: recipient i)."""

    table: ActivityTable  # the profiles of the recipients with a history
    rows: np.ndarray[Any, np.dtype[np.int64]]  # row in `table`, -1: no history or unknown
    machine_opens: np.ndarray[Any, np.dtype[np.int64]]  # excluded machine opens
    evidence: np.ndarray[Any, np.dtype[np.float64]]  # decayed evidence as of `now`


def batch_features(
    service: TimingService,
    tenant: str,
    universal_ids: Sequence[str],
    known: Sequence[bool],
    zone: ZoneInfo,
    now: int,
) -> BatchFeatures:
    """The known recipients' timing features, as the single decision reads them
    (`TimingService.person_profile`): from the feature cache, and those it misses (or keeps
    in another zone) rebuilt from every event stored under their aliases in ONE columnar
    query, folded with the bulk rebuild's fold, and put back. A person with no engagement
    (evidence 0) is scored without history, like a stranger."""
    n = len(universal_ids)
    people = list(dict.fromkeys(u for u, k in zip(universal_ids, known, strict=True) if k))
    tag = zone_tag(zone)
    present, features = service.features.get_table(tenant, people)
    cached = present & (features.zone_tag == tag)
    missing = np.flatnonzero(~cached)
    if len(missing):
        stale = [people[i] for i in np.flatnonzero(present & ~cached).tolist()]
        if stale:  # kept in another zone: replaced below
            service.features.invalidate(tenant, stale)
        rebuilt = _rebuild(service, tenant, [people[i] for i in missing.tolist()], zone, now)
        features.activity.copy_rows(missing, rebuilt.activity, slice(0, len(missing)))
    act = features.activity
    m = len(people)
    evidence, machine = act.evidence, act.machine_opens
    age = np.exp2(-np.maximum((now - act.last_update).astype(np.float64), 0.0) / (
        service.params.activity.half_life_s
    ))  # fmt: skip
    has = evidence > 0
    kept = np.flatnonzero(has)
    table = ActivityTable.empty(len(kept))
    table.copy_rows(slice(None), act, kept)
    row_of = np.where(has, np.cumsum(has) - 1, -1)
    position = {u: i for i, u in enumerate(people)}
    person = np.fromiter(
        (position[u] if k else -1 for u, k in zip(universal_ids, known, strict=True)),
        np.int64,
        n,
    )
    found = person >= 0
    safe = np.where(found, person, 0)
    if m == 0:
        return BatchFeatures(table, np.full(n, -1, np.int64), np.zeros(n, np.int64), np.zeros(n))
    return BatchFeatures(
        table,
        np.where(found, row_of[safe], -1),
        np.where(found, machine[safe], 0),
        np.where(found, (evidence * age)[safe], 0.0),
    )


def _rebuild(
    service: TimingService, tenant: str, universal_ids: Sequence[str], zone: ZoneInfo, now: int
) -> FeatureTable:
    """Features of these people (row i: universal_ids[i]) rebuilt from every event stored
    under their aliases, in one query, and put back in the feature cache (through its
    rebuild guard: a person whose events were being ingested meanwhile is not written)."""
    ctx = FoldContext(zone, now, service.params.activity)
    with service.features.rebuilding(tenant) as rebuild:  # before the read
        folded = fold_stored(service.events, service.identity, tenant, ctx, universal_ids)
        rebuild.put_table(universal_ids, folded.table)
    return folded.table


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
    policies: tuple[str, ...] = (),
    exploration: bool = False,
) -> Explanation:
    """The audit row of one decision (single and batch decisions write the same shape). A
    suppressed decision keeps the minute it would have had in the time columns; `details`
    says it was suppressed, by which policy and why."""
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
        policies=policies,
        exploration=exploration,
        evidence=evidence,
        details=details,
        model_confidence=d.model_confidence,
    )


def unknown_person_id(identity: IdentityGraphStore, tenant: str, ident: Identifier) -> str:
    """The id the person will get when first seen: decisions for strangers are never dropped."""
    return identity.new_universal_id(tenant, ident)


def explain_in_words(e: Explanation) -> str:
    """The explanation an operator reads."""
    suppressed = e.details.get("suppressed")
    if suppressed:
        parts = [
            f"Suppressed by {suppressed.get('policy')}: {suppressed.get('reason')}. No send; "
            f"without policies it would have targeted {e.target_minute_utc:%Y-%m-%d %H:%M} UTC."
        ]
    else:
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
    calibration = e.details.get("calibration")
    if isinstance(calibration, dict) and e.model_confidence is not None:
        parts.append(
            f"That is the model's {e.model_confidence:.0%} calibrated on this brand's "
            f"{calibration.get('decisions')} past sends and what followed them "
            f"({calibration.get('observed_rate', 0):.0%} were engaged with within the hour)."
        )
    if e.policies:
        parts.append("Policies applied: " + ", ".join(e.policies) + ".")
    for name in e.policies:
        parts.extend(_policy_words(name, e.details.get(name)))
    if e.exploration:
        parts.append("This was an exploration send (a randomised time, to keep learning).")
    if "feature_cache" in (e.evidence.get("degraded") or ()):
        parts.append(
            "Degraded: the feature cache was unavailable, so this person's features were "
            "rebuilt from the event store (as on a cache miss: slower, not different)."
        )
    return " ".join(parts)


def _policy_words(name: str, d: Any) -> list[str]:
    """One sentence for a policy that moved a decision (suppressions are said first)."""
    if not isinstance(d, dict):
        return []
    if name == "hot_path":
        return [
            f"Hot path: a {d.get('signal')} at {d.get('signal_at')} (within "
            f"{d.get('within_seconds')} s) promoted the send to the earliest allowed minute."
        ]
    if name == "exploration":
        return [
            f"Exploration placed it at {d.get('minute_utc')} (expected engagement "
            f"{d.get('engagement_here')} there, {d.get('engagement_best')} at the best minute)."
        ]
    if "preferred_minute_utc" in d:
        return [
            f"{name.replace('_', ' ').capitalize()} ({d.get('reason')}) moved it from "
            f"{d.get('preferred_minute_utc')} to {d.get('chosen_minute_utc')}, losing "
            f"{d.get('engagement_lost')} expected engagement."
        ]
    return []
