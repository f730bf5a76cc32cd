"""The dispatcher port: how a batch of due sends reaches one ESP.

The executor knows nothing of any ESP. It claims due triggers, groups them by intent, reads the
intent's current binding, and hands the group to the dispatcher registered for the binding's
ESP. Moving an intent to another ESP is therefore a change of binding (configuration), never of
timing or execution code.

Every send carries `decision_id`; a dispatcher must pass it to the ESP as the idempotency key
(Klaviyo: the event's `unique_id`; the webhook ESP: each item's `decision_id` and an
`Idempotency-Key` header), so a send repeated after a crash is deduplicated by the ESP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Send:
    """One trigger to fire."""

    decision_id: str
    tenant: str
    intent_id: str
    universal_id: str
    recipient_type: str  # email | klaviyo_id | phone | external_id
    recipient_value: str
    target_at: datetime  # the minute the message should land
    trigger_at: datetime  # when the ESP is called (target minus latency)
    explanation_ref: str


@dataclass(frozen=True, slots=True)
class SendResult:
    decision_id: str
    ok: bool
    error: str | None = None
    retryable: bool = False  # try again later (429, 5xx, network); else failed for good
    retry_after: float | None = None  # seconds, when the ESP said


class Dispatcher(Protocol):
    """Sends a batch of due triggers of one intent to one ESP."""

    esp: str

    def max_batch(self, binding: Mapping[str, Any]) -> int:
        """How many sends one `send` call may carry."""
        ...

    async def send(
        self,
        tenant: str,
        binding: Mapping[str, Any],
        credentials: Mapping[str, Any],
        sends: Sequence[Send],
    ) -> list[SendResult]:
        """Fire `sends` (at most `max_batch`); one result per send, in order. Never raises
        for an ESP's refusal or an outage: those are results."""
        ...

    async def aclose(self) -> None: ...
