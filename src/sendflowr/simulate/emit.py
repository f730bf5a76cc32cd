"""From arrays of simulated happenings to canonical events, in time order.

The generator records every event as a row of small integers (what, who, when, which send, and an
auxiliary index); only here are Python objects built, in one pass.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.simulate.commerce import SHOP_URL, Catalog, Orders, order_properties
from sendflowr.simulate.config import SimConfig, TrueProfile

KIND_CAMPAIGN: Final = 0
KIND_FLOW: Final = 1


class Code(enum.IntEnum):
    RECEIVED = 0
    MACHINE_OPEN = 1
    OPENED = 2
    CLICKED = 3
    EMAIL_VISIT = 4  # the site visit a click lands on
    EMAIL_VIEW = 5  # aux: product
    ORDERED = 6  # aux: order row
    UNSUBSCRIBED = 7
    SPAM_COMPLAINT = 8
    BOUNCED = 9
    VISIT = 10  # spontaneous
    VIEW = 11  # spontaneous; aux: product


_TYPE: Final = {
    Code.RECEIVED: EventType.RECEIVED,
    Code.MACHINE_OPEN: EventType.OPENED,
    Code.OPENED: EventType.OPENED,
    Code.CLICKED: EventType.CLICKED,
    Code.EMAIL_VISIT: EventType.SITE_VISIT,
    Code.EMAIL_VIEW: EventType.PRODUCT_VIEW,
    Code.ORDERED: EventType.ORDERED,
    Code.UNSUBSCRIBED: EventType.UNSUBSCRIBED,
    Code.SPAM_COMPLAINT: EventType.SPAM_COMPLAINT,
    Code.BOUNCED: EventType.BOUNCED,
    Code.VISIT: EventType.SITE_VISIT,
    Code.VIEW: EventType.PRODUCT_VIEW,
}
# Events about an email carry its campaign/flow/message ids (an order its attributed ones).
_ABOUT_EMAIL: Final = frozenset(
    {
        Code.RECEIVED,
        Code.MACHINE_OPEN,
        Code.OPENED,
        Code.CLICKED,
        Code.ORDERED,
        Code.UNSUBSCRIBED,
        Code.SPAM_COMPLAINT,
        Code.BOUNCED,
    }
)


@dataclass(frozen=True, slots=True)
class Message:
    """A campaign or a flow message, as the ESP identifies it (Klaviyo's `$message`)."""

    index: int
    kind: int  # KIND_CAMPAIGN or KIND_FLOW
    message_id: str
    name: str
    subject: str
    campaign_id: str | None
    flow_id: str | None


class EventTable:
    """Rows collected by the generator: code, profile, UTC ms, send row (-1), aux (-1)."""

    def __init__(self) -> None:
        self._cols: tuple[list[NDArray[np.int64]], ...] = ([], [], [], [], [])

    def add(
        self,
        code: Code,
        profile: NDArray[np.int64],
        at_ms: NDArray[np.int64],
        send: NDArray[np.int64] | None = None,
        aux: NDArray[np.int64] | None = None,
    ) -> None:
        n = len(profile)
        none = np.full(n, -1, dtype=np.int64)
        values = (np.full(n, int(code), dtype=np.int64), profile, at_ms, send, aux)
        for col, value in zip(self._cols, values, strict=True):
            col.append(none if value is None else value.astype(np.int64, copy=False))

    def columns(self) -> tuple[NDArray[np.int64], ...]:
        """code, profile, at_ms, send, aux; stably sorted by time, ties in the order added."""
        code, profile, at_ms, send, aux = (
            np.concatenate(col) if col else np.zeros(0, dtype=np.int64) for col in self._cols
        )
        order = np.argsort(at_ms, kind="stable")
        return code[order], profile[order], at_ms[order], send[order], aux[order]


@dataclass(frozen=True, slots=True)
class EmitContext:
    config: SimConfig
    profiles: list[TrueProfile]
    messages: list[Message]
    catalog: Catalog
    orders: Orders
    send_message: NDArray[np.int64]  # per send row: message index
    send_product: NDArray[np.int64]  # per send row: the product the email features


def utm_for(config: SimConfig, message: Message) -> dict[str, str]:
    return {"utm_source": config.esp, "utm_medium": "email", "utm_campaign": message.name}


def build_events(ctx: EmitContext, table: EventTable) -> list[CanonicalEvent]:
    """One CanonicalEvent per row, in time order. This loop is the simulator's hot spot, hence
    plain ints for codes, cached URLs and locals bound outside the loop."""
    cfg, catalog, messages = ctx.config, ctx.catalog, ctx.messages
    code, profile, at_ms, send, aux = table.columns()
    has_send = send >= 0
    safe = np.where(has_send, send, 0)
    message_of = np.where(has_send, ctx.send_message[safe], -1).tolist()
    product_of = np.where(has_send, ctx.send_product[safe], -1).tolist()
    idents = [
        Identifiers(email_hash=p.email_hash, esp_profile_id=p.esp_profile_id) for p in ctx.profiles
    ]
    base: list[dict[str, Any]] = []
    for m in messages:
        props: dict[str, Any] = {"$message": m.message_id, "Subject": m.subject}
        if m.campaign_id is not None:
            props["Campaign Name"] = m.name
        else:
            props["$flow"] = m.flow_id
        base.append(props)
    utms = [utm_for(cfg, m) for m in messages]
    urls: dict[tuple[int, int], str] = {}

    def url(product: int, message: int) -> str:
        key = (product, message)
        found = urls.get(key)
        if found is None:
            found = urls[key] = catalog.url(product, utms[message] if message >= 0 else None)
        return found

    # fromtimestamp rounds to the microsecond and a float's error here is far below that, so
    # the millisecond survives exactly.
    when = list(map(datetime.fromtimestamp, (at_ms / 1000).tolist(), repeat(UTC)))
    types = [_TYPE[c] for c in Code]
    about_email = [c in _ABOUT_EMAIL for c in Code]
    home = f"{SHOP_URL}/"
    # Every parameter that changes the event stream is in the id: two different simulations
    # never give two different events one id (ids are what deduplication trusts).
    digest = hashlib.blake2b(repr(dataclasses.astuple(cfg)).encode(), digest_size=6).hexdigest()
    prefix = f"sim-{cfg.tenant}-{cfg.seed}-{digest}-"
    tenant, esp, currency = cfg.tenant, cfg.esp, cfg.currency
    ordered, clicked, bounced, machine = Code.ORDERED, Code.CLICKED, Code.BOUNCED, Code.MACHINE_OPEN
    visit, email_visit = Code.VISIT, Code.EMAIL_VISIT
    names, skus, prices = catalog.names, catalog.skus, catalog.prices.tolist()
    out: list[CanonicalEvent] = []
    append = out.append
    rows = zip(
        code.tolist(), profile.tolist(), when, message_of, product_of, aux.tolist(), strict=True
    )
    for i, (c, p, t, m, product, a) in enumerate(rows):
        properties: dict[str, Any]
        if about_email[c]:
            message = messages[m]
            if c == ordered:
                properties = order_properties(
                    ctx.orders, a, catalog, currency, f"{prefix}o{a:07d}",
                    utms[m], message.message_id,
                )  # fmt: skip
            else:
                properties = base[m].copy()
                if c == clicked:
                    properties["URL"] = url(product, m)
                elif c == bounced:
                    properties["Bounce Type"] = "hard"
            append(
                CanonicalEvent(
                    tenant=tenant,
                    esp=esp,
                    esp_event_id=f"{prefix}{i:08d}",
                    event_type=types[c],
                    occurred_at=t,
                    identifiers=idents[p],
                    campaign_id=message.campaign_id,
                    flow_id=message.flow_id,
                    message_id=message.message_id,
                    is_machine_open=c == machine,
                    properties=properties,
                )
            )
            continue
        if c == visit:
            properties = {"URL": home}
        elif c == email_visit:
            properties = {"URL": url(product, m), **utms[m]}
        else:
            properties = {
                "ProductID": skus[a],
                "ProductName": names[a],
                "Price": prices[a],
                "URL": url(a, m),
            }
        append(
            CanonicalEvent(
                tenant=tenant,
                esp=esp,
                esp_event_id=f"{prefix}{i:08d}",
                event_type=types[c],
                occurred_at=t,
                identifiers=idents[p],
                properties=properties,
            )
        )
    return out
