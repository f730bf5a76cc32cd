"""Small builders for canonical events in tests."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sendflowr.events import CanonicalEvent, EventType, Identifiers

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


def email_hash(n: int) -> str:
    return hashlib.sha256(f"person{n}@example.test".encode()).hexdigest()


def make_event(
    n: int,
    *,
    tenant: str = "acme",
    person: int = 0,
    event_type: EventType = EventType.OPENED,
    at: datetime | None = None,
    machine: bool = False,
    identifiers: Identifiers | None = None,  # default: the person's email hash
    **extra: Any,
) -> CanonicalEvent:
    return CanonicalEvent(
        tenant=tenant,
        esp="klaviyo",
        esp_event_id=f"evt-{n}",
        event_type=event_type,
        occurred_at=at or T0 + timedelta(minutes=n),
        identifiers=identifiers or Identifiers(email_hash=email_hash(person)),
        is_machine_open=machine,
        **extra,
    )


def payload(n: int, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "tenant": "acme",
        "esp": "klaviyo",
        "esp_event_id": f"evt-{n}",
        "event_type": "opened",
        "occurred_at": (T0 + timedelta(minutes=n)).isoformat(),
        "identifiers": {"email_hash": email_hash(n % 7)},
    }
    body.update(overrides)
    return body


def radoslaw_dir() -> Path | None:
    """../shared/data/radoslaw_email beside the repository (or under $SENDFLOWR_SHARED_DIR)."""
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "data" / "radoslaw_email"]
    if shared := os.environ.get("SENDFLOWR_SHARED_DIR"):
        candidates.append(Path(shared) / "data" / "radoslaw_email")
    return next((p for p in candidates if (p / "out.radoslaw_email").is_file()), None)


def klaviyo_webhook_item(
    event_id: str,
    profile_id: str,
    profile_attributes: dict[str, Any],
    at: datetime,
    *,
    uuid: str | None = None,
) -> dict[str, Any]:
    """One Klaviyo webhook `data[]` item: an Opened Email event of one profile, with the
    profile and the metric in `included`, as Klaviyo sends it."""
    attributes: dict[str, Any] = {"timestamp": int(at.timestamp()), "datetime": at.isoformat()}
    if uuid is not None:
        attributes["uuid"] = uuid
    attributes["event_properties"] = {"$message": "msg1"}
    return {
        "external_id": event_id,
        "topic": "event:klaviyo.opened_email",
        "payload": {
            "data": {
                "type": "event",
                "id": event_id,
                "attributes": attributes,
                "relationships": {
                    "profile": {"data": {"type": "profile", "id": profile_id}},
                    "metric": {"data": {"type": "metric", "id": "M1"}},
                },
            },
            "included": [
                {"type": "profile", "id": profile_id, "attributes": profile_attributes},
                {"type": "metric", "id": "M1", "attributes": {"name": "Opened Email"}},
            ],
        },
    }
