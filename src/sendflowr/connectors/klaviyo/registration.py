"""`sendflowr webhooks register`: subscribe SendFlowr to a tenant's live Klaviyo events.

Creates (once) a Klaviyo system webhook pointing at /api/webhook/klaviyo/{tenant} for the
engagement topics the account offers, signed with the tenant's webhook secret (generated and
stored encrypted when the tenant has none).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from sendflowr.connectors.klaviyo.client import KlaviyoClient
from sendflowr.connectors.klaviyo.constants import ESP, METRIC_ALIASES, METRIC_EVENT_TYPES
from sendflowr.runtime import Runtime

WEBHOOK_NAME = "SendFlowr engagement"


def slug(metric_name: str) -> str:
    """A topic's metric part: "Opened Email" -> opened_email."""
    return re.sub(r"[^a-z0-9]+", "_", metric_name.lower()).strip("_")


WANTED = frozenset(slug(m) for m in (*METRIC_EVENT_TYPES, *METRIC_ALIASES))


def wanted(topic_id: str) -> bool:
    """event:<integration>.<metric> topics for the metrics SendFlowr uses (Klaviyo's own
    email metrics are event:klaviyo.*; orders and site activity come from integrations)."""
    kind, _, rest = topic_id.partition(":")
    return kind == "event" and rest.partition(".")[2] in WANTED


def endpoint_url(runtime: Runtime, tenant: str) -> str:
    return f"{runtime.settings.public_url}/api/webhook/klaviyo/{tenant}"


@dataclass(frozen=True, slots=True)
class Registration:
    tenant: str
    webhook_id: str
    endpoint_url: str
    topics: tuple[str, ...]
    created: bool


async def register_webhook(runtime: Runtime, tenant: str, client: KlaviyoClient) -> Registration:
    url = endpoint_url(runtime, tenant)
    for hook in await client.list_webhooks():
        if hook.endpoint_url == url and runtime.accounts.webhook_secret(tenant, ESP):
            return Registration(tenant, hook.id, url, hook.topic_ids, created=False)
    topics = sorted(t.id for t in await client.list_webhook_topics() if wanted(t.id))
    if not topics:
        raise LookupError(f"tenant {tenant!r}: the Klaviyo account offers no engagement topics")
    secret = runtime.accounts.webhook_secret(tenant, ESP)
    if secret is None:
        secret = secrets.token_urlsafe(32)
        runtime.accounts.set_webhook_secret(tenant, ESP, secret)
    hook = await client.create_webhook(WEBHOOK_NAME, url, secret, topics)
    return Registration(tenant, hook.id, url, tuple(topics), created=True)
