"""Tenants (brands). The Klaviyo connector adds their ESP accounts."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from sendflowr.api.auth import AdminOnly, OperatorOnly, PrincipalDep
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.routes.accounts import revoke_best_effort
from sendflowr.api.schemas import (
    TenantDetailOut,
    TenantIn,
    TenantOut,
    TenantPatchIn,
    TenantSettingsOut,
)
from sendflowr.storage.metadata.store import Tenant

router = APIRouter(prefix="/api/tenants", tags=["tenants"])


def _out(t: Tenant) -> TenantOut:
    return TenantOut(id=t.id, name=t.name, timezone=t.timezone, created_at=t.created_at)


@router.get("", response_model=list[TenantOut])
def list_tenants(runtime: RuntimeDep, principal: PrincipalDep) -> list[TenantOut]:
    """The tenants this key may act on (every tenant for an operator key)."""
    return [_out(t) for t in runtime.metadata.list_tenants() if principal.can_see(t.id)]


@router.post(
    "",
    response_model=TenantOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[OperatorOnly],
)
def create_tenant(body: TenantIn, runtime: RuntimeDep) -> TenantOut:
    return _out(runtime.metadata.create_tenant(Tenant(body.id, body.name, body.timezone)))


@router.get("/{tenant}", response_model=TenantOut)
def get_tenant(tenant: str, runtime: RuntimeDep) -> TenantOut:
    return _out(runtime.metadata.get_tenant(tenant))


def _detail(t: Tenant) -> TenantDetailOut:
    return TenantDetailOut(
        id=t.id,
        name=t.name,
        timezone=t.timezone,
        created_at=t.created_at,
        settings=TenantSettingsOut(
            notification_url=t.settings.get("notification_url"),
            esp_latency_seconds=t.settings.get("esp_latency_seconds"),
        ),
    )


@router.patch("/{tenant}", response_model=TenantDetailOut, dependencies=[AdminOnly])
def update_tenant(tenant: str, body: TenantPatchIn, runtime: RuntimeDep) -> TenantDetailOut:
    """Change a brand's name, time zone or settings; only the fields sent change, and a
    setting sent as null goes back to its default."""
    settings = (
        {k: getattr(body.settings, k) for k in body.settings.model_fields_set}
        if body.settings is not None
        else None
    )
    return _detail(
        runtime.metadata.update_tenant(
            tenant, name=body.name, timezone=body.timezone, settings=settings
        )
    )


@router.delete("/{tenant}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[AdminOnly])
async def delete_tenant(tenant: str, runtime: RuntimeDep) -> Response:
    """Delete a brand and everything SendFlowr keeps about it: its events and explanations,
    and in the metadata store its accounts, identity graph, backfills and catalogue; its OAuth
    tokens are revoked first (best effort)."""
    await run_in_threadpool(runtime.metadata.get_tenant, tenant)
    for account in await run_in_threadpool(runtime.accounts.list, tenant):
        await revoke_best_effort(runtime, tenant, account.esp)
    # Events first: if this fails the tenant still exists and the delete can be retried.
    await run_in_threadpool(runtime.events.delete_tenant, tenant)
    await run_in_threadpool(runtime.metadata.delete_tenant, tenant)
    runtime.identity.forget_cache(tenant)
    runtime.features.clear_tenant(tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
