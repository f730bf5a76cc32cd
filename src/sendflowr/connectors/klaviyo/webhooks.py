"""Klaviyo webhook deliveries: signature, timestamp tolerance and envelope checks. Pure.

Klaviyo signs a delivery with hex HMAC-SHA256, keyed by the webhook's secret, over the raw
body followed by the `Klaviyo-Timestamp` header value. Verification is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson


class WebhookAuthError(Exception):
    """The delivery is not authentic (401)."""


class WebhookReplayError(Exception):
    """The delivery was accepted before (409)."""


class WebhookBodyError(Exception):
    """The body is malformed (400); `loc` names the field."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


def sign(secret: str, body: bytes, timestamp: str) -> str:
    return hmac.new(secret.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


def parse_timestamp(raw: str) -> datetime:
    """Unix seconds (or milliseconds), or ISO 8601 with an offset."""
    text = raw.strip()
    if text.isdigit():
        value = int(text)
        if value > 10**11:  # milliseconds
            value //= 1000
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise WebhookAuthError("Klaviyo-Timestamp is out of range") from None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WebhookAuthError("Klaviyo-Timestamp is neither unix seconds nor ISO 8601") from None
    if at.tzinfo is None:
        raise WebhookAuthError("Klaviyo-Timestamp has no time zone")
    return at


def verify(
    *,
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: datetime,
    tolerance: timedelta,
) -> None:
    """Raise WebhookAuthError unless the signature matches and the timestamp is fresh."""
    if not timestamp:
        raise WebhookAuthError("missing Klaviyo-Timestamp header")
    if not signature:
        raise WebhookAuthError("missing Klaviyo-Signature header")
    expected = sign(secret, body, timestamp)
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise WebhookAuthError("Klaviyo-Signature does not match the body and timestamp")
    at = parse_timestamp(timestamp)
    if abs(now - at) > tolerance:
        raise WebhookAuthError(
            f"Klaviyo-Timestamp is {abs(now - at).total_seconds():.0f} s from now; "
            f"at most {tolerance.total_seconds():.0f} s is accepted"
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    items: list[dict[str, Any]]
    webhook_id: str | None
    account_id: str | None


def parse_delivery(body: bytes, webhook_id_header: str | None) -> Delivery:
    """The envelope {"data": [...], "meta": {...}}; items are checked by normalisation."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WebhookBodyError((), f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WebhookBodyError((), "the body must be a JSON object")
    data = doc.get("data")
    if not isinstance(data, list):
        raise WebhookBodyError(("data",), "must be an array of webhook items")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise WebhookBodyError(("data", i), "must be an object")
    meta = doc.get("meta", {})
    if not isinstance(meta, Mapping):
        raise WebhookBodyError(("meta",), "must be an object")
    meta_id = meta.get("klaviyo_webhook_id")
    if meta_id is not None and webhook_id_header is not None and str(meta_id) != webhook_id_header:
        raise WebhookBodyError(
            ("meta", "klaviyo_webhook_id"), "does not match the Klaviyo-Webhook-Id header"
        )
    account = meta.get("klaviyo_account_id")
    return Delivery(
        items=data,
        webhook_id=str(meta_id) if meta_id is not None else webhook_id_header,
        account_id=str(account) if account is not None else None,
    )
