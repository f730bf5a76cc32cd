"""Response of GET /timing/engagement/{universal_id}: a person's engagement by local hour."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class EngagementTotalsOut(BaseModel):
    engagements: int = Field(description="human clicks and opens: the grid's sum")
    clicked: int
    opened: int = Field(description="human opens only")
    machine: int = Field(
        description="clicks and opens judged machine-made (the connector's machine-open flag, "
        "or within seconds of a delivery): never in the grid"
    )
    deliveries: int = Field(description="messages delivered (received) in the period")


class EngagementHistoryOut(BaseModel):
    since: datetime = Field(description="start of the period read")
    until: datetime = Field(description="end of the period read (now)")
    first_engagement: datetime | None = Field(description="first human engagement in it")
    last_engagement: datetime | None
    truncated: bool = Field(description="true: more events than one read takes; oldest shown")


class EngagementOut(BaseModel):
    tenant: str
    universal_id: str = Field(description="the person (the survivor, for a merged-away id)")
    zone: str = Field(description="IANA zone the grid is in: `tz`, else the tenant's")
    days: list[str] = Field(description="row labels, Monday first")
    hours: list[int] = Field(description="column labels: local hours 0-23")
    grid: list[list[int]] = Field(description="7 x 24 counts of human engagements, local time")
    totals: EngagementTotalsOut
    history: EngagementHistoryOut
