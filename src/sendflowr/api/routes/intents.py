"""Intents: CRUD with a change history, and their ESP bindings checked against the account.

A binding is refused (422, naming the field) when its ESP is unknown, when the tenant has not
connected that ESP, or, for Klaviyo, when the metric or campaign it names does not exist in the
account. Who made a change is taken from the `X-SendFlowr-Actor` header (default "api").
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Response, status

from sendflowr.api.deps import RuntimeDep
from sendflowr.api.intent_schemas import (
    IntentChangeOut,
    IntentCreateIn,
    IntentIn,
    IntentOut,
)
from sendflowr.api.schemas import TENANT_PATTERN
from sendflowr.connectors.klaviyo.client import KlaviyoError, KlaviyoNotFound
from sendflowr.connectors.klaviyo.constants import ESP as KLAVIYO
from sendflowr.connectors.klaviyo.oauth import KlaviyoUnavailableError
from sendflowr.errors import InvalidInputError
from sendflowr.execution.registry import ESPS
from sendflowr.intents import (
    HotPathSignal,
    Intent,
    check_intent_id,
    validate_hot_paths,
    validate_suppressions,
)
from sendflowr.runtime import Runtime

router = APIRouter(prefix="/api/tenants/{tenant}/intents", tags=["intents"])

TenantPath = Annotated[str, Path(pattern=TENANT_PATTERN, max_length=63)]
ActorHeader = Annotated[str, Header(alias="X-SendFlowr-Actor", max_length=200)]


def _bad(loc: tuple[str | int, ...], msg: str) -> InvalidInputError:
    return InvalidInputError.at(("body", *loc), msg)


async def check_binding(
    runtime: Runtime, tenant: str, raw: dict[str, Any], *, remote: bool = True
) -> tuple[str, dict[str, Any]]:
    """(esp, binding) after checking its shape, the tenant's account and, for Klaviyo (unless
    `remote` is false), that the metric and campaign exist."""
    esp = str(raw.pop("esp"))
    kind = ESPS.get(esp)
    if kind is None:
        raise _bad(("binding", "esp"), f"unknown ESP {esp!r}; one of {sorted(ESPS)}")
    try:
        binding = kind.validate_binding(raw)
    except InvalidInputError as exc:
        raise InvalidInputError(
            [{**e, "loc": ["body", "binding", *e["loc"][-1:]]} for e in exc.errors]
        ) from None
    account = runtime.accounts.find(tenant, esp)
    if account is None or account.status != "connected":
        state = "has not connected" if account is None else f"has a {account.status} account for"
        raise _bad(
            ("binding", "esp"),
            f"tenant {tenant!r} {state} ESP {esp!r}: connect it at "
            f"/api/tenants/{tenant}/accounts/{esp} first",
        )
    if esp == KLAVIYO and remote:
        await _check_klaviyo(runtime, tenant, binding)
    return esp, binding


async def _check_klaviyo(runtime: Runtime, tenant: str, binding: dict[str, Any]) -> None:
    from sendflowr.connectors.klaviyo.factory import open_client

    async with open_client(runtime, tenant) as client:
        try:
            names = sorted({m.name for m in await client.list_metrics()})
            campaign = None
            if binding.get("campaign_id"):
                with contextlib.suppress(KlaviyoNotFound):
                    campaign = await client.get_campaign(binding["campaign_id"])
        except KlaviyoError as exc:
            raise KlaviyoUnavailableError(
                f"could not check the binding against Klaviyo: {exc}", field="binding"
            ) from None
    if binding["metric_name"] not in names:
        shown = ", ".join(repr(n) for n in names[:15])
        raise _bad(
            ("binding", "metric_name"),
            f"the Klaviyo account has no metric {binding['metric_name']!r} (the flow's "
            f"trigger must exist; it appears after its first event). Metrics: {shown}",
        )
    if binding.get("campaign_id") and campaign is None:
        raise _bad(
            ("binding", "campaign_id"),
            f"the Klaviyo account has no campaign {binding['campaign_id']!r}",
        )


async def _intent(
    runtime: Runtime, tenant: str, intent_id: str, body: IntentIn, *, new_id: bool = False
) -> Intent:
    """The checked intent; every bad field is reported at once (a form shows them together),
    the binding checked against the account only when everything else is valid."""
    runtime.metadata.get_tenant(tenant)
    errors: list[dict[str, Any]] = []
    hot: tuple[HotPathSignal, ...] = ()
    suppressions: tuple[str, ...] = ()
    if new_id:
        try:
            check_intent_id(intent_id)
        except InvalidInputError as exc:  # on create the id is a body field
            errors += [{**e, "loc": ["body", "intent_id"]} for e in exc.errors]
    try:
        hot = validate_hot_paths([h.model_dump() for h in body.hot_path_signals])
    except InvalidInputError as exc:
        errors += exc.errors
    try:
        suppressions = validate_suppressions(body.suppression_sources)
    except InvalidInputError as exc:
        errors += exc.errors
    try:
        esp, binding = await check_binding(
            runtime, tenant, body.binding.model_dump(), remote=not errors
        )
    except InvalidInputError as exc:
        raise InvalidInputError(errors + exc.errors) from None
    if errors:
        raise InvalidInputError(errors)
    return Intent(
        tenant=tenant,
        intent_id=intent_id,
        name=body.name,
        description=body.description,
        window_seconds=body.window_seconds,
        latency_seconds=body.latency_seconds,
        hot_path_signals=hot,
        suppression_sources=suppressions,
        frequency_cap_group=body.frequency_cap_group,
        esp=esp,
        binding=binding,
    )


def intent_out(i: Intent) -> IntentOut:
    c = i.config()
    return IntentOut(
        tenant=i.tenant,
        intent_id=i.intent_id,
        name=i.name,
        description=i.description,
        window_seconds=i.window_seconds,
        latency_seconds=i.latency_seconds,
        hot_path_signals=c["hot_path_signals"],
        suppression_sources=c["suppression_sources"],
        frequency_cap_group=i.frequency_cap_group,
        binding={"esp": i.esp, **i.binding},
        version=i.version,
        created_at=i.created_at,
        updated_at=i.updated_at,
    )


@router.post("", response_model=IntentOut, status_code=status.HTTP_201_CREATED)
async def create_intent(
    tenant: TenantPath,
    body: IntentCreateIn,
    runtime: RuntimeDep,
    actor: ActorHeader = "api",
) -> IntentOut:
    """Create an intent bound to a connected ESP (409 if the id exists)."""
    intent = await _intent(runtime, tenant, body.intent_id, body, new_id=True)
    return intent_out(runtime.intents.create(intent, actor))


@router.get("", response_model=list[IntentOut])
def list_intents(tenant: TenantPath, runtime: RuntimeDep) -> list[IntentOut]:
    runtime.metadata.get_tenant(tenant)
    return [intent_out(i) for i in runtime.intents.all(tenant)]


@router.get("/{intent_id}", response_model=IntentOut)
def get_intent(tenant: TenantPath, intent_id: str, runtime: RuntimeDep) -> IntentOut:
    return intent_out(runtime.intents.get(tenant, intent_id))


@router.put("/{intent_id}", response_model=IntentOut)
async def update_intent(
    tenant: TenantPath,
    intent_id: str,
    body: IntentIn,
    runtime: RuntimeDep,
    actor: ActorHeader = "api",
) -> IntentOut:
    """Replace an intent's configuration (a new version, recorded in its history). Changing
    `binding.esp` moves the intent to another ESP: triggers not yet sent go out through the new
    binding."""
    runtime.intents.get(tenant, intent_id)
    intent = await _intent(runtime, tenant, intent_id, body)
    return intent_out(runtime.intents.update(intent, actor, expected_version=body.version))


@router.delete("/{intent_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_intent(
    tenant: TenantPath, intent_id: str, runtime: RuntimeDep, actor: ActorHeader = "api"
) -> Response:
    """Delete an intent and cancel its triggers that are not sent yet."""
    runtime.intents.delete(tenant, intent_id, actor)
    runtime.triggers.cancel(tenant, intent_id=intent_id, reason="intent deleted")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{intent_id}/history", response_model=list[IntentChangeOut])
def intent_history(
    tenant: TenantPath, intent_id: str, runtime: RuntimeDep
) -> list[IntentChangeOut]:
    """Who changed what, and when, newest first."""
    runtime.metadata.get_tenant(tenant)
    changes = runtime.intents.history(tenant, intent_id)
    if not changes:
        runtime.intents.get(tenant, intent_id)
    return [
        IntentChangeOut(
            version=c.version,
            action=c.action,
            actor=c.actor,
            changed_at=c.changed_at,
            changes=c.changes,
        )
        for c in changes
    ]
