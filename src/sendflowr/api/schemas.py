"""Request and response bodies (pydantic, so they appear in the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class BackendState(BaseModel):
    port: str
    backend: str
    state: Literal["ok", "degraded", "down"]
    detail: str = ""
    info: dict[str, str | int | float] = {}


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "down"]
    version: str
    backends: list[BackendState]


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TENANT_PATTERN, description="slug: a-z, 0-9, '_' and '-'")
    name: str = Field(min_length=1, max_length=200)
    timezone: str = Field("UTC", description="IANA time zone of the brand, e.g. Europe/Warsaw")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r}") from None
        return v


class TenantOut(BaseModel):
    id: str
    name: str
    timezone: str
    created_at: datetime


class EventCountsOut(BaseModel):
    tenant: str
    total: int
    by_type: dict[str, int]


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=10_000,
        description="canonical events (schemas/canonical_event.v1.json)",
    )


class IngestOut(BaseModel):
    received: int
    stored: int
    profiles_updated: int


class GenerateOut(BaseModel):
    tenant: str
    generated: int
    stored: int
    rejected: int
    profiles: int
    seconds: float


class IdentifierOut(BaseModel):
    type: str = Field(description="email (keyed hash), phone, esp:<name>, ext:<name> or anon")
    value: str


class MergeOut(BaseModel):
    id: int
    status: Literal["merged", "refused", "split"]
    survivor: str
    merged: str | None
    identifiers: list[IdentifierOut]
    reason: str
    occurrences: int
    source_event_id: str
    created_at: datetime
    split_at: datetime | None


class ProfileOut(BaseModel):
    tenant: str
    universal_id: str
    identifiers: list[IdentifierOut]
    aliases: list[str] = Field(description="universal ids merged into this person")
    created_at: datetime
    recent_merges: list[MergeOut]


class SplitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: str = Field(min_length=1, max_length=200, description="who undoes the merge")


class SplitOut(BaseModel):
    merge: MergeOut
    restored_universal_id: str
    identifiers_moved_back: list[IdentifierOut]
    events_moved: int
