"""A tenant's API keys: create (the key is shown once), list, revoke. Admin keys only.

Operator keys (valid on every tenant) have their own routes, /api/operator-keys
(routes/operator_keys.py), and the CLI: `sendflowr keys create --all-tenants`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from sendflowr.api.auth import AdminOnly
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.schemas import TENANT_PATTERN
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.keys import SCOPES, ApiKey, KeyStore

router = APIRouter(prefix="/api/tenants/{tenant}/keys", tags=["keys"], dependencies=[AdminOnly])

TenantPath = Annotated[str, Path(pattern=TENANT_PATTERN, max_length=63)]
NO_STORE = {"Cache-Control": "no-store"}


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="what the key is for")
    scopes: list[Literal["read", "write", "admin"]] = Field(
        min_length=1,
        max_length=3,
        description="read, write or admin; admin includes write, write includes read (the "
        "highest one given is the key's scope)",
    )


class KeyOut(BaseModel):
    id: str
    tenant: str | None = Field(description="null: an operator key, valid on every tenant")
    name: str
    scope: Literal["read", "write", "admin"]
    scopes: list[str] = Field(description="what the scope allows")
    created_at: datetime
    last_used_at: datetime | None = Field(description="updated at most once a minute")
    revoked_at: datetime | None


class KeyCreatedOut(KeyOut):
    key: str = Field(description="the key itself: shown only in this response, store it now")


def key_out(k: ApiKey) -> KeyOut:
    return KeyOut(
        id=k.id,
        tenant=k.tenant,
        name=k.name,
        scope=k.scope,
        scopes=list(SCOPES[: SCOPES.index(k.scope) + 1]),
        created_at=k.created_at,
        last_used_at=k.last_used_at,
        revoked_at=k.revoked_at,
    )


@router.post("", response_model=KeyCreatedOut, status_code=status.HTTP_201_CREATED)
async def create_key(
    tenant: TenantPath, body: KeyIn, runtime: RuntimeDep, response: Response
) -> KeyCreatedOut:
    """A new key for the tenant. The key is in this response only; SendFlowr keeps a keyed
    hash of it."""
    response.headers.update(NO_STORE)
    return await created_key(runtime, tenant, body)


@router.get("", response_model=list[KeyOut])
def list_keys(tenant: TenantPath, runtime: RuntimeDep) -> list[KeyOut]:
    """The tenant's keys, revoked ones included (never a key itself)."""
    runtime.metadata.get_tenant(tenant)
    return [key_out(k) for k in key_store(runtime).list(tenant)]


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(
    tenant: TenantPath,
    runtime: RuntimeDep,
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")],
) -> Response:
    """Revoke a key at once (404 for a key of another tenant). A revoked key stays listed."""
    key_store(runtime).revoke(key_id, tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def created_key(runtime: Runtime, tenant: str | None, body: KeyIn) -> KeyCreatedOut:
    """A new key (`tenant` None: an operator key) with the highest scope `body` gives, in the
    one response that shows it."""
    scope = max(body.scopes, key=SCOPES.index)
    made = await run_in_threadpool(key_store(runtime).create, tenant, body.name, scope)
    return KeyCreatedOut(**key_out(made.key).model_dump(), key=made.plaintext)


def key_store(runtime: Runtime) -> KeyStore:
    return KeyStore(runtime.metadata, runtime.hash_key)
