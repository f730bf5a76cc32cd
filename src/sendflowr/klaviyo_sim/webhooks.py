"""Webhooks as Klaviyo sends them: registered subscriptions, signed JSON deliveries.

A delivery is `POST endpoint_url` with body
`{"data": [{"external_id", "topic", "payload"}], "meta": {"klaviyo_account_id",
"klaviyo_webhook_id", "timestamp"}}`, where each payload is what
`GET /api/events/{id}?include=profile,metric` returns, and headers Klaviyo-Webhook-Id,
Klaviyo-Timestamp (unix seconds) and Klaviyo-Signature (`sign_webhook`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import httpx
import orjson

from sendflowr.connectors.klaviyo.constants import (
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_WEBHOOK_ID,
)
from sendflowr.klaviyo_sim import resources
from sendflowr.klaviyo_sim.brand import Brand

BATCH: Final = 100  # events per delivery
_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def sign_webhook(secret: str, body: bytes, timestamp: str) -> str:
    """Klaviyo-Signature: hex HMAC-SHA256, keyed by the webhook's secret, of the raw body
    followed by the Klaviyo-Timestamp value."""
    return hmac.new(secret.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


def new_webhook_id() -> str:
    """26 Crockford base-32 characters, like Klaviyo's (ULID-style) webhook ids."""
    return "01" + "".join(secrets.choice(_CROCKFORD) for _ in range(24))


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    name: str
    description: str | None
    endpoint_url: str
    secret_key: str
    topics: tuple[str, ...]
    created: int

    def resource(self) -> resources.Json:
        return resources.webhook(
            self.id, self.name, self.description, self.endpoint_url, self.created, self.topics
        )


def event_payload(brand: Brand, ordinal: int) -> resources.Json:
    """The document GET /api/events/{id}?include=profile,metric answers (links unresolved)."""
    store = brand.events
    ident = store.ids[ordinal]
    return resources.single(
        orjson.Fragment(store.rendered[ordinal]),
        f"{resources.BASE}/api/events/{ident}/",
        included=[
            orjson.Fragment(brand.rendered_profiles[int(store.profile[ordinal])]),
            orjson.Fragment(brand.rendered_metrics[int(store.metric[ordinal])]),
        ],
    )


def delivery_body(
    brand: Brand, webhook: Webhook, ordinals: Sequence[int], base_url: str, timestamp: int
) -> bytes:
    store = brand.events
    doc: resources.Json = {
        "data": [
            {
                "external_id": store.ids[o],
                "topic": brand.metrics[int(store.metric[o])].topic,
                "payload": event_payload(brand, o),
            }
            for o in ordinals
        ],
        "meta": {
            "klaviyo_account_id": brand.account_id,
            "klaviyo_webhook_id": webhook.id,
            "timestamp": resources.iso(timestamp),
        },
    }
    return resources.finish(doc, base_url)


@dataclass(frozen=True, slots=True)
class Outcome:
    webhook_id: str
    events: int
    status: int | None
    error: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "webhook_id": self.webhook_id,
            "events": self.events,
            "status": self.status,
            "error": self.error,
        }


async def deliver(
    client: httpx.AsyncClient, webhook: Webhook, body: bytes, timestamp: int, events: int
) -> Outcome:
    ts = str(timestamp)
    headers = {
        "Content-Type": "application/json",
        HEADER_WEBHOOK_ID: webhook.id,
        HEADER_TIMESTAMP: ts,
        HEADER_SIGNATURE: sign_webhook(webhook.secret_key, body, ts),
    }
    try:
        response = await client.post(webhook.endpoint_url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(webhook.id, events, None, f"{type(exc).__name__}: {exc}")
    return Outcome(webhook.id, events, response.status_code, None)


def plan(
    brand: Brand, webhooks: Sequence[Webhook], ordinals: Sequence[int]
) -> list[tuple[Webhook, list[int]]]:
    """(webhook, batch of event ordinals) for every webhook subscribed to the events' topics."""
    out: list[tuple[Webhook, list[int]]] = []
    store = brand.events
    for hook in webhooks:
        topics = set(hook.topics)
        mine = [o for o in ordinals if brand.metrics[int(store.metric[o])].topic in topics]
        out.extend((hook, mine[i : i + BATCH]) for i in range(0, len(mine), BATCH))
    return out
