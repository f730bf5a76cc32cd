"""Operator API keys (valid on every tenant): create (the key is shown once), list, revoke.

Only an operator key with the admin scope may call these (a tenant's admin key, or a read or
write operator key, is 403). They do over the API what `sendflowr keys ... --all-tenants` does
from the CLI, with one guard the CLI does not need: a key cannot revoke itself when it is the
last active admin operator key (409), so nobody locks themselves out over the API. The settings
key (`SENDFLOWR_ADMIN_API_KEY`) is an admin operator key too, but it is not stored: it is never
listed here and cannot be revoked here (change the setting).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from sendflowr.api.auth import OperatorOnly, PrincipalDep
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.routes.keys import (
    NO_STORE,
    KeyCreatedOut,
    KeyIn,
    KeyOut,
    created_key,
    key_out,
    key_store,
)

router = APIRouter(prefix="/api/operator-keys", tags=["keys"], dependencies=[OperatorOnly])


@router.post("", response_model=KeyCreatedOut, status_code=status.HTTP_201_CREATED)
async def create_operator_key(
    body: KeyIn, runtime: RuntimeDep, response: Response
) -> KeyCreatedOut:
    """A new operator key (every tenant) with the highest scope given. The key is in this
    response only; SendFlowr keeps a keyed hash of it."""
    response.headers.update(NO_STORE)
    return await created_key(runtime, None, body)


@router.get("", response_model=list[KeyOut])
def list_operator_keys(runtime: RuntimeDep, response: Response) -> list[KeyOut]:
    """The stored operator keys, revoked ones included (never a key itself; the settings key
    is not stored, so not listed)."""
    response.headers.update(NO_STORE)
    return [key_out(k) for k in key_store(runtime).list(operators=True)]


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_operator_key(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")],
) -> Response:
    """Revoke an operator key at once: its next request is 401 (404 for a tenant's key or an
    unknown id). A key revoking itself is 409 when no other admin operator key (stored, or the
    settings key) would remain. A revoked key stays listed."""
    outside = 1 if runtime.settings.admin_api_key is not None else 0
    key_store(runtime).revoke_operator(key_id, caller=principal.key_id, outside_admins=outside)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
