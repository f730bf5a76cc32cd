"""JSON:API resources shaped as the spec's response schemas, and the documents around them.

Links are written against the placeholder `BASE`; `finish()` puts the request's base URL in
place once per response, so every resource can be rendered once (at brand build) and reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson

BASE: Final = "@@SFSIM_BASE@@"
_BASE_BYTES: Final = BASE.encode()

Json = dict[str, Any]


def iso(ts: int | float) -> str:
    """ISO 8601 with offset, seconds resolution, as Klaviyo writes datetimes."""
    return datetime.fromtimestamp(int(ts), UTC).isoformat()


def _rel(kind: str, ident: str, name: str) -> dict[str, str]:
    return {
        "self": f"{BASE}/api/{kind}/{ident}/relationships/{name}/",
        "related": f"{BASE}/api/{kind}/{ident}/{name}/",
    }


def _self(kind: str, ident: str) -> dict[str, str]:
    return {"self": f"{BASE}/api/{kind}/{ident}/"}


def event(
    ident: str,
    ts: int,
    uuid: str,
    properties: dict[str, Any],
    profile_id: str,
    metric_id: str,
) -> Json:
    return {
        "type": "event",
        "id": ident,
        "attributes": {
            "timestamp": ts,
            "event_properties": properties,
            "datetime": iso(ts),
            "uuid": uuid,
        },
        "relationships": {
            "profile": {
                "data": {"type": "profile", "id": profile_id},
                "links": _rel("events", ident, "profile"),
            },
            "metric": {
                "data": {"type": "metric", "id": metric_id},
                "links": _rel("events", ident, "metric"),
            },
        },
        "links": _self("events", ident),
    }


def _profile_attributes(
    email: str, tz: str, created: int, last_event: int | None
) -> dict[str, Any]:
    return {
        "email": email,
        "phone_number": None,
        "external_id": None,
        "first_name": None,
        "last_name": None,
        "organization": None,
        "locale": None,
        "title": None,
        "image": None,
        "created": iso(created),
        "updated": iso(created),
        "last_event_date": None if last_event is None else iso(last_event),
        "location": {
            "address1": None,
            "address2": None,
            "city": None,
            "country": None,
            "latitude": None,
            "longitude": None,
            "region": None,
            "zip": None,
            "timezone": tz,
            "ip": None,
        },
        "properties": {},
    }


def profile(ident: str, email: str, tz: str, created: int, last_event: int | None) -> Json:
    return {
        "type": "profile",
        "id": ident,
        "attributes": _profile_attributes(email, tz, created, last_event),
        "relationships": {
            "lists": {"links": _rel("profiles", ident, "lists")},
            "segments": {"links": _rel("profiles", ident, "segments")},
            "push-tokens": {"links": _rel("profiles", ident, "push-tokens")},
        },
        "links": _self("profiles", ident),
    }


def member(
    ident: str, email: str, tz: str, created: int, last_event: int | None, joined: int
) -> Json:
    """A profile as a list or segment member: the profile plus `joined_group_at`."""
    attributes = _profile_attributes(email, tz, created, last_event)
    attributes["joined_group_at"] = iso(joined)
    return {
        "type": "profile",
        "id": ident,
        "attributes": attributes,
        "links": _self("profiles", ident),
    }


def metric(ident: str, name: str, created: int, integration: dict[str, str]) -> Json:
    return {
        "type": "metric",
        "id": ident,
        "attributes": {
            "name": name,
            "created": iso(created),
            "updated": iso(created),
            "integration": integration,
        },
        "relationships": {"flow-triggers": {"links": _rel("metrics", ident, "flow-triggers")}},
        "links": _self("metrics", ident),
    }


def campaign(
    ident: str, name: str, message_id: str, send_ts: int, created_ts: int, audience: str
) -> Json:
    sent = iso(send_ts)
    return {
        "type": "campaign",
        "id": ident,
        "attributes": {
            "name": name,
            "status": "Sent",
            "archived": False,
            "audiences": {"included": [audience], "excluded": []},
            "send_options": {"use_smart_sending": True},
            "tracking_options": {
                "add_tracking_params": True,
                "custom_tracking_params": None,
                "is_tracking_clicks": True,
                "is_tracking_opens": True,
            },
            "send_strategy": {"method": "static", "datetime": sent, "options": {"is_local": False}},
            "created_at": iso(created_ts),
            "scheduled_at": sent,
            "updated_at": sent,
            "send_time": sent,
        },
        "relationships": {
            "campaign-messages": {
                "data": [{"type": "campaign-message", "id": message_id}],
                "links": _rel("campaigns", ident, "campaign-messages"),
            },
            "tags": {"data": [], "links": _rel("campaigns", ident, "tags")},
        },
        "links": _self("campaigns", ident),
    }


def flow(ident: str, name: str, trigger_type: str, created_ts: int) -> Json:
    return {
        "type": "flow",
        "id": ident,
        "attributes": {
            "name": name,
            "status": "live",
            "archived": False,
            "created": iso(created_ts),
            "updated": iso(created_ts),
            "trigger_type": trigger_type,
        },
        "relationships": {
            "flow-actions": {"links": _rel("flows", ident, "flow-actions")},
            "tags": {"links": _rel("flows", ident, "tags")},
        },
        "links": _self("flows", ident),
    }


def account(ident: str, name: str, timezone: str, currency: str, public_key: str) -> Json:
    return {
        "type": "account",
        "id": ident,
        "attributes": {
            "test_account": False,
            "contact_information": {
                "default_sender_name": name,
                "default_sender_email": "hello@shop.sim.sendflowr.test",
                "website_url": "https://shop.sim.sendflowr.test",
                "organization_name": name,
                "street_address": {
                    "address1": "1 Simulation Way",
                    "address2": None,
                    "city": "Boston",
                    "region": "MA",
                    "country": "US",
                    "zip": "02110",
                },
            },
            "industry": "Retail",
            "timezone": timezone,
            "preferred_currency": currency,
            "public_api_key": public_key,
            "locale": "en-US",
        },
        "links": _self("accounts", ident),
    }


def webhook(
    ident: str,
    name: str,
    description: str | None,
    endpoint_url: str,
    created_ts: int,
    topics: Sequence[str],
) -> Json:
    return {
        "type": "webhook",
        "id": ident,
        "attributes": {
            "name": name,
            "description": description,
            "endpoint_url": endpoint_url,
            "enabled": True,
            "created_at": iso(created_ts),
            "updated_at": iso(created_ts),
        },
        "relationships": {
            "webhook-topics": {
                "data": [{"type": "webhook-topic", "id": t} for t in topics],
                "links": _rel("webhooks", ident, "webhook-topics"),
            }
        },
        "links": _self("webhooks", ident),
    }


def webhook_topic(ident: str) -> Json:
    return {"type": "webhook-topic", "id": ident, "links": _self("webhook-topics", ident)}


def campaign_send_job(ident: str, status: str) -> Json:
    return {
        "type": "campaign-send-job",
        "id": ident,
        "attributes": {"status": status},
        "links": _self("campaign-send-jobs", ident),
    }


def render(resource: Json) -> bytes:
    """One resource as JSON bytes (links still against the placeholder)."""
    return orjson.dumps(resource)


def collection(
    data: Sequence[object],
    self_url: str,
    next_url: str | None = None,
    prev_url: str | None = None,
    included: Sequence[object] | None = None,
) -> Json:
    """A collection document; `data`/`included` items may be dicts or orjson.Fragment."""
    links: dict[str, str] = {"self": self_url}
    # The spec types next/prev as non-nullable strings: absent rather than null.
    if next_url is not None:
        links["next"] = next_url
    if prev_url is not None:
        links["prev"] = prev_url
    doc: Json = {"data": list(data), "links": links}
    if included is not None:
        doc["included"] = list(included)
    return doc


def single(data: object, self_url: str, included: Sequence[object] | None = None) -> Json:
    doc: Json = {"data": data, "links": {"self": self_url}}
    if included is not None:
        doc["included"] = list(included)
    return doc


def finish(doc: Json, base_url: str) -> bytes:
    """Serialise a document and point its links at `base_url` (no trailing slash)."""
    return orjson.dumps(doc).replace(_BASE_BYTES, base_url.encode())
