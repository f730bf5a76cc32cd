"""How Klaviyo's raw payloads are kept in the archive and turned back into canonical events.

Kept side by side so the two directions cannot drift apart:
- a backfill event resource (GET /api/events, as received) with its metric and the profile
  it references from the page's `included` (context: {"metric_id", "metric_name", "included"});
- a webhook `data[]` item (as received);
- a flow webhook action body (as received; its time defaults to when it was received).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from sendflowr.connectors.klaviyo.flow_actions import FlowAction, flow_action_event
from sendflowr.connectors.klaviyo.normalize import normalize_page, normalize_webhook_item
from sendflowr.events import CanonicalEvent


def _profile_ref(resource: Mapping[str, Any]) -> str | None:
    rels = resource.get("relationships")
    rel = rels.get("profile") if isinstance(rels, Mapping) else None
    data = rel.get("data") if isinstance(rel, Mapping) else None
    pid = data.get("id") if isinstance(data, Mapping) else None
    return str(pid) if pid is not None else None


def backfill_rows(
    events: Sequence[Any],
    profiles: Mapping[str, Mapping[str, Any]],
    rejected: Sequence[Any],
    *,
    metric_id: str,
    metric_name: str,
) -> tuple[list[str], list[str]]:
    """(payloads, contexts) for the accepted resources of one page: those not in `rejected`
    (compared by identity: the very objects the normaliser refused)."""
    refused = {id(r) for r in rejected}
    payloads: list[str] = []
    contexts: list[str] = []
    for raw in events:
        if id(raw) in refused:
            continue
        pid = _profile_ref(raw) if isinstance(raw, Mapping) else None
        profile = profiles.get(pid) if pid is not None else None
        payloads.append(orjson.dumps(raw, default=str).decode())
        contexts.append(
            orjson.dumps(
                {
                    "metric_id": metric_id,
                    "metric_name": metric_name,
                    "included": [profile] if profile is not None else [],
                },
                default=str,
            ).decode()
        )
    return payloads, contexts


def backfill_rows_from_bytes(
    accepted: Sequence[tuple[bytes, bytes | None]], *, metric_id: str, metric_name: str
) -> tuple[list[str], list[str]]:
    """`backfill_rows` from bytes as received: (event resource, its included profile or
    None) for each accepted event; the same rows, without re-encoding the resources."""
    payloads: list[str] = []
    contexts: list[str] = []
    for event, profile in accepted:
        payloads.append(event.decode())
        contexts.append(
            orjson.dumps(
                {
                    "metric_id": metric_id,
                    "metric_name": metric_name,
                    "included": [orjson.Fragment(profile)] if profile is not None else [],
                }
            ).decode()
        )
    return payloads, contexts


@dataclass
class _Page:
    events: list[Any]
    profiles: dict[str, Any] = field(default_factory=dict)


def event_from_backfill_row(
    payload: str, context: str | None, *, tenant: str, hash_key: bytes
) -> CanonicalEvent:
    ctx = orjson.loads(context or "{}")
    page = _Page([orjson.loads(payload)], {str(p.get("id")): p for p in ctx.get("included", [])})
    good, bad = normalize_page(
        page,
        {ctx["metric_id"]: ctx["metric_name"]},
        tenant=tenant,
        hash_key=hash_key,
        metric_id=ctx["metric_id"],
    )
    if bad:
        raise ValueError(str(bad[0][1]))
    return good[0]


def event_from_webhook_row(payload: str, *, tenant: str, hash_key: bytes) -> CanonicalEvent:
    return normalize_webhook_item(orjson.loads(payload), tenant=tenant, hash_key=hash_key)


def event_from_flow_action_row(
    payload: str, *, tenant: str, hash_key: bytes, received_at: datetime
) -> CanonicalEvent:
    action = FlowAction.model_validate_json(payload)
    return flow_action_event(action, tenant=tenant, hash_key=hash_key, now=received_at)
