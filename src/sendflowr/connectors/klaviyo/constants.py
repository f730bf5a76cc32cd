"""Facts about Klaviyo's API that the client, the connector and the simulator share.

Every value here is checked against Klaviyo's official OpenAPI description
(`../shared/klaviyo-openapi/stable.json`) by `tests/klaviyo/test_constants.py`, so the
rate limits and page sizes we obey are the ones Klaviyo publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sendflowr.events import EventType

ESP: Final = "klaviyo"  # the `esp` of canonical events and accounts from Klaviyo
REVISION: Final = "2026-07-15"
API_BASE_URL: Final = "https://a.klaviyo.com"
OAUTH_AUTHORIZE_URL: Final = "https://www.klaviyo.com/oauth/authorize"
OAUTH_TOKEN_PATH: Final = "/oauth/token"  # noqa: S105 - a path, not a password
OAUTH_REVOKE_PATH: Final = "/oauth/revoke"
JSON_API: Final = "application/vnd.api+json"

# Webhook delivery headers (SOURCE.md beside the spec).
HEADER_WEBHOOK_ID: Final = "Klaviyo-Webhook-Id"
HEADER_TIMESTAMP: Final = "Klaviyo-Timestamp"
HEADER_SIGNATURE: Final = "Klaviyo-Signature"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Klaviyo's published limit for one operation: `burst` per second, `steady` per minute."""

    burst_per_second: int
    steady_per_minute: int


# (method, path template) -> limit, for every operation SendFlowr or its simulator uses.
RATE_LIMITS: Final[dict[tuple[str, str], RateLimit]] = {
    ("GET", "/api/accounts"): RateLimit(1, 15),
    ("GET", "/api/metrics"): RateLimit(10, 150),
    ("GET", "/api/metrics/{id}"): RateLimit(10, 150),
    ("GET", "/api/events"): RateLimit(350, 3500),
    ("POST", "/api/events"): RateLimit(350, 3500),
    ("GET", "/api/events/{id}"): RateLimit(10, 150),
    ("GET", "/api/profiles"): RateLimit(75, 750),
    ("GET", "/api/profiles/{id}"): RateLimit(75, 750),
    ("GET", "/api/campaigns"): RateLimit(10, 150),
    ("GET", "/api/campaigns/{id}"): RateLimit(10, 150),
    ("GET", "/api/flows"): RateLimit(3, 60),
    ("GET", "/api/flows/{id}"): RateLimit(3, 60),
    ("POST", "/api/event-bulk-create-jobs"): RateLimit(10, 150),
    ("POST", "/api/campaign-send-jobs"): RateLimit(10, 150),
    ("GET", "/api/campaign-send-jobs/{id}"): RateLimit(10, 150),
    ("GET", "/api/lists/{id}/profiles"): RateLimit(75, 750),
    ("GET", "/api/segments/{id}/profiles"): RateLimit(75, 750),
    ("GET", "/api/webhooks"): RateLimit(1, 15),
    ("POST", "/api/webhooks"): RateLimit(1, 15),
    ("GET", "/api/webhooks/{id}"): RateLimit(1, 15),
    ("DELETE", "/api/webhooks/{id}"): RateLimit(1, 15),
    ("GET", "/api/webhook-topics"): RateLimit(1, 15),
}

# Largest page[size] each list endpoint accepts (from the spec's parameter maximum).
MAX_PAGE_SIZE: Final[dict[str, int]] = {
    "/api/events": 1000,
    "/api/profiles": 100,
    "/api/campaigns": 100,
    "/api/flows": 50,
    "/api/lists/{id}/profiles": 100,
    "/api/segments/{id}/profiles": 100,
}

# Klaviyo's built-in metric names -> the canonical event type they become.
METRIC_EVENT_TYPES: Final[dict[str, EventType]] = {
    "Received Email": EventType.RECEIVED,
    "Opened Email": EventType.OPENED,
    "Clicked Email": EventType.CLICKED,
    "Bounced Email": EventType.BOUNCED,
    "Marked Email as Spam": EventType.SPAM_COMPLAINT,
    "Unsubscribed from Email Marketing": EventType.UNSUBSCRIBED,
    "Placed Order": EventType.ORDERED,
    "Active on Site": EventType.SITE_VISIT,
    "Viewed Product": EventType.PRODUCT_VIEW,
}
EVENT_TYPE_METRICS: Final[dict[EventType, str]] = {t: n for n, t in METRIC_EVENT_TYPES.items()}
# Older accounts name the unsubscribe metric plainly; both are read.
METRIC_ALIASES: Final[dict[str, EventType]] = {"Unsubscribed": EventType.UNSUBSCRIBED}
