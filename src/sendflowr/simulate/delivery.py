"""What happens to each send: latency, bounce, machine and real opens, clicks, orders, opt-outs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from sendflowr.simulate.commerce import Catalog, Orders, draw_orders
from sendflowr.simulate.config import SimConfig
from sendflowr.simulate.emit import Code, EventTable, Message
from sendflowr.simulate.intensity import MS_PER_MINUTE, GroundTruth

I64 = NDArray[np.int64]
_NEVER: Final = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class Sends:
    """Every delivered email (bounces excluded), in send order; times are UTC ms."""

    profile: I64
    send_ms: I64
    delivery_ms: I64
    kind: NDArray[np.int8]  # KIND_CAMPAIGN or KIND_FLOW
    message: I64  # index into Simulation.messages
    open_ms: I64  # the real (human) open, -1 if none

    def __len__(self) -> int:
        return int(self.profile.shape[0])


@dataclass(frozen=True, slots=True)
class Candidates:
    """Sends the brand would make if nobody bounced or opted out, in send order."""

    profile: I64
    send_ms: I64
    message: I64
    product: I64  # the product the email features


def _lognormal_ms(rng: np.random.Generator, median_s: float, sigma: float, n: int) -> I64:
    seconds = np.exp(np.log(median_s) + sigma * rng.standard_normal(n))
    out: I64 = np.rint(seconds * 1000).astype(np.int64)
    return out


def deliver(
    cfg: SimConfig,
    truth: GroundTruth,
    catalog: Catalog,
    messages: list[Message],
    cand: Candidates,
    rng: np.random.Generator,
    rng_orders: np.random.Generator,
    table: EventTable,
) -> tuple[Sends, Orders]:
    n = len(cand.profile)
    prof = cand.profile.astype(np.intp)
    p_open = np.array([p.p_open for p in truth.profiles])[prof]
    p_click = np.array([p.p_click for p in truth.profiles])[prof]
    is_mpp = np.array([p.is_mpp for p in truth.profiles], dtype=bool)[prof]

    # Every draw is made for every candidate, so outcomes do not depend on which sends survive.
    delivery = cand.send_ms + _lognormal_ms(rng, cfg.latency_median_seconds, cfg.latency_sigma, n)
    bounce = rng.random(n) < cfg.bounce_rate
    minute, frac = truth.check_after_of(prof, truth.minutes(delivery), rng.standard_exponential(n))
    check = np.maximum(truth.to_utc_ms(minute, frac), delivery)
    horizon_ms = int(cfg.open_horizon_hours * 60 * MS_PER_MINUTE)
    seen = ~bounce & (check - delivery < horizon_ms)
    opened = seen & (rng.random(n) < p_open)
    clicked = opened & (rng.random(n) < p_click)
    ordered = clicked & (rng.random(n) < cfg.order_probability)
    unsub = opened & (rng.random(n) < cfg.unsubscribe_rate)
    spam = ~bounce & (rng.random(n) < cfg.spam_complaint_rate)
    machine_ms = delivery + rng.integers(500, 5_000, n)
    click_ms = check + np.clip(_lognormal_ms(rng, 25.0, 0.8, n), 2_000, 150_000)
    _keep_clicks_in_activity(truth, prof, check, click_ms, clicked, rng.random(n))
    landing_ms = click_ms + rng.integers(1_000, 5_000, n)
    view_ms = landing_ms + rng.integers(2_000, 10_000, n)
    second_view = rng.random(n) < 0.35
    second_ms = view_ms + rng.integers(30_000, 180_000, n)
    second_sku = catalog.draw(rng, n)
    order_ms = click_ms + np.maximum(_lognormal_ms(rng, 360.0, 0.7, n), MS_PER_MINUTE)
    unsub_ms = check + rng.integers(5_000, 60_000, n)
    unseen_ms = delivery + (rng.random(n) * horizon_ms).astype(np.int64)
    spam_ms = np.where(seen, check + rng.integers(3_000, 30_000, n), unseen_ms)

    # The first hard bounce, unsubscribe or complaint stops every later send to that person. The
    # earliest such event over all candidates belongs to a send made before it, so it is real.
    stop = np.full(len(truth.profiles), _NEVER, dtype=np.int64)
    np.minimum.at(stop, prof[bounce], delivery[bounce])
    np.minimum.at(stop, prof[unsub], unsub_ms[unsub])
    np.minimum.at(stop, prof[spam], spam_ms[spam])
    stop_r = stop[prof]
    kept = cand.send_ms <= stop_r
    delivered = kept & ~bounce

    rows = np.arange(n, dtype=np.int64)
    p64 = cand.profile

    def add(code: Code, mask: NDArray[np.bool_], at: I64, aux: I64 | None = None) -> None:
        table.add(code, p64[mask], at[mask], rows[mask], None if aux is None else aux[mask])

    add(Code.RECEIVED, delivered, delivery)
    add(Code.MACHINE_OPEN, delivered & is_mpp, machine_ms)
    add(Code.OPENED, delivered & opened, check)
    add(Code.CLICKED, delivered & clicked, click_ms)
    add(Code.EMAIL_VISIT, delivered & clicked, landing_ms)
    add(Code.EMAIL_VIEW, delivered & clicked, view_ms, cand.product)
    add(Code.EMAIL_VIEW, delivered & clicked & second_view, second_ms, second_sku)
    with_order = delivered & ordered
    order_row = np.cumsum(with_order) - 1
    add(Code.ORDERED, with_order, order_ms, order_row)
    # Only the opt-out that stopped the sends is kept; later ones would be duplicates.
    add(Code.UNSUBSCRIBED, delivered & unsub & (unsub_ms <= stop_r), unsub_ms)
    add(Code.SPAM_COMPLAINT, delivered & spam & (spam_ms <= stop_r), spam_ms)
    add(Code.BOUNCED, kept & bounce, delivery)

    orders = draw_orders(rng_orders, catalog, cand.product[with_order], cfg.discount_share)
    kinds = np.array([m.kind for m in messages], dtype=np.int8)
    sends = Sends(
        profile=cand.profile[delivered],
        send_ms=cand.send_ms[delivered],
        delivery_ms=delivery[delivered],
        kind=kinds[cand.message[delivered]],
        message=cand.message[delivered],
        open_ms=np.where(opened, check, -1)[delivered],
    )
    return sends, orders


def _keep_clicks_in_activity(
    truth: GroundTruth,
    prof: NDArray[np.intp],
    open_ms: I64,
    click_ms: I64,
    clicked: NDArray[np.bool_],
    u: NDArray[np.float64],
) -> None:
    """A click is part of the reading session: if its delay would run past the end of the
    person's active time, it happens before the end of the minute of the open instead."""
    idx = np.flatnonzero(clicked)
    inactive = truth.rate_of(prof[idx], truth.minutes(click_ms[idx])) <= 0.0
    idx = idx[inactive]
    minute_end = (
        truth.origin_ms + ((open_ms[idx] - truth.origin_ms) // MS_PER_MINUTE + 1) * MS_PER_MINUTE
    )
    click_ms[idx] = open_ms[idx] + (u[idx] * (minute_end - open_ms[idx])).astype(np.int64)
