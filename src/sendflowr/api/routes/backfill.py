"""Backfill control (start, start-all, status, retry, cancel, clear) and the data summaries.

Starting a backfill queues a job and answers 202 at once; the backfill worker (a task in the
API process, or `sendflowr backfill`) runs it, and the status routes report its progress.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from sendflowr.api.auth import PrincipalDep
from sendflowr.api.connector_schemas import (
    ClearOut,
    DayCountOut,
    JobOut,
    OrderOut,
    OrdersOut,
    RevenueOut,
    StartAllOut,
    SummaryOut,
    TenantBackfillOut,
)
from sendflowr.api.deps import RuntimeDep
from sendflowr.connectors.klaviyo.backfill import incremental_range, plan_range
from sendflowr.connectors.klaviyo.constants import ESP
from sendflowr.errors import ConflictError, InvalidInputError
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.backfill import Job

router = APIRouter(prefix="/api/connector", tags=["connector"])

Days = Annotated[
    int | None, Query(ge=1, le=3650, description="history to fetch, in days (default 90)")
]
Years = Annotated[
    int | None,
    Query(ge=1, le=10, description="history to fetch, in calendar years (not with days)"),
]


def _check_range(days: int | None, years: int | None) -> None:
    if days is not None and years is not None:
        raise InvalidInputError.at(("query", "years"), "give days or years, not both")


def _start(runtime: Runtime, tenant: str, days: int | None, years: int | None) -> Job:
    """Queue one tenant's backfill; `_check_range` has been called."""
    runtime.metadata.get_tenant(tenant)
    account = runtime.accounts.find(tenant, ESP)
    if account is None or account.status == "disconnected":
        raise ConflictError(
            f"tenant {tenant!r} has no connected Klaviyo account: connect one first",
            field="tenant",
        )
    if days is None and years is None:
        days = 90
    start, end = plan_range(datetime.now(UTC), days_back=days, years_back=years)
    return runtime.backfills.create_job(tenant, ESP, "backfill", start, end)


@router.post(
    "/backfill/start-all", response_model=StartAllOut, status_code=status.HTTP_202_ACCEPTED
)
def start_all(
    runtime: RuntimeDep, principal: PrincipalDep, days: Days = None, years: Years = None
) -> StartAllOut:
    """Queue a backfill for every tenant (this key may act on) with a connected Klaviyo
    account."""
    _check_range(days, years)  # once, before any job is queued
    started: list[JobOut] = []
    skipped: dict[str, str] = {}
    for account in runtime.accounts.list():
        if account.esp != ESP or not principal.can_see(account.tenant):
            continue
        if account.status == "disconnected":
            skipped[account.tenant] = "not connected"
            continue
        try:
            started.append(JobOut.of(_start(runtime, account.tenant, days, years)))
        except ConflictError as exc:
            skipped[account.tenant] = exc.message
    return StartAllOut(started=started, skipped=skipped)


@router.get("/backfill/status", response_model=list[TenantBackfillOut])
def status_all(runtime: RuntimeDep, principal: PrincipalDep) -> list[TenantBackfillOut]:
    """The latest job of every tenant (this key may act on)."""
    connected = {
        a.tenant for a in runtime.accounts.list() if a.esp == ESP and a.status != "disconnected"
    }
    out = []
    for tenant in runtime.metadata.list_tenants():
        if not principal.can_see(tenant.id):
            continue
        job = runtime.backfills.latest_job(tenant.id, ESP)
        if job is None and tenant.id not in connected:
            continue
        out.append(
            TenantBackfillOut(
                tenant=tenant.id,
                connected=tenant.id in connected,
                job=JobOut.of(job) if job else None,
            )
        )
    return out


@router.get("/backfill/status/{tenant}", response_model=JobOut)
def status_one(tenant: str, runtime: RuntimeDep) -> JobOut:
    """The tenant's latest job with per-metric progress and errors."""
    runtime.metadata.get_tenant(tenant)
    job = runtime.backfills.latest_job(tenant, ESP)
    if job is None:
        raise ConflictError(f"tenant {tenant!r} has no backfill yet", field="tenant")
    return JobOut.of(job, runtime.backfills.metric_progress(job.id))


@router.post("/backfill/{tenant}", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def start(tenant: str, runtime: RuntimeDep, days: Days = None, years: Years = None) -> JobOut:
    """Queue a backfill of the last `days` (or `years`) of the tenant's Klaviyo history."""
    _check_range(days, years)
    return JobOut.of(_start(runtime, tenant, days, years))


@router.post("/sync/{tenant}", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED)
def sync(tenant: str, runtime: RuntimeDep) -> JobOut:
    """Queue an incremental sync from the last checkpoint to now."""
    runtime.metadata.get_tenant(tenant)
    try:
        start_at, end_at = incremental_range(runtime, tenant, datetime.now(UTC))
    except LookupError as exc:
        raise ConflictError(str(exc), field="tenant") from None
    return JobOut.of(runtime.backfills.create_job(tenant, ESP, "incremental", start_at, end_at))


@router.post("/backfill/{tenant}/retry", response_model=JobOut, status_code=202)
def retry(tenant: str, runtime: RuntimeDep) -> JobOut:
    """Queue the last failed or cancelled job again; completed days are not fetched again."""
    runtime.metadata.get_tenant(tenant)
    return JobOut.of(runtime.backfills.retry(tenant, ESP))


@router.post("/backfill/{tenant}/cancel", response_model=JobOut)
def cancel(tenant: str, runtime: RuntimeDep) -> JobOut:
    """Cancel the queued or running job (a running one stops after its current page)."""
    runtime.metadata.get_tenant(tenant)
    return JobOut.of(runtime.backfills.request_cancel(tenant, ESP))


@router.delete("/backfill/{tenant}", response_model=ClearOut)
def clear(tenant: str, runtime: RuntimeDep) -> ClearOut:
    """Forget the tenant's finished jobs and their progress (stored events are kept)."""
    runtime.metadata.get_tenant(tenant)
    return ClearOut(tenant=tenant, jobs_deleted=runtime.backfills.clear(tenant, ESP))


# -- data summaries ---------------------------------------------------------------------------


@router.get("/backfill/data/{tenant}/summary", response_model=SummaryOut)
def summary(tenant: str, runtime: RuntimeDep) -> SummaryOut:
    """Events by type and day, orders, revenue and average order value, campaign and flow
    counts, machine-open share."""
    runtime.metadata.get_tenant(tenant)
    daily = runtime.events.daily_counts(tenant)
    by_type: dict[str, int] = {}
    machine = 0
    for _, event_type, n, m in daily:
        by_type[event_type] = by_type.get(event_type, 0) + n
        machine += m
    revenue = [
        RevenueOut(
            currency=currency or "unknown",
            orders=orders,
            revenue=round(total, 2),
            average_order_value=round(total / orders, 2) if orders else 0.0,
        )
        for currency, orders, total in runtime.events.order_totals(tenant)
    ]
    counts = runtime.catalog.counts(tenant)
    opens = by_type.get("opened", 0)
    return SummaryOut(
        tenant=tenant,
        events_by_type=by_type,
        events_by_day=[
            DayCountOut(day=d, event_type=t, events=n, machine_opens=m) for d, t, n, m in daily
        ],
        orders=sum(r.orders for r in revenue),
        revenue=revenue,
        machine_open_share=round(machine / opens, 4) if opens else 0.0,
        campaigns=counts.get("campaign", 0),
        flows=counts.get("flow", 0),
    )


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def check_day(day: date | None) -> None:
    """A `date` query value within the years the store holds (422 otherwise)."""
    if day is not None and not (date(2000, 1, 1) <= day < date(2100, 1, 1)):
        raise InvalidInputError.at(["query", "date"], "must be in [2000-01-01, 2100-01-01)")


def order_out(row: dict[str, Any]) -> OrderOut:
    props: dict[str, Any] = row["properties"] if isinstance(row["properties"], dict) else {}
    items = props.get("Items")
    return OrderOut(
        esp_event_id=row["esp_event_id"],
        occurred_at=row["occurred_at"],
        universal_id=row["universal_id"],
        order_id=_str(props.get("OrderId") or props.get("$event_id")),
        value=_float(props.get("$value")),
        currency=_str(props.get("Currency") or props.get("$currency_code")),
        items=items if isinstance(items, list) else [],
        discount_code=_str(props.get("DiscountCode")),
        utm={k: str(v) for k, v in props.items() if k.lower().startswith("utm_")},
        campaign_id=row["campaign_id"],
        flow_id=row["flow_id"],
        message_id=row["message_id"],
    )


@router.get("/backfill/data/{tenant}/orders", response_model=OrdersOut)
def orders(
    tenant: str,
    runtime: RuntimeDep,
    date_: Annotated[
        date | None, Query(alias="date", description="UTC day, e.g. 2024-12-25")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> OrdersOut:
    """The tenant's orders, newest first, with value, currency, items, discount and UTM."""
    runtime.metadata.get_tenant(tenant)
    check_day(date_)
    total, rows = runtime.events.orders(tenant, date_, limit, offset)
    return OrdersOut(
        tenant=tenant,
        date=date_.isoformat() if date_ else None,
        total=total,
        limit=limit,
        offset=offset,
        next_offset=offset + limit if offset + limit < total else None,
        orders=[order_out(r) for r in rows],
    )
