"""Request and response models of the backfill and data-summary routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from sendflowr.storage.metadata.backfill import Job, MetricProgress

JobStatusName = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


class MetricProgressOut(BaseModel):
    metric: str
    total_days: int
    done_days: int
    failed_days: int
    events: int
    errors: list[str] = Field(description="up to 100 '<day>: <reason>' lines")


class JobOut(BaseModel):
    job_id: int
    tenant: str
    kind: Literal["backfill", "incremental"]
    status: JobStatusName
    range_start: datetime
    range_end: datetime
    progress_percent: float = Field(description="units finished (completed or failed), 0..100")
    total_units: int
    done_units: int
    failed_units: int
    events: int
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    metrics: list[MetricProgressOut] | None = None

    @classmethod
    def of(cls, job: Job, metrics: list[MetricProgress] | None = None) -> JobOut:
        return cls(
            job_id=job.id,
            tenant=job.tenant,
            kind=job.kind,
            status=job.status,
            range_start=job.range_start,
            range_end=job.range_end,
            progress_percent=round(100.0 * job.progress, 2),
            total_units=job.total_units,
            done_units=job.done_units,
            failed_units=job.failed_units,
            events=job.events,
            error=job.error,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            metrics=None
            if metrics is None
            else [
                MetricProgressOut(
                    metric=m.metric_name,
                    total_days=m.total_days,
                    done_days=m.done_days,
                    failed_days=m.failed_days,
                    events=m.events,
                    errors=m.errors,
                )
                for m in metrics
            ],
        )


class TenantBackfillOut(BaseModel):
    tenant: str
    connected: bool
    job: JobOut | None


class StartAllOut(BaseModel):
    started: list[JobOut]
    skipped: dict[str, str] = Field(description="tenant -> why no job was started")


class ClearOut(BaseModel):
    tenant: str
    jobs_deleted: int


class DayCountOut(BaseModel):
    day: str
    event_type: str
    events: int
    machine_opens: int


class RevenueOut(BaseModel):
    currency: str
    orders: int
    revenue: float
    average_order_value: float


class SummaryOut(BaseModel):
    tenant: str
    events_by_type: dict[str, int]
    events_by_day: list[DayCountOut]
    orders: int
    revenue: list[RevenueOut]
    machine_open_share: float = Field(description="machine opens / all opens")
    campaigns: int
    flows: int


class OrderOut(BaseModel):
    esp_event_id: str
    occurred_at: datetime
    universal_id: str
    order_id: str | None
    value: float | None
    currency: str | None
    items: list[Any]
    discount_code: str | None
    utm: dict[str, str]
    campaign_id: str | None
    flow_id: str | None
    message_id: str | None


class OrdersOut(BaseModel):
    tenant: str
    date: str | None
    total: int
    limit: int
    offset: int
    next_offset: int | None
    orders: list[OrderOut]
