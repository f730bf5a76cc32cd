"""Timing decisions and their explanations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Path, Query

from sendflowr.api.auth import Principal, PrincipalDep
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.engagement_schemas import (
    EngagementHistoryOut,
    EngagementOut,
    EngagementTotalsOut,
)
from sendflowr.api.routes.identity import resolve_identifier
from sendflowr.api.schemas import (
    TENANT_PATTERN,
    UID_PATTERN,
    AlternativeOut,
    BatchDecideIn,
    BatchDecisionOut,
    BatchItemOut,
    CalibrationOut,
    CalibrationPointOut,
    CurvePointOut,
    DecideIn,
    DecisionCurveOut,
    DecisionOut,
    ExplanationOut,
    LegacyDecideIn,
    SuppressionOut,
)
from sendflowr.decisions import (
    AUDIENCE_DAYS,
    DecisionRecord,
    decide_many,
    explain_in_words,
    unknown_person_id,
)
from sendflowr.errors import InvalidInputError, NotFoundError
from sendflowr.identity.identifiers import Identifier, IdentifierError, parse_lookup
from sendflowr.policy_facts import PolicyContext, gather
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing.calibration import MIN_DECISIONS
from sendflowr.timing.curve import decision_curve
from sendflowr.timing.engine import MODEL_VERSION
from sendflowr.timing.heatmap import DAYS, DELIVERY, GRID_TYPES, HOURS, engagement_grid
from sendflowr.timing.policy import Suppression
from sendflowr.timing.window import Window, WindowError, check_window

router = APIRouter(tags=["timing"])

DEFAULT_LATENCY_SECONDS = 60


def _person(
    runtime: Runtime, tenant: str, id_type: str, value: str
) -> tuple[str, bool, list[str] | None]:
    """The person's universal id, whether we know them, and (when the lookup read them) the
    ids their events are stored under, the root first. A stranger still gets a decision (from
    the audience and the prior) under the id they will get when first seen."""
    if id_type == "universal_id":
        return resolve_identifier(runtime, tenant, id_type, value), True, None
    try:
        ident = parse_lookup(id_type, value, runtime.hash_key, runtime.identity.blocklist)
    except IdentifierError as exc:
        raise InvalidInputError(
            [{"loc": ["query", exc.field], "msg": exc.reason, "type": "value_error"}]
        ) from None
    ids = runtime.identity.owner_root_aliases(tenant, ident)  # one query for both
    if ids is None:
        return unknown_person_id(runtime.identity, tenant, ident), False, None
    return ids[0], True, ids


def _latency_and_window(
    tenant: Tenant, latency: int | None, send_after: datetime | None, send_before: datetime | None
) -> tuple[int, Window]:
    """The tenant's ESP latency unless the request gives one, and the checked window."""
    if latency is None:
        latency = int(tenant.settings.get("esp_latency_seconds", DEFAULT_LATENCY_SECONDS))
    try:
        return latency, check_window(send_after, send_before, latency, datetime.now(UTC))
    except WindowError as exc:
        raise exc.invalid_input() from None


def _decide(
    runtime: Runtime,
    tenant: str,
    id_type: str,
    value: str,
    send_after: datetime | None,
    send_before: datetime | None,
    latency: int | None,
    intent_id: str,
    channel: str,
    loc: tuple[str, ...],
    include_curve: bool = False,
) -> DecisionOut:
    t = runtime.metadata.hot_tenant(tenant)
    latency, window = _latency_and_window(t, latency, send_after, send_before)
    try:
        uid, known, person_ids = _person(runtime, tenant, id_type, value)
    except InvalidInputError as exc:
        raise InvalidInputError(
            [{**e, "loc": ["body", *loc, *e["loc"][1:]]} for e in exc.errors]
        ) from None
    policy = _policy(runtime, tenant, [uid], window, intent_id, person_ids)
    record = runtime.timing.decide(
        tenant, uid, known, ZoneInfo(t.timezone), window, latency, intent_id, channel,
        policy=policy,
    )  # fmt: skip
    out = _out(tenant, uid, intent_id, record)
    if runtime.bus.publishes_decisions:  # timing-decisions topic (issue 7); async, never fails
        runtime.bus.publish_decisions(tenant, [out.model_dump(mode="json", exclude={"curve"})])
    if include_curve:
        out.curve = _curve(record, runtime.timing.params.horizon_s)
    return out


def _curve(record: DecisionRecord, horizon_s: int) -> DecisionCurveOut:
    """The scores the decision was chosen from, as the policies saw them (`_decide` always
    passes the policies, so `applied` is set)."""
    scored = record.applied
    assert scored is not None, "decisions made here always run the policies"
    return DecisionCurveOut(
        horizon_seconds=horizon_s,
        points=[
            CurvePointOut(
                minute_utc=datetime.fromtimestamp(p.minute_utc, UTC),
                score=p.score,
                allowed=p.allowed,
            )
            for p in decision_curve(scored)
        ],
    )


def _policy(
    runtime: Runtime,
    tenant: str,
    uids: list[str],
    window: Window,
    intent_id: str,
    person_ids: list[str] | None = None,
) -> PolicyContext:
    """The send policies' facts for these people (the intent's hot paths and suppression
    sources when it names a known intent). `person_ids`: a single person's stored ids, when
    the caller read them already."""
    intent = runtime.intents.find(tenant, intent_id) if intent_id else None
    return gather(
        runtime.metadata, runtime.events, runtime.identity, tenant, uids, window.start,
        window.end, datetime.now(UTC), intent=intent, person_ids=person_ids,
    )  # fmt: skip


def _suppression(s: Suppression | None) -> SuppressionOut | None:
    return None if s is None else SuppressionOut(policy=s.policy, reason=s.reason)


def _out(tenant: str, uid: str, intent_id: str, r: DecisionRecord) -> DecisionOut:
    d = r.decision
    live = r.suppression is None
    return DecisionOut(
        decision_id=r.decision_id,
        tenant=tenant,
        universal_id=uid,
        intent_id=intent_id,
        suppressed=not live,
        suppression=_suppression(r.suppression),
        target_minute_utc=datetime.fromtimestamp(d.target_minute_utc, UTC) if live else None,
        trigger_timestamp_utc=(
            datetime.fromtimestamp(d.trigger_timestamp_utc, UTC) if live else None
        ),
        latency_estimate_seconds=r.latency_seconds,
        confidence_score=min(1.0, max(0.0, d.confidence_score)) if live else None,
        window=[r.window.start, r.window.end],
        alternatives=[
            AlternativeOut(target_minute_utc=datetime.fromtimestamp(t, UTC), score=s)
            for t, s in d.alternatives
        ]
        if live
        else [],
        fallback_level=d.fallback_level,
        context_weights=d.weights,
        policies=list(r.explanation.policies),
        exploration=r.explanation.exploration,
        model_version=d.model_version,
        explanation_ref=r.explanation.explanation_ref,
    )


@router.post("/timing/decide", response_model=DecisionOut)
def decide(body: DecideIn, runtime: RuntimeDep, principal: PrincipalDep) -> DecisionOut:
    """The minute to deliver to one person in a window, the trigger time (minus the ESP's
    latency), a confidence, alternatives and an explanation reference."""
    # Most requests never reach this function: api/fast_decide.py answers them with
    # `decide_one` (the same checks and answer, without the framework's per-request work).
    return decide_one(runtime, principal, body)


def decide_one(runtime: Runtime, principal: Principal, body: DecideIn) -> DecisionOut:
    """POST /timing/decide once the body is valid: the tenant check, then the decision."""
    principal.check_tenant(body.tenant)
    return _decide(
        runtime,
        body.tenant,
        body.identifier.type,
        body.identifier.value,
        body.send_after,
        body.send_before,
        body.latency_estimate_seconds,
        body.intent_id,
        body.channel,
        ("identifier",),
        include_curve=body.include_curve,
    )


@router.post("/timing-decision", response_model=DecisionOut)
def decide_legacy(
    body: LegacyDecideIn, runtime: RuntimeDep, principal: PrincipalDep
) -> DecisionOut:
    """The original notes' shape: {email, klaviyo_id, send_after, send_before,
    latency_estimate_seconds}; the email wins when both are given."""
    principal.check_tenant(body.tenant or runtime.settings.demo_tenant)
    if body.email:
        id_type, value, field = "email", body.email, "email"
    elif body.klaviyo_id:
        id_type, value, field = "klaviyo_id", body.klaviyo_id, "klaviyo_id"
    else:
        raise InvalidInputError(
            [{"loc": ["body", "email"], "msg": "give an email or a klaviyo_id", "type": "missing"}]
        )
    return _decide(
        runtime,
        body.tenant or runtime.settings.demo_tenant,
        id_type,
        value,
        body.send_after,
        body.send_before,
        body.latency_estimate_seconds,
        "",
        "email",
        (field,),
    )


@router.post("/timing/decide/batch", response_model=BatchDecisionOut)
def decide_batch(
    body: BatchDecideIn, runtime: RuntimeDep, principal: PrincipalDep
) -> BatchDecisionOut:
    """Up to 100,000 recipients over one window: one history read, the engine's batch form,
    one explanation row each. Any bad identifier rejects the request (each one is listed)."""
    principal.check_tenant(body.tenant)
    t = runtime.metadata.hot_tenant(body.tenant)
    latency, window = _latency_and_window(
        t, body.latency_estimate_seconds, body.send_after, body.send_before
    )
    idents: list[Identifier | None] = []
    given_uids: dict[int, str] = {}
    errors = []
    for i, r in enumerate(body.recipients):
        if r.type == "universal_id":
            given_uids[i] = r.value
            idents.append(None)
            continue
        try:
            idents.append(
                parse_lookup(r.type, r.value, runtime.hash_key, runtime.identity.blocklist)
            )
        except IdentifierError as exc:
            idents.append(None)
            errors.append(
                {
                    "loc": ["body", "recipients", i, exc.field],
                    "msg": exc.reason,
                    "type": "value_error",
                }
            )
    if errors:
        raise InvalidInputError(errors[:1000])
    owners = runtime.identity.owners(body.tenant, [i for i in idents if i is not None])
    aliases = runtime.identity.alias_map(body.tenant)
    uids: list[str] = []
    known: list[bool] = []
    for i, ident in enumerate(idents):
        if ident is None:
            uid = aliases.get(given_uids[i], given_uids[i])
            if runtime.identity.root(body.tenant, uid) is None:
                raise NotFoundError(
                    f"recipients[{i}]: no person {given_uids[i]!r}", field="recipients"
                )
            uids.append(uid)
            known.append(True)
        elif ident in owners:
            uids.append(aliases.get(owners[ident], owners[ident]))
            known.append(True)
        else:
            uids.append(unknown_person_id(runtime.identity, body.tenant, ident))
            known.append(False)
    policy = _policy(runtime, body.tenant, uids, window, body.intent_id)
    record = decide_many(
        runtime.timing, body.tenant, uids, known, ZoneInfo(t.timezone), window, latency,
        body.intent_id, policy,
    )  # fmt: skip
    b = record.decisions
    levels = ("personal", "audience", "global")
    suppressed = record.suppressed or [None] * len(uids)
    exploring = record.exploration or [False] * len(uids)
    per_policy: dict[str, int] = {}
    for s in suppressed:
        if s is not None:
            per_policy[s.policy] = per_policy.get(s.policy, 0) + 1
    items = []
    for i in range(len(uids)):
        live = suppressed[i] is None
        items.append(
            BatchItemOut(
                index=i,
                universal_id=uids[i],
                decision_id=record.decision_ids[i],
                suppressed=not live,
                suppression=_suppression(suppressed[i]),
                target_minute_utc=datetime.fromtimestamp(int(b.target[i]), UTC) if live else None,
                trigger_timestamp_utc=(
                    datetime.fromtimestamp(int(b.trigger[i]), UTC) if live else None
                ),
                confidence_score=min(1.0, max(0.0, float(b.confidence[i]))) if live else None,
                fallback_level=levels[int(b.level[i])],
                policies=list(record.policies[i]) if record.policies else [],
                exploration=exploring[i],
                explanation_ref=record.explanation_refs[i],
            )
        )
    if runtime.bus.publishes_decisions:  # timing-decisions topic (issue 7); async, never fails
        common = {
            "tenant": body.tenant,
            "intent_id": body.intent_id,
            "model_version": MODEL_VERSION,
        }
        runtime.bus.publish_decisions(
            body.tenant, [{**common, **item.model_dump(mode="json")} for item in items]
        )
    return BatchDecisionOut(
        tenant=body.tenant,
        intent_id=body.intent_id,
        window=[window.start, window.end],
        latency_estimate_seconds=latency,
        model_version=MODEL_VERSION,
        suppressed=per_policy,
        decisions=items,
    )


@router.get("/timing/explanations/{ref}", response_model=ExplanationOut)
def explanation(
    runtime: RuntimeDep,
    ref: str = Path(pattern=r"^exp_[0-9a-f]{32}$"),
    tenant: str = Query(pattern=TENANT_PATTERN),
) -> ExplanationOut:
    """Why a decision chose its time, in numbers and in words."""
    runtime.metadata.get_tenant(tenant)
    e = runtime.events.get_explanation(tenant, ref)
    if e is None:
        raise NotFoundError(f"no explanation {ref!r} in tenant {tenant!r}", field="ref")
    held = e.details.get("suppressed")
    live = not held
    return ExplanationOut(
        explanation_ref=e.explanation_ref,
        decision_id=e.decision_id,
        tenant=e.tenant,
        universal_id=e.universal_id,
        intent_id=e.intent_id,
        created_at=e.created_at,
        model_version=e.model_version,
        suppressed=not live,
        suppression=(
            SuppressionOut(policy=str(held.get("policy")), reason=str(held.get("reason")))
            if held
            else None
        ),
        target_minute_utc=e.target_minute_utc if live else None,
        trigger_timestamp_utc=e.trigger_timestamp_utc if live else None,
        confidence_score=e.confidence_score if live else None,
        model_confidence=e.model_confidence if live else None,
        fallback_level=e.fallback_level,
        context_weights={
            "personal": e.weight_personal,
            "audience": e.weight_audience,
            "global": e.weight_global,
        },
        machine_opens_excluded=e.machine_opens_excluded,
        policies=list(e.policies),
        exploration=e.exploration,
        evidence=e.evidence,
        details=e.details,
        summary=explain_in_words(e),
    )


ENGAGEMENT_READ_LIMIT = 100_000  # events read for one person's grid
ZONE_PATTERN = r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$"


def _zone(tz: str | None, tenant_zone: str) -> ZoneInfo:
    """`tz` when given (422 naming it if no such IANA zone), else the tenant's zone."""
    if tz is None:
        return ZoneInfo(tenant_zone)
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInputError.at(
            ("query", "tz"), f"unknown IANA time zone {tz!r} (e.g. Europe/Paris)"
        ) from None


@router.get("/timing/calibration", response_model=CalibrationOut)
def calibration(runtime: RuntimeDep, tenant: str = Query(pattern=TENANT_PATTERN)) -> CalibrationOut:
    """The tenant's confidence map: how the engine's stated confidence compared with what
    followed the tenant's past sends, and so what its decisions now state (docs/timing.md)."""
    t = runtime.metadata.get_tenant(tenant)
    now = int(runtime.timing.clock().timestamp())
    cal = runtime.timing.audience(tenant, ZoneInfo(t.timezone), now).calibration
    horizon = runtime.timing.params.horizon_s
    common = {
        "tenant": tenant,
        "min_decisions": MIN_DECISIONS,
        "window_days": AUDIENCE_DAYS,
        "horizon_seconds": horizon,
    }
    if cal is None:
        return CalibrationOut(
            **common,
            calibrated=False,
            decisions=None,
            observed_rate=None,
            brier_before=None,
            brier_after=None,
            points=[],
            summary=(
                f"Not calibrated yet: fewer than {MIN_DECISIONS} past sends with a known "
                "outcome, so decisions state the model's own confidence."
            ),
        )
    return CalibrationOut(
        **common,
        calibrated=True,
        decisions=cal.decisions,
        observed_rate=cal.observed_rate,
        brier_before=cal.brier_before,
        brier_after=cal.brier_after,
        points=[
            CalibrationPointOut(stated=x, calibrated=y)
            for x, y in zip(cal.stated.tolist(), cal.calibrated.tolist(), strict=True)
        ],
        summary=(
            f"Calibrated on {cal.decisions:,} past sends, {cal.observed_rate:.0%} of them "
            f"engaged with within {horizon // 60} minutes. Brier score of the model's "
            f"confidence {cal.brier_before:.3f}, through the map {cal.brier_after:.3f}."
        ),
    )


@router.get("/timing/engagement/{universal_id}", response_model=EngagementOut)
def engagement(
    runtime: RuntimeDep,
    universal_id: str = Path(pattern=UID_PATTERN),
    tenant: str = Query(pattern=TENANT_PATTERN),
    tz: str | None = Query(
        None, max_length=64, pattern=ZONE_PATTERN, description="IANA zone; default the tenant's"
    ),
    days: int = Query(180, ge=1, le=730, description="history read: this many days to now"),
) -> EngagementOut:
    """A person's human clicks and opens (under every id merged into them) as a 7 x 24 grid of
    counts by local day and hour, Monday first; machine engagements are counted apart."""
    t = runtime.metadata.get_tenant(tenant)
    zone = _zone(tz, t.timezone)
    uid = resolve_identifier(runtime, tenant, "universal_id", universal_id)
    now = datetime.now(UTC)
    since = now - timedelta(days=days)
    _, utc, types, machine = runtime.events.engagement_history(
        tenant,
        (*GRID_TYPES, DELIVERY),
        since,
        limit=ENGAGEMENT_READ_LIMIT,
        universal_ids=runtime.identity.aliases(tenant, uid),
    )
    g = engagement_grid(utc, types, machine, zone, runtime.timing.params.activity.machine_open_s)
    return EngagementOut(
        tenant=tenant,
        universal_id=uid,
        zone=zone.key,
        days=list(DAYS),
        hours=list(range(HOURS)),
        grid=g.counts,
        totals=EngagementTotalsOut(
            engagements=g.total,
            clicked=g.by_type["clicked"],
            opened=g.by_type["opened"],
            machine=g.machine,
            deliveries=g.deliveries,
        ),
        history=EngagementHistoryOut(
            since=since,
            until=now,
            first_engagement=None
            if g.first_utc is None
            else datetime.fromtimestamp(g.first_utc, UTC),
            last_engagement=None if g.last_utc is None else datetime.fromtimestamp(g.last_utc, UTC),
            truncated=len(utc) >= ENGAGEMENT_READ_LIMIT,
        ),
    )
