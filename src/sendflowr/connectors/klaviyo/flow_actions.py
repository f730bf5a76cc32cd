"""Klaviyo flow webhook actions: a flow step posts a small JSON document to SendFlowr.

A flow's webhook action sends whatever JSON the brand configures, with custom headers; the
brand configures this shape and the tenant's flow secret in `X-SendFlowr-Flow-Secret`:

    {"id": "{{ event.id }}-step3", "event": "Received Email",
     "profile": {"email": "{{ person.email }}", "id": "{{ person.KlaviyoID }}"},
     "occurred_at": "2026-11-22T10:00:00Z", "flow_id": "...", "message_id": "...",
     "properties": {...}}

`event` is a Klaviyo metric name or a canonical event type. Pure: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sendflowr.connectors.klaviyo.constants import ESP, METRIC_EVENT_TYPES
from sendflowr.connectors.klaviyo.normalize import NormalizationError, event_type_for
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.hashing import hash_email
from sendflowr.identity.identifiers import normalise_phone

FLOW_SECRET_HEADER = "X-SendFlowr-Flow-Secret"  # noqa: S105 - a header name


def event_type_of(name: str) -> EventType:
    """A Klaviyo metric name (as the connector maps it) or a canonical event type."""
    try:
        return event_type_for(name)
    except NormalizationError:
        pass
    try:
        return EventType(name)
    except ValueError:
        known = sorted({*METRIC_EVENT_TYPES, *(t.value for t in EventType)})
        raise ValueError(f"unknown event {name!r}; expected one of {known}") from None


class FlowProfile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    email: str | None = Field(None, max_length=254)
    id: str | None = Field(None, min_length=1, max_length=256)
    phone_number: str | None = Field(None, max_length=32)
    external_id: str | None = Field(None, min_length=1, max_length=256)


class FlowAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, description="unique per action and person")
    event: str = Field(min_length=1, max_length=100)
    profile: FlowProfile
    occurred_at: datetime | None = None
    flow_id: str | None = Field(None, max_length=256)
    message_id: str | None = Field(None, max_length=256)
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("event")
    @classmethod
    def _event(cls, v: str) -> str:
        event_type_of(v)
        return v

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must carry a time zone offset, e.g. 2026-11-22T10:00:00Z")
        return v


def flow_action_event(
    action: FlowAction, *, tenant: str, hash_key: bytes, now: datetime
) -> CanonicalEvent:
    """The canonical event a flow action reports. ValueError names the field."""
    p = action.profile
    email_hash = None
    if p.email:
        try:
            email_hash = hash_email(hash_key, p.email)
        except ValueError as exc:
            raise ValueError(f"profile.email: {exc}") from None
    phone = None
    if p.phone_number:
        try:
            phone = normalise_phone(p.phone_number)
        except ValueError as exc:
            raise ValueError(f"profile.phone_number: {exc}") from None
    if not (email_hash or p.id or phone or p.external_id):
        raise ValueError("profile: needs at least one of email, id, phone_number, external_id")
    return CanonicalEvent(
        tenant=tenant,
        esp=ESP,
        esp_event_id=f"flow-action:{action.id}",
        event_type=event_type_of(action.event),
        occurred_at=action.occurred_at or now,
        identifiers=Identifiers(
            email_hash=email_hash,
            esp_profile_id=p.id,
            phone=phone,
            external_ids={"klaviyo_external_id": p.external_id} if p.external_id else {},
        ),
        flow_id=action.flow_id,
        message_id=action.message_id,
        properties={**action.properties, "$source": "flow_webhook_action"},
    )
