"""The data viewer's routes beside the summary and orders (backfill.py): top campaigns and
flows, and the orders as a CSV download."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from sendflowr.api.csv_export import CSV_RESPONSES, EXPORT_PAGE, csv_lines, csv_response, paged
from sendflowr.api.data_schemas import SourceRevenueOut, TopSourceOut, TopSourcesOut
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.routes.backfill import check_day, order_out
from sendflowr.runtime import Runtime
from sendflowr.storage.events.data_views import SourceKind, order_cursor

router = APIRouter(prefix="/api/connector", tags=["connector"])

CATALOG_MAX = 20_000  # campaigns read to name the top ones
ORDER_COLUMNS = (
    "occurred_at", "esp_event_id", "order_id", "universal_id", "value", "currency",
    "item_count", "items", "discount_code", "utm", "campaign_id", "flow_id", "message_id",
)  # fmt: skip


def _names(runtime: Runtime, tenant: str, kind: SourceKind) -> dict[str, str]:
    """Names by the id events carry. A Klaviyo campaign's events name its campaign message
    (`$message`), not the campaign: the catalog's raw campaign lists those messages."""
    if kind == "flow":
        return runtime.catalog.names(tenant, "flow")
    names: dict[str, str] = {}
    for item in runtime.catalog.items(tenant, "campaign", limit=CATALOG_MAX):
        names[item.esp_id] = item.name
        rel = (item.raw or {}).get("relationships")
        messages = rel.get("campaign-messages") if isinstance(rel, dict) else None
        data = messages.get("data") if isinstance(messages, dict) else None
        for message in data if isinstance(data, list) else []:
            if isinstance(message, dict) and isinstance(message.get("id"), str):
                names.setdefault(message["id"], item.name)
    return names


@router.get("/backfill/data/{tenant}/top", response_model=TopSourcesOut)
def top(
    tenant: str,
    runtime: RuntimeDep,
    kind: Annotated[SourceKind, Query(description="campaign or flow")] = "campaign",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> TopSourcesOut:
    """The tenant's top campaigns (or flows): deliveries, real opens, clicks, attributed
    orders and revenue per currency, highest order value first, then most clicks."""
    runtime.metadata.get_tenant(tenant)
    stats = runtime.events.top_sources(tenant, kind, limit)
    names = _names(runtime, tenant, kind) if stats else {}
    return TopSourcesOut(
        tenant=tenant,
        kind=kind,
        items=[
            TopSourceOut(
                id=s.source_id,
                name=names.get(s.source_id),
                deliveries=s.deliveries,
                opens=s.opens,
                clicks=s.clicks,
                orders=s.orders,
                revenue=[
                    SourceRevenueOut(currency=c or "unknown", revenue=round(v, 2))
                    for c, v in sorted(s.revenue.items())
                ],
            )
            for s in stats
        ],
    )


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode() if value else ""


def _order_line(row: dict[str, Any]) -> list[Any]:
    o = order_out(row)
    return [
        o.occurred_at,
        o.esp_event_id,
        o.order_id,
        o.universal_id,
        o.value,
        o.currency,
        len(o.items),
        _json(o.items),
        o.discount_code,
        _json(o.utm),
        o.campaign_id,
        o.flow_id,
        o.message_id,
    ]


@router.get(
    "/backfill/data/{tenant}/orders.csv",
    response_class=StreamingResponse,
    responses=CSV_RESPONSES,
)
def orders_csv(
    tenant: str,
    runtime: RuntimeDep,
    date_: Annotated[
        date | None, Query(alias="date", description="UTC day, e.g. 2024-12-25")
    ] = None,
) -> StreamingResponse:
    """Every order of the tenant (or of one UTC day), newest first, as a CSV download: items
    as a count and as JSON, UTM parameters as JSON. Cells that a spreadsheet would run as a
    formula start with an apostrophe."""
    runtime.metadata.get_tenant(tenant)
    check_day(date_)
    first = runtime.events.orders_page(tenant, date_, EXPORT_PAGE)
    rows = paged(
        first,
        lambda last: runtime.events.orders_page(tenant, date_, EXPORT_PAGE, order_cursor(last)),
        EXPORT_PAGE,
    )
    name = f"{tenant}-orders{'-' + date_.isoformat() if date_ else ''}.csv"
    return csv_response(name, csv_lines(ORDER_COLUMNS, map(_order_line, rows)))
