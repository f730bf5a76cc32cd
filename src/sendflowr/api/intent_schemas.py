"""Request and response bodies of the intent, schedule and trigger routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from sendflowr.api.schemas import (
    TENANT_PATTERN,
    UID_PATTERN,
    check_identifier_value,
    check_instant,
)
from sendflowr.intents import MAX_WINDOW_SECONDS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HotPathIn(_Strict):
    event_type: str
    within_seconds: int = 900


class BindingIn(BaseModel):
    """`esp` plus that ESP's fields (Klaviyo: metric_name, campaign_id, template_id; webhook:
    event, max_batch)."""

    model_config = ConfigDict(extra="allow")
    esp: str = Field(min_length=1, max_length=32)


class IntentIn(_Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    window_seconds: int = Field(86_400, ge=60, le=MAX_WINDOW_SECONDS)
    latency_seconds: int | None = Field(None, ge=0, le=86_400)
    hot_path_signals: list[HotPathIn] = Field(default_factory=list, max_length=20)
    suppression_sources: list[str] = Field(default_factory=list, max_length=10)
    frequency_cap_group: str | None = Field(None, min_length=1, max_length=100)
    binding: BindingIn
    version: int | None = Field(
        None,
        ge=1,
        le=2**63 - 1,
        description="on update: the version this change is based on (409 if stale)",
    )


class IntentCreateIn(IntentIn):
    intent_id: str = Field(min_length=1, max_length=100)


class IntentOut(BaseModel):
    tenant: str
    intent_id: str
    name: str
    description: str
    window_seconds: int
    latency_seconds: int | None
    hot_path_signals: list[dict[str, Any]]
    suppression_sources: list[str]
    frequency_cap_group: str | None
    binding: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime


class IntentChangeOut(BaseModel):
    version: int
    action: str
    actor: str
    changed_at: datetime
    changes: dict[str, list[Any]]


class RecipientIn(_Strict):
    type: Literal["email", "klaviyo_id", "phone", "external_id"]
    value: str = Field(min_length=1, max_length=320)

    @field_validator("value")
    @classmethod
    def _value(cls, v: str, info: ValidationInfo) -> str:
        return check_identifier_value(str(info.data.get("type", "")), v)


class AudienceIn(_Strict):
    """Exactly one of: recipients, a Klaviyo list id, a Klaviyo segment id."""

    recipients: list[RecipientIn] | None = Field(None, max_length=2_000_000)
    klaviyo_list_id: str | None = Field(None, min_length=1, max_length=64)
    klaviyo_segment_id: str | None = Field(None, min_length=1, max_length=64)


class ScheduleIn(_Strict):
    tenant: str = Field(pattern=TENANT_PATTERN)
    audience: AudienceIn
    send_after: AwareDatetime | None = None
    send_before: AwareDatetime | None = None
    latency_estimate_seconds: int | None = Field(None, ge=0, le=86_400)

    _window = field_validator("send_after", "send_before")(check_instant)


class ScheduleOut(BaseModel):
    schedule_id: str
    tenant: str
    intent_id: str
    esp: str
    status: str
    window: list[datetime]
    latency_estimate_seconds: int
    audience: int
    capacity_per_minute: int
    summary: dict[str, Any]
    created_at: datetime
    triggers: dict[str, int] = Field(default_factory=dict, description="count per status")
    lateness: dict[str, float] = Field(default_factory=dict)


class CancelIn(_Strict):
    tenant: str = Field(pattern=TENANT_PATTERN)
    universal_id: str | None = Field(
        None, pattern=UID_PATTERN, description="only this person's triggers"
    )


class CancelOut(BaseModel):
    cancelled: int


class RescheduleIn(_Strict):
    tenant: str = Field(pattern=TENANT_PATTERN)
    send_after: AwareDatetime | None = None
    send_before: AwareDatetime | None = None
    universal_id: str | None = Field(
        None, pattern=UID_PATTERN, description="only this person (re-decided in place)"
    )

    _window = field_validator("send_after", "send_before")(check_instant)


class TriggerOut(BaseModel):
    decision_id: str
    schedule_id: str
    intent_id: str
    universal_id: str
    recipient_type: str
    trigger_at: datetime
    target_at: datetime
    status: str
    attempts: int
    sent_at: datetime | None
    sent_via: str | None
    error: str | None
    explanation_ref: str
    promoted: bool
