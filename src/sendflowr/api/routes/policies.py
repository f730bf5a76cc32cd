"""Send policies per tenant: configuration, the operator's breaker, and their history.

Who made a change is taken from the `X-SendFlowr-Actor` header (default "api"), as for intents.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Path

from sendflowr.api.auth import AdminOnly
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.schemas import (
    TENANT_PATTERN,
    BreakerIn,
    BreakerStateOut,
    EspBreakerOut,
    EspStateOut,
    FrequencyCapOut,
    PolicyChangeOut,
    PolicyIn,
    PolicyOut,
    QuietHoursOut,
    TenantBreakerOut,
)
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.policies import (
    PolicyStore,
    TenantPolicy,
    config_from_dict,
    config_to_dict,
)

router = APIRouter(prefix="/api/tenants/{tenant}", tags=["policies"])

TenantPath = Annotated[str, Path(pattern=TENANT_PATTERN, max_length=63)]
ActorHeader = Annotated[str, Header(alias="X-SendFlowr-Actor", max_length=200)]


def _store(runtime: Runtime, tenant: str) -> PolicyStore:
    runtime.metadata.get_tenant(tenant)  # 404 for an unknown tenant
    return PolicyStore(runtime.metadata)


def _breaker(p: TenantPolicy) -> TenantBreakerOut | None:
    b = p.breaker
    return (
        None
        if b is None
        else TenantBreakerOut(reason=b.reason, tripped_by=b.actor, tripped_at=b.tripped_at)
    )


def _out(p: TenantPolicy) -> PolicyOut:
    d = config_to_dict(p.config)
    return PolicyOut(
        tenant=p.tenant,
        version=p.version,
        updated_at=p.updated_at,
        quiet_hours=QuietHoursOut(**d["quiet_hours"]) if d["quiet_hours"] else None,
        frequency_cap=FrequencyCapOut(**d["frequency_cap"]) if d["frequency_cap"] else None,
        breakers=d["breakers"],
        order_cooloff_hours=d["order_cooloff_hours"],
        exploration_share=d["exploration_share"],
        esp_error_breaker=EspBreakerOut(**d["esp_error_breaker"]),
        tenant_breaker=_breaker(p),
    )


@router.get("/policy", response_model=PolicyOut)
def get_policy(tenant: TenantPath, runtime: RuntimeDep) -> PolicyOut:
    """The tenant's send policies (the defaults until first set)."""
    return _out(_store(runtime, tenant).get(tenant))


@router.put("/policy", response_model=PolicyOut)
def put_policy(
    tenant: TenantPath, body: PolicyIn, runtime: RuntimeDep, actor: ActorHeader = "api"
) -> PolicyOut:
    """Replace the tenant's send policies; the change is recorded in its history."""
    raw = body.model_dump(exclude={"version"})
    config = config_from_dict(raw)
    return _out(_store(runtime, tenant).put(tenant, config, actor, body.version))


@router.get("/policy/history", response_model=list[PolicyChangeOut])
def policy_history(tenant: TenantPath, runtime: RuntimeDep) -> list[PolicyChangeOut]:
    """Who changed the policies or the breaker, when, and what (newest first)."""
    return [
        PolicyChangeOut(
            version=c.version,
            action=c.action,
            actor=c.actor,
            changed_at=c.changed_at,
            changes=c.changes,
        )
        for c in _store(runtime, tenant).history(tenant)
    ]


def _state(runtime: Runtime, store: PolicyStore, tenant: str) -> BreakerStateOut:
    p = store.get(tenant)
    cfg = p.config
    now = datetime.now(UTC)
    calls = store.esp_calls(tenant, now - timedelta(seconds=cfg.esp_error_window_seconds), now)
    esp = [
        EspStateOut(
            esp=c.esp,
            sent=c.sent,
            failed=c.failed,
            error_rate=round(c.error_rate, 6),
            tripped=c.sent + c.failed >= cfg.esp_error_min_calls
            and c.error_rate > cfg.esp_error_rate,
        )
        for c in calls
    ]
    return BreakerStateOut(
        tenant=tenant,
        tenant_breaker=_breaker(p),
        esp=esp,
        suppressing=p.breaker is not None or any(e.tripped for e in esp),
    )


@router.get("/breaker", response_model=BreakerStateOut)
def breaker_state(tenant: TenantPath, runtime: RuntimeDep) -> BreakerStateOut:
    """The tenant breaker, and each ESP's recent error rate and whether it trips."""
    return _state(runtime, _store(runtime, tenant), tenant)


@router.post("/breaker", response_model=BreakerStateOut, dependencies=[AdminOnly])
def trip_breaker(
    tenant: TenantPath, body: BreakerIn, runtime: RuntimeDep, actor: ActorHeader = "api"
) -> BreakerStateOut:
    """Trip the tenant breaker: every decision is suppressed with `reason` until reset."""
    store = _store(runtime, tenant)
    store.trip(tenant, body.reason, actor)
    return _state(runtime, store, tenant)


@router.delete("/breaker", response_model=BreakerStateOut, dependencies=[AdminOnly])
def reset_breaker(
    tenant: TenantPath, runtime: RuntimeDep, actor: ActorHeader = "api"
) -> BreakerStateOut:
    """Reset the tenant breaker (the ESP error-rate breaker resets by itself)."""
    store = _store(runtime, tenant)
    store.reset(tenant, actor)
    return _state(runtime, store, tenant)
