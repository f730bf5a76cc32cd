"""Response models of the data viewer's routes: top campaigns and flows, decision listings."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class SourceRevenueOut(BaseModel):
    currency: str = Field(description="'unknown' when the orders named none")
    revenue: float


class TopSourceOut(BaseModel):
    id: str = Field(description="the ESP's campaign or flow id")
    name: str | None = Field(description="from the ESP catalog; null when not fetched")
    deliveries: int
    opens: int = Field(description="real opens: machine opens excluded")
    clicks: int
    orders: int = Field(description="orders attributed to it (campaign_id/flow_id on the order)")
    revenue: list[SourceRevenueOut] = Field(description="per currency")


class TopSourcesOut(BaseModel):
    tenant: str
    kind: Literal["campaign", "flow"]
    items: list[TopSourceOut] = Field(
        description="highest order value first (all currencies summed), then most clicks"
    )


class DecisionOut(BaseModel):
    explanation_ref: str
    decision_id: str
    universal_id: str
    intent_id: str
    created_at: datetime
    target_minute_utc: datetime | None = Field(description="null when suppressed")
    trigger_timestamp_utc: datetime | None = Field(description="null when suppressed")
    confidence_score: float | None = Field(description="null when suppressed")
    fallback_level: str
    model_version: str
    exploration: bool
    machine_opens_excluded: int
    suppressed: bool
    suppression_policy: str | None
    suppression_reason: str | None
    policies: list[str] = Field(description="policies that moved or suppressed the time")
    model_confidence: float | None = Field(
        None,
        description="the engine's confidence before the tenant's calibration map (equal to "
        "confidence_score without a map); null when suppressed",
    )


class DecisionsOut(BaseModel):
    tenant: str
    since: datetime | None
    total: int
    limit: int
    offset: int
    next_offset: int | None
    decisions: list[DecisionOut] = Field(description="newest first")
