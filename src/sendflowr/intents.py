"""Intents: what a send means to the brand, and which ESP call carries it (pure, no I/O).

The timing layer decides *when*; an intent says *what*: its default decision window and ESP
latency, the signals that promote a send (hot paths), the suppression sources it respects and
its frequency-cap group. Its binding says which ESP call fires it (for Klaviyo: the metric of
the event that triggers a flow, optionally a campaign and template; for the webhook ESP: the
event name its receiver sees). Only the binding names an ESP, so moving an intent to another ESP
changes configuration, never timing code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from sendflowr.errors import InvalidInputError
from sendflowr.events import EventType

INTENT_ID: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
SUPPRESSION_SOURCES: Final = frozenset(
    {"unsubscribed", "bounced", "spam_complaint", "recent_order", "tenant_breaker"}
)
MAX_WINDOW_SECONDS: Final = 14 * 86_400
MAX_HOT_PATH_SECONDS: Final = 7 * 86_400
_KLAVIYO_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class HotPathSignal:
    """A signal (canonical event type) that, seen within `within_seconds` of now for a
    scheduled person, promotes their send to as soon as possible in the window."""

    event_type: str
    within_seconds: int

    def as_dict(self) -> dict[str, Any]:
        return {"event_type": self.event_type, "within_seconds": self.within_seconds}


@dataclass(frozen=True, slots=True)
class Intent:
    tenant: str
    intent_id: str
    name: str
    esp: str
    binding: dict[str, Any]
    description: str = ""
    window_seconds: int = 86_400
    latency_seconds: int | None = None  # None: the tenant's measured ESP latency
    hot_path_signals: tuple[HotPathSignal, ...] = ()
    suppression_sources: tuple[str, ...] = ()
    frequency_cap_group: str | None = None
    version: int = 1
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def config(self) -> dict[str, Any]:
        """The fields a change history compares (everything an operator sets)."""
        return {
            "name": self.name,
            "description": self.description,
            "window_seconds": self.window_seconds,
            "latency_seconds": self.latency_seconds,
            "hot_path_signals": [s.as_dict() for s in self.hot_path_signals],
            "suppression_sources": list(self.suppression_sources),
            "frequency_cap_group": self.frequency_cap_group,
            "esp": self.esp,
            "binding": dict(self.binding),
        }


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{field: [before, after]} for every field that differs (None for absent)."""
    keys = sorted(set(before) | set(after))
    return {k: [before.get(k), after.get(k)] for k in keys if before.get(k) != after.get(k)}


def _error(loc: tuple[str | int, ...], msg: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": "value_error"}


def validate_klaviyo_binding(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A Klaviyo binding: `metric_name` (the event that triggers the flow), optional
    `campaign_id` and `template_id`. Shape only; that they exist is checked against the
    account by the API."""
    errors = []
    allowed = {"metric_name", "campaign_id", "template_id"}
    for key in sorted(set(raw) - allowed):
        errors.append(_error(("binding", key), "unknown field for a Klaviyo binding"))
    metric = raw.get("metric_name")
    if not isinstance(metric, str) or not metric.strip():
        errors.append(_error(("binding", "metric_name"), "the metric that triggers the flow"))
    elif len(metric) > 128:
        errors.append(_error(("binding", "metric_name"), "at most 128 characters"))
    for key in ("campaign_id", "template_id"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not _KLAVIYO_ID.match(value)):
            errors.append(_error(("binding", key), "a Klaviyo id (letters, digits, _ or -)"))
    if errors:
        raise InvalidInputError(errors)
    out: dict[str, Any] = {"metric_name": str(metric).strip()}
    for key in ("campaign_id", "template_id"):
        if raw.get(key) is not None:
            out[key] = raw[key]
    return out


def validate_hot_paths(raw: Any) -> tuple[HotPathSignal, ...]:
    if not isinstance(raw, list):
        raise InvalidInputError([_error(("hot_path_signals",), "a list")])
    errors = []
    out = []
    types = {t.value for t in EventType}
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            errors.append(_error(("hot_path_signals", i), "an object {event_type, within_seconds}"))
            continue
        kind = item.get("event_type")
        within = item.get("within_seconds", 900)
        if kind not in types:
            errors.append(_error(("hot_path_signals", i, "event_type"), f"one of {sorted(types)}"))
        if (
            not isinstance(within, int)
            or isinstance(within, bool)
            or not 1 <= within <= MAX_HOT_PATH_SECONDS
        ):
            errors.append(
                _error(
                    ("hot_path_signals", i, "within_seconds"),
                    f"whole seconds from 1 to {MAX_HOT_PATH_SECONDS}",
                )
            )
        if not errors:
            out.append(HotPathSignal(str(kind), int(within)))
    if errors:
        raise InvalidInputError(errors)
    return tuple(out)


def validate_suppressions(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise InvalidInputError([_error(("suppression_sources",), "a list of names")])
    bad = [s for s in raw if s not in SUPPRESSION_SOURCES]
    if bad:
        raise InvalidInputError(
            [
                _error(
                    ("suppression_sources",),
                    f"unknown {bad}; known: {sorted(SUPPRESSION_SOURCES)}",
                )
            ]
        )
    return tuple(dict.fromkeys(raw))


def check_intent_id(intent_id: str) -> str:
    if not INTENT_ID.match(intent_id):
        raise InvalidInputError(
            [
                {
                    "loc": ["path", "intent_id"],
                    "msg": "1-100 lower-case letters, digits, '_', '.' or '-', starting with a "
                    "letter or digit",
                    "type": "value_error",
                }
            ]
        )
    return intent_id
