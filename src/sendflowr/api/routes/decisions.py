"""The tenant's timing decisions (rows of `timing_explanations`): a paged listing and a CSV
download. One decision in full, with its evidence and the words, is
`GET /timing/explanations/{ref}`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime

from sendflowr.api.csv_export import CSV_RESPONSES, EXPORT_PAGE, csv_lines, csv_response, paged
from sendflowr.api.data_schemas import DecisionOut, DecisionsOut
from sendflowr.api.deps import RuntimeDep
from sendflowr.errors import InvalidInputError
from sendflowr.storage.events.data_views import DecisionRow

router = APIRouter(prefix="/api/tenants", tags=["decisions"])

DECISION_COLUMNS = (
    "created_at", "explanation_ref", "decision_id", "universal_id", "intent_id",
    "target_minute_utc", "trigger_timestamp_utc", "confidence_score", "fallback_level",
    "model_version", "exploration", "machine_opens_excluded", "suppressed",
    "suppression_policy", "suppression_reason", "policies", "model_confidence",
)  # fmt: skip
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)

Since = Annotated[
    AwareDatetime | None,
    Query(description="only decisions made at or after this instant (with a UTC offset)"),
]


def _check_since(since: datetime | None) -> None:
    if since is not None and not (_EARLIEST <= since < _LATEST):
        raise InvalidInputError.at(
            ["query", "since"], "must be in [2000-01-01T00:00:00Z, 2100-01-01T00:00:00Z)"
        )


def _out(d: DecisionRow) -> DecisionOut:
    live = not d.suppressed
    return DecisionOut(
        explanation_ref=d.explanation_ref,
        decision_id=d.decision_id,
        universal_id=d.universal_id,
        intent_id=d.intent_id,
        created_at=d.created_at,
        target_minute_utc=d.target_minute_utc if live else None,
        trigger_timestamp_utc=d.trigger_timestamp_utc if live else None,
        confidence_score=round(d.confidence_score, 6) if live else None,
        fallback_level=d.fallback_level,
        model_version=d.model_version,
        exploration=d.exploration,
        machine_opens_excluded=d.machine_opens_excluded,
        suppressed=d.suppressed,
        suppression_policy=d.suppression_policy,
        suppression_reason=d.suppression_reason,
        policies=list(d.policies),
        model_confidence=round(d.model_confidence, 6) if live else None,
    )


@router.get("/{tenant}/decisions", response_model=DecisionsOut)
def decisions(
    tenant: str,
    runtime: RuntimeDep,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> DecisionsOut:
    """The tenant's timing decisions, newest first: the chosen minute, trigger time,
    confidence, fallback level, model, exploration and the policies that moved or
    suppressed it."""
    runtime.metadata.get_tenant(tenant)
    _check_since(since)
    total = runtime.events.count_decisions(tenant, since)
    rows = runtime.events.decisions(tenant, limit, offset=offset, since=since)
    return DecisionsOut(
        tenant=tenant,
        since=since,
        total=total,
        limit=limit,
        offset=offset,
        next_offset=offset + limit if offset + limit < total else None,
        decisions=[_out(r) for r in rows],
    )


def _decision_line(row: DecisionRow) -> list[Any]:
    d = _out(row)
    return [
        d.created_at,
        d.explanation_ref,
        d.decision_id,
        d.universal_id,
        d.intent_id,
        d.target_minute_utc,
        d.trigger_timestamp_utc,
        d.confidence_score,
        d.fallback_level,
        d.model_version,
        d.exploration,
        d.machine_opens_excluded,
        d.suppressed,
        d.suppression_policy,
        d.suppression_reason,
        ";".join(d.policies),
        d.model_confidence,
    ]


@router.get("/{tenant}/decisions.csv", response_class=StreamingResponse, responses=CSV_RESPONSES)
def decisions_csv(tenant: str, runtime: RuntimeDep, since: Since = None) -> StreamingResponse:
    """Every timing decision of the tenant (since `since`), newest first, as a CSV download.
    Cells that a spreadsheet would run as a formula start with an apostrophe."""
    runtime.metadata.get_tenant(tenant)
    _check_since(since)
    first = runtime.events.decisions(tenant, EXPORT_PAGE, since=since)
    rows = paged(
        first,
        lambda last: runtime.events.decisions(tenant, EXPORT_PAGE, since=since, after=last.cursor),
        EXPORT_PAGE,
    )
    lines = map(_decision_line, rows)
    return csv_response(f"{tenant}-decisions.csv", csv_lines(DECISION_COLUMNS, lines))
