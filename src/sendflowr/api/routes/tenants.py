"""Tenants (brands). The Klaviyo connector adds their ESP accounts."""

from __future__ import annotations

from fastapi import APIRouter, status

from sendflowr.api.deps import RuntimeDep
from sendflowr.api.schemas import TenantIn, TenantOut
from sendflowr.storage.metadata.store import Tenant

router = APIRouter(prefix="/api/tenants", tags=["tenants"])


def _out(t: Tenant) -> TenantOut:
    return TenantOut(id=t.id, name=t.name, timezone=t.timezone, created_at=t.created_at)


@router.get("", response_model=list[TenantOut])
def list_tenants(runtime: RuntimeDep) -> list[TenantOut]:
    return [_out(t) for t in runtime.metadata.list_tenants()]


@router.post("", response_model=TenantOut, status_code=status.HTTP_201_CREATED)
def create_tenant(body: TenantIn, runtime: RuntimeDep) -> TenantOut:
    return _out(runtime.metadata.create_tenant(Tenant(body.id, body.name, body.timezone)))


@router.get("/{tenant}", response_model=TenantOut)
def get_tenant(tenant: str, runtime: RuntimeDep) -> TenantOut:
    return _out(runtime.metadata.get_tenant(tenant))
