"""What an intent can name: the tenant's Klaviyo catalogue, and the choices and limits of the
intent fields (`/intent-options`), so a form offers exactly what the API accepts.

`kind=campaign` and `kind=flow` read the catalogue the backfill stored (as of the tenant's last
backfill). `kind=metric` asks Klaviyo now: the backfill stores only the engagement metrics, while
a binding names the metric that triggers a flow, and the binding check (routes/intents.py) tests
it against this same live list. When Klaviyo cannot be reached the stored metrics are answered
instead (`source: "stored"`, `note` says why): a form still has choices, and the binding check
has the last word.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from sendflowr.api.deps import RuntimeDep
from sendflowr.api.schemas import TENANT_PATTERN
from sendflowr.connectors.klaviyo.client import KlaviyoAuthError, KlaviyoError
from sendflowr.connectors.klaviyo.constants import ESP as KLAVIYO
from sendflowr.connectors.klaviyo.retry import RetryPolicy
from sendflowr.errors import ConflictError
from sendflowr.events import EventType
from sendflowr.execution.registry import ESPS
from sendflowr.intents import MAX_HOT_PATH_SECONDS, MAX_WINDOW_SECONDS, SUPPRESSION_SOURCES
from sendflowr.runtime import Runtime

router = APIRouter(prefix="/api/tenants/{tenant}", tags=["catalog"])

TenantPath = Annotated[str, Path(pattern=TENANT_PATTERN, max_length=63)]
Kind = Literal["campaign", "flow", "metric"]
# A person is waiting for this list: two quick tries, then the stored metrics.
LIVE_RETRY = RetryPolicy(max_attempts=2, max_total_wait=1.0, initial_backoff=0.2)


class CatalogItemOut(BaseModel):
    id: str
    name: str
    status: str | None = None
    channel: str | None = None
    sent_at: datetime | None = None


class CatalogOut(BaseModel):
    tenant: str
    esp: str
    kind: Kind
    source: Literal["esp", "stored"]
    items: list[CatalogItemOut]
    truncated: bool
    note: str | None = None


class EspChoiceOut(BaseModel):
    esp: str
    connected: bool
    status: str | None = Field(None, description="the tenant's account status, if any")


class IntentOptionsOut(BaseModel):
    tenant: str
    event_types: list[str] = Field(description="what a hot-path signal can name")
    suppression_sources: list[str]
    esps: list[EspChoiceOut] = Field(description="what a binding can name, and whether connected")
    max_window_seconds: int
    max_hot_path_seconds: int


async def _metrics(runtime: Runtime, tenant: str) -> list[CatalogItemOut]:
    """The account's metrics, asked of Klaviyo (KlaviyoError when it cannot answer)."""
    from sendflowr.connectors.klaviyo.client import KlaviyoClient
    from sendflowr.connectors.klaviyo.factory import account_auth, api_url

    account = runtime.accounts.find(tenant, KLAVIYO)
    if account is None or account.status != "connected":
        state = "has not connected" if account is None else f"has a {account.status} account for"
        raise ConflictError(
            f"tenant {tenant!r} {state} Klaviyo: connect it at "
            f"/api/tenants/{tenant}/accounts/klaviyo first",
            field="esp",
        )
    client = KlaviyoClient(
        account_auth(runtime, tenant), base_url=api_url(runtime, tenant), retry=LIVE_RETRY
    )
    try:
        async with client:
            metrics = await client.list_metrics()
    except KlaviyoAuthError as exc:
        raise ConflictError(
            f"Klaviyo refused the tenant's credentials ({exc}): reconnect the account",
            field="esp",
        ) from None
    by_name = {m.name: m for m in metrics if m.name}
    return [CatalogItemOut(id=by_name[n].id, name=n) for n in sorted(by_name)]


@router.get("/catalog", response_model=CatalogOut)
async def get_catalog(
    tenant: TenantPath,
    runtime: RuntimeDep,
    kind: Annotated[Kind, Query(description="campaign, flow or metric")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> CatalogOut:
    """The tenant's Klaviyo campaigns or flows (as stored by the last backfill) or metrics
    (asked of Klaviyo now), sorted by name; `truncated` when there were more than `limit`."""
    runtime.metadata.get_tenant(tenant)  # 404 for an unknown tenant
    note = None
    source: Literal["esp", "stored"] = "stored"
    items: list[CatalogItemOut] | None = None
    if kind == "metric":
        try:
            items = await _metrics(runtime, tenant)
            source = "esp"
        except KlaviyoError as exc:
            note = f"Klaviyo could not be asked ({exc}); these are the metrics last stored"
    if items is None:
        items = [
            CatalogItemOut(
                id=i.esp_id, name=i.name, status=i.status, channel=i.channel, sent_at=i.sent_at
            )
            for i in runtime.catalog.items(tenant, kind, limit=limit + 1)
        ]
    return CatalogOut(
        tenant=tenant,
        esp=KLAVIYO,
        kind=kind,
        source=source,
        items=items[:limit],
        truncated=len(items) > limit,
        note=note,
    )


@router.get("/intent-options", response_model=IntentOptionsOut)
def intent_options(tenant: TenantPath, runtime: RuntimeDep) -> IntentOptionsOut:
    """The values an intent's fields accept for this tenant: hot-path event types, suppression
    sources, the ESPs a binding can name (with the tenant's account status) and the limits."""
    runtime.metadata.get_tenant(tenant)
    accounts = {a.esp: a for a in runtime.accounts.list(tenant)}
    return IntentOptionsOut(
        tenant=tenant,
        event_types=[t.value for t in EventType],
        suppression_sources=sorted(SUPPRESSION_SOURCES),
        esps=[
            EspChoiceOut(
                esp=name,
                connected=name in accounts and accounts[name].status == "connected",
                status=accounts[name].status if name in accounts else None,
            )
            for name in sorted(ESPS)
        ],
        max_window_seconds=MAX_WINDOW_SECONDS,
        max_hot_path_seconds=MAX_HOT_PATH_SECONDS,
    )
