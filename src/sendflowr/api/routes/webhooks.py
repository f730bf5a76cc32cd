"""Signed Klaviyo webhooks and flow webhook actions.

A delivery is answered 2xx only after its events are durable. A bad or missing signature or
a stale timestamp is 401, a replayed delivery 409, a malformed body 400 naming the field; an
item SendFlowr does not use (an SMS topic, say) is counted as ignored; an item that cannot be
normalised is kept as a dead letter with its reason.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ValidationError

from sendflowr.api.deps import RuntimeDep
from sendflowr.api.threads import run_delivery
from sendflowr.archive import keep_accepted
from sendflowr.connectors.klaviyo.constants import ESP
from sendflowr.connectors.klaviyo.flow_actions import (
    FLOW_SECRET_HEADER,
    FlowAction,
    flow_action_event,
)
from sendflowr.connectors.klaviyo.normalize import (
    WEBHOOK_IDENTIFIERS,
    NormalizationError,
    UnknownMetricError,
    normalize_webhook_item,
)
from sendflowr.connectors.klaviyo.webhooks import (
    WebhookAuthError,
    WebhookBodyError,
    parse_delivery,
    verify,
)
from sendflowr.errors import InvalidInputError, NotFoundError, SendFlowrError
from sendflowr.events import CanonicalEvent
from sendflowr.intake import Accepted
from sendflowr.metrics import observe_ingest
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.store import DeadLetter

router = APIRouter(prefix="/api/webhook", tags=["webhooks"])


class WebhookUnauthorizedError(SendFlowrError):
    status = 401
    code = "unauthorized"


class WebhookReplayedError(SendFlowrError):
    status = 409
    code = "replayed"


class BadBodyError(InvalidInputError):
    status = 400


class WebhookOut(BaseModel):
    received: int
    accepted: int
    ignored: int
    dead_lettered: int


@router.post("/klaviyo/{tenant}", response_model=WebhookOut)
async def klaviyo_webhook(
    tenant: str,
    request: Request,
    runtime: RuntimeDep,
    klaviyo_timestamp: Annotated[str | None, Header()] = None,
    klaviyo_signature: Annotated[str | None, Header()] = None,
    klaviyo_webhook_id: Annotated[str | None, Header()] = None,
) -> WebhookOut:
    """Receive a signed Klaviyo webhook delivery (`data[]` items become canonical events)."""
    body = await request.body()  # capped at 5 MiB while streaming (api/limits.py)
    return await run_delivery(  # on the deliveries' own threads (api/threads.py)
        _accept_delivery, runtime, tenant, body, klaviyo_timestamp, klaviyo_signature,
        klaviyo_webhook_id,
    )  # fmt: skip


def _accept_delivery(
    runtime: Runtime,
    tenant: str,
    body: bytes,
    timestamp: str | None,
    signature_header: str | None,
    webhook_id: str | None,
) -> WebhookOut:
    secret = runtime.accounts.webhook_secret(tenant, ESP) if _known(runtime, tenant) else None
    if secret is None:
        raise WebhookUnauthorizedError("no webhook secret is configured for this tenant")
    now = datetime.now(UTC)
    tolerance = timedelta(seconds=runtime.settings.webhook_tolerance_seconds)
    try:
        verify(
            secret=secret,
            body=body,
            timestamp=timestamp,
            signature=signature_header,
            now=now,
            tolerance=tolerance,
        )
        delivery = parse_delivery(body, webhook_id)
    except WebhookAuthError as exc:
        raise WebhookUnauthorizedError(str(exc)) from None
    except WebhookBodyError as exc:
        raise BadBodyError(
            [{"loc": ["body", *exc.loc], "msg": exc.msg, "type": "value_error"}]
        ) from None

    assert signature_header is not None  # verified above
    signature = signature_header.strip().lower()
    if not runtime.accounts.record_delivery(tenant, signature, keep=2 * tolerance):
        raise WebhookReplayedError("this delivery was received already (same signature)")
    try:
        events, raw, ignored, dead = _normalise(runtime.hash_key, tenant, delivery.items)
        if dead:
            runtime.metadata.add_dead_letters(dead)
            observe_ingest("klaviyo-webhook", dead_lettered=len(dead))
        # archived, then stored, with deliveries arriving meanwhile (sendflowr.intake)
        runtime.intake.keep(
            Accepted(tenant, ESP, "klaviyo-webhook", "klaviyo-webhook-item", raw, events, now)
        )
    except BaseException:
        # Not accepted: let Klaviyo's retry through the replay guard.
        runtime.accounts.forget_delivery(tenant, signature)
        raise
    return WebhookOut(
        received=len(delivery.items),
        accepted=len(events),
        ignored=ignored,
        dead_lettered=len(dead),
    )


def _known(runtime: Runtime, tenant: str) -> bool:
    try:
        runtime.metadata.hot_tenant(tenant)  # at most 2 s old; a deletion here clears it
    except NotFoundError:
        return False
    return True


def _normalise(
    hash_key: bytes, tenant: str, items: list[dict[str, Any]]
) -> tuple[list[CanonicalEvent], list[str], int, list[DeadLetter]]:
    """The events, the raw items they came from (JSON, for the archive), how many items were
    ignored, and the dead letters."""
    events: list[CanonicalEvent] = []
    raw: list[str] = []
    dead: list[DeadLetter] = []
    ignored = 0
    for i, item in enumerate(items):
        try:
            events.append(
                normalize_webhook_item(
                    item, tenant=tenant, hash_key=hash_key, cache=WEBHOOK_IDENTIFIERS
                )
            )
            raw.append(orjson.dumps(item, default=str).decode())
        except UnknownMetricError:
            ignored += 1
        except NormalizationError as exc:
            dead.append(
                DeadLetter(
                    source="klaviyo-webhook",
                    payload=orjson.dumps(item, default=str).decode(),
                    reason=f"data[{i}]: {exc}",
                    tenant=tenant,
                )
            )
    return events, raw, ignored, dead


@router.post("/klaviyo/{tenant}/flow", response_model=WebhookOut)
async def klaviyo_flow_action(
    tenant: str,
    request: Request,
    runtime: RuntimeDep,
    x_sendflowr_flow_secret: Annotated[
        str | None, Header(alias=FLOW_SECRET_HEADER, description="the tenant's flow secret")
    ] = None,
) -> WebhookOut:
    """Receive a Klaviyo flow webhook action, authenticated by the tenant's flow secret."""
    body = await request.body()  # capped at 5 MiB while streaming (api/limits.py)
    return await run_delivery(_accept_flow_action, runtime, tenant, body, x_sendflowr_flow_secret)


def _accept_flow_action(
    runtime: Runtime, tenant: str, body: bytes, given_secret: str | None
) -> WebhookOut:
    secret = (
        runtime.accounts.webhook_secret(tenant, ESP, flow=True) if _known(runtime, tenant) else None
    )
    if (
        secret is None
        or given_secret is None
        or not hmac.compare_digest(secret.encode(), given_secret.encode())
    ):
        raise WebhookUnauthorizedError(f"missing or wrong {FLOW_SECRET_HEADER} header")
    try:
        action = FlowAction.model_validate_json(body)
    except ValidationError as exc:
        raise BadBodyError(
            [
                {
                    "loc": ["body", *err["loc"]],
                    "msg": str(err["msg"]).removeprefix("Value error, "),
                    "type": err["type"],
                }
                for err in exc.errors()
            ]
        ) from None
    now = datetime.now(UTC)
    try:
        event = flow_action_event(action, tenant=tenant, hash_key=runtime.hash_key, now=now)
    except ValueError as exc:
        raise BadBodyError([{"loc": ["body"], "msg": str(exc), "type": "value_error"}]) from None
    # The body as received; replay passes `received_at` as `now` again (same event).
    keep_accepted(
        runtime,
        tenant=tenant,
        esp=ESP,
        source="klaviyo-flow-action",
        kind="klaviyo-flow-action",
        payloads=[body.decode("utf-8", "replace")],
        event_ids=[event.event_id],
        received_at=now,
    )
    result = runtime.bus.publish([event], source="klaviyo-flow-action")
    if result.rejected:
        raise BadBodyError(
            [
                {"loc": ["body", *e.loc], "msg": e.msg, "type": "value_error"}
                for r in result.rejected
                for e in r.errors
            ]
        )
    return WebhookOut(received=1, accepted=1, ignored=0, dead_lettered=0)
