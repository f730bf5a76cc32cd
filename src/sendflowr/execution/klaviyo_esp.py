"""Firing triggers at Klaviyo: an event of the intent's metric per person, which starts the
brand's flow.

Several due sends go out as one bulk create job (up to 1,000 events, 150 jobs a minute); a lone
send goes through POST /api/events. Each event's `unique_id` is the decision id, so a send
repeated after a crash is one event in Klaviyo. A bulk job Klaviyo refuses as a whole (one bad
profile, say) is retried one event at a time, so one bad address fails alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from sendflowr.connectors.klaviyo.client import (
    BULK_EVENTS_MAX,
    BulkEvent,
    KlaviyoClient,
    KlaviyoError,
    KlaviyoRateLimited,
    ProfileRef,
)
from sendflowr.connectors.klaviyo.constants import ESP, RATE_LIMITS
from sendflowr.execution.base import Send, SendResult
from sendflowr.runtime import Runtime

BULK_PER_MINUTE: Final = RATE_LIMITS[("POST", "/api/event-bulk-create-jobs")].steady_per_minute
CEILING_PER_MINUTE: Final = BULK_PER_MINUTE * BULK_EVENTS_MAX  # events a minute, bulk


def profile_of(send: Send) -> ProfileRef:
    match send.recipient_type:
        case "email":
            return ProfileRef(email=send.recipient_value)
        case "klaviyo_id":
            return ProfileRef(id=send.recipient_value)
        case "phone":
            return ProfileRef(phone_number=send.recipient_value)
        case _:
            return ProfileRef(external_id=send.recipient_value)


def properties_of(send: Send, binding: Mapping[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {
        "sendflowr_decision_id": send.decision_id,
        "intent_id": send.intent_id,
        "explanation_ref": send.explanation_ref,
        "target_minute_utc": send.target_at.isoformat(),
        "trigger_timestamp_utc": send.trigger_at.isoformat(),
    }
    for key in ("campaign_id", "template_id"):
        if binding.get(key):
            props[key] = binding[key]
    return props


def _failure(send: Send, exc: KlaviyoError) -> SendResult:
    retry_after = exc.retry_after if isinstance(exc, KlaviyoRateLimited) else None
    return SendResult(
        send.decision_id, False, str(exc)[:500], retryable=exc.retryable, retry_after=retry_after
    )


class KlaviyoDispatcher:
    esp = ESP

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._clients: dict[str, KlaviyoClient] = {}

    def max_batch(self, binding: Mapping[str, Any]) -> int:
        return BULK_EVENTS_MAX

    def _client(self, tenant: str) -> KlaviyoClient:
        client = self._clients.get(tenant)
        if client is None:
            from sendflowr.connectors.klaviyo.factory import open_client

            client = self._clients[tenant] = open_client(self.runtime, tenant)
        return client

    async def send(
        self,
        tenant: str,
        binding: Mapping[str, Any],
        credentials: Mapping[str, Any],
        sends: Sequence[Send],
    ) -> list[SendResult]:
        client = self._client(tenant)
        metric = str(binding["metric_name"])
        if len(sends) == 1:
            return [await self._one(client, metric, binding, sends[0])]
        items = [
            BulkEvent(
                metric_name=metric,
                profile=profile_of(s),
                properties=properties_of(s, binding),
                unique_id=s.decision_id,
                time=s.trigger_at,
            )
            for s in sends
        ]
        try:
            await client.bulk_create_events(items)
        except KlaviyoError as exc:
            if exc.retryable:
                return [_failure(s, exc) for s in sends]
            # refused as a whole: find the bad ones one at a time
            return [await self._one(client, metric, binding, s) for s in sends]
        return [SendResult(s.decision_id, True) for s in sends]

    async def _one(
        self, client: KlaviyoClient, metric: str, binding: Mapping[str, Any], send: Send
    ) -> SendResult:
        try:
            await client.create_event(
                metric, profile_of(send), properties_of(send, binding), send.decision_id,
                send.trigger_at,
            )  # fmt: skip
        except KlaviyoError as exc:
            return _failure(send, exc)
        return SendResult(send.decision_id, True)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.aclose()
