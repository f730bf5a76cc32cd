"""Campaigns and flows metadata, fetched for names and counts in the data summaries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sendflowr.connectors.klaviyo.client import KlaviyoClient
from sendflowr.storage.metadata.catalog import CatalogItem


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _item(kind: str, resource: Mapping[str, Any]) -> CatalogItem | None:
    rid = resource.get("id")
    attrs = resource.get("attributes")
    if not isinstance(rid, str) or not isinstance(attrs, dict):
        return None
    name = attrs.get("name")
    return CatalogItem(
        kind="campaign" if kind == "campaign" else "flow",
        esp_id=rid,
        name=str(name) if name is not None else rid,
        status=str(attrs["status"]) if attrs.get("status") is not None else None,
        channel="email" if kind == "campaign" else None,
        sent_at=_when(attrs.get("send_time")) if kind == "campaign" else None,
        raw=dict(resource),
    )


async def fetch_catalog(client: KlaviyoClient) -> list[CatalogItem]:
    items: list[CatalogItem] = []
    async for campaign in client.iter_campaigns(channel="email"):
        if (item := _item("campaign", campaign)) is not None:
            items.append(item)
    async for flow in client.iter_flows():
        if (item := _item("flow", flow)) is not None:
            items.append(item)
    return items
