"""The ground-truth simulator: profiles with known intensities, a biased brand, and their events.

Everything is drawn as numpy arrays from seeded generators (one per concern, so that changing one
part does not reshuffle the others) and only turned into CanonicalEvent objects at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from sendflowr.events import CanonicalEvent
from sendflowr.identity.hashing import hash_email
from sendflowr.simulate.commerce import Catalog, make_catalog
from sendflowr.simulate.config import SimConfig, TrueProfile
from sendflowr.simulate.delivery import Candidates, Sends, deliver
from sendflowr.simulate.emit import (
    KIND_CAMPAIGN,
    KIND_FLOW,
    Code,
    EmitContext,
    EventTable,
    Message,
    build_events,
)
from sendflowr.simulate.intensity import MS_PER_MINUTE, GroundTruth, to_ms

I64 = NDArray[np.int64]
_NEVER: Final = np.iinfo(np.int64).max
# Measured with the default configuration over 90 days: about 53 events per profile. The margin
# covers sampling variation for small audiences.
_DAYS_FOR_COUNT: Final = 90
_EVENTS_PER_PROFILE: Final = 53.0
_SAFETY: Final = 1.1
_MIN_PROFILES: Final = 20
_CROCKFORD: Final = np.frombuffer(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", dtype=np.uint8)


@dataclass(frozen=True, slots=True, eq=False)
class Simulation:
    """A simulated audience: its events in time order, its deliveries and its ground truth."""

    config: SimConfig
    profiles: list[TrueProfile]
    events: list[CanonicalEvent]
    sends: Sends
    messages: list[Message]
    truth: GroundTruth

    def intensity(self, profile_index: int, utc_ms: I64) -> NDArray[np.float64]:
        return self.truth.intensity(profile_index, utc_ms)

    def engage_probability(
        self, profile_index: int, delivery_utc_ms: I64, horizon_minutes: int = 60
    ) -> NDArray[np.float64]:
        return self.truth.engage_probability(profile_index, delivery_utc_ms, horizon_minutes)


def simulate(cfg: SimConfig) -> Simulation:
    """Seeded and reproducible: the same configuration always gives the same events."""
    rng_profiles, rng_shop, rng_visits, rng_sends, rng_orders = (
        np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(5)
    )
    profiles = _draw_profiles(cfg, rng_profiles)
    truth = GroundTruth(cfg, profiles)
    catalog = make_catalog(rng_shop, cfg.order_value_median)
    messages, campaign_ms = _messages(cfg)
    featured = catalog.draw(rng_shop, len(campaign_ms))
    table = EventTable()
    browse = _site_visits(cfg, truth, catalog, rng_visits, table)
    cand = _candidates(cfg, profiles, campaign_ms, featured, catalog, browse)
    sends, orders = deliver(cfg, truth, catalog, messages, cand, rng_sends, rng_orders, table)
    events = build_events(
        EmitContext(cfg, profiles, messages, catalog, orders, cand.message, cand.product), table
    )
    return Simulation(cfg, profiles, events, sends, messages, truth)


def _beta(
    rng: np.random.Generator, mean: float, concentration: float, n: int
) -> NDArray[np.float64]:
    if mean <= 0.0 or mean >= 1.0:
        return np.full(n, mean)
    return rng.beta(mean * concentration, (1.0 - mean) * concentration, n)


def _draw_profiles(cfg: SimConfig, rng: np.random.Generator) -> list[TrueProfile]:
    n = cfg.profiles
    names = [name for name, _ in cfg.persona_mix]
    pw = np.array([w for _, w in cfg.persona_mix])
    zones = [zone for zone, _ in cfg.time_zones]
    zw = np.array([w for _, w in cfg.time_zones])
    persona = rng.choice(len(names), n, p=pw / pw.sum())
    tz = rng.choice(len(zones), n, p=zw / zw.sum())
    limit = 3.0 * cfg.phase_shift_sd_minutes
    shift = np.clip(np.rint(rng.normal(0.0, cfg.phase_shift_sd_minutes, n)), -limit, limit)
    scale = np.exp(cfg.activity_sigma * rng.standard_normal(n))
    p_open = _beta(rng, cfg.open_probability, cfg.open_concentration, n)
    p_click = _beta(rng, cfg.click_probability, cfg.click_concentration, n)
    is_mpp = rng.random(n) < cfg.machine_open_share
    signs_up = rng.random(n) < cfg.signup_share
    period_ms = cfg.days * 86_400_000
    signup = to_ms(cfg.start) + (rng.random(n) * period_ms).astype(np.int64)
    ids = _CROCKFORD[rng.integers(0, 32, (n, 21))].tobytes()
    out = []
    for i in range(n):
        # Seed and size are part of the address: two different simulated audiences never
        # share a person (the same person would have two different true intensities).
        email = f"p{i:06d}.s{cfg.seed}n{cfg.profiles}@sim.sendflowr.test"
        out.append(
            TrueProfile(
                index=i,
                email=email,
                email_hash=hash_email(cfg.hash_key, email),
                esp_profile_id="01SIM" + ids[21 * i : 21 * (i + 1)].decode(),
                persona=names[persona[i]],
                tz=zones[tz[i]],
                shift_minutes=int(shift[i]),
                scale=float(scale[i]),
                p_open=float(p_open[i]),
                p_click=float(p_click[i]),
                is_mpp=bool(is_mpp[i]),
                signup_ms=int(signup[i]) if signs_up[i] else None,
            )
        )
    return out


def _messages(cfg: SimConfig) -> tuple[list[Message], list[int]]:
    """Campaigns on the brand's schedule (brand-local weekday and time), then the two flows."""
    brand = ZoneInfo(cfg.brand_tz)
    start_ms, end_ms = to_ms(cfg.start), to_ms(cfg.end)
    first = cfg.start.astimezone(brand).date()
    at = time(cfg.send_minute_of_day // 60, cfg.send_minute_of_day % 60)
    messages: list[Message] = []
    campaign_ms: list[int] = []
    for k in range(cfg.days + 2):
        day = first + timedelta(days=k)
        send_ms = to_ms(datetime.combine(day, at, tzinfo=brand))
        if day.weekday() not in cfg.send_weekdays or not start_ms <= send_ms < end_ms:
            continue
        c = len(messages)
        name = f"newsletter-{day.isoformat()}"
        subject = f"This {day.strftime('%A')}: new arrivals and picks for you"
        messages.append(
            Message(c, KIND_CAMPAIGN, f"sim-msg-c{c:04d}", name, subject, f"sim-cmp-{c:04d}", None)
        )
        campaign_ms.append(send_ms)
    c = len(messages)
    messages.append(
        Message(c, KIND_FLOW, "sim-msg-welcome-1", "welcome", "Welcome!", None, "sim-flow-welcome")
    )
    messages.append(
        Message(
            c + 1,
            KIND_FLOW,
            "sim-msg-browse-1",
            "browse-abandonment",
            "Still thinking it over?",
            None,
            "sim-flow-browse",
        )
    )
    return messages, campaign_ms


def _site_visits(
    cfg: SimConfig,
    truth: GroundTruth,
    catalog: Catalog,
    rng: np.random.Generator,
    table: EventTable,
) -> tuple[I64, I64, I64]:
    """Spontaneous visits while active; returns browse-abandonment triggers (profile, ms, sku)."""
    n = len(truth.profiles)
    everyone = np.arange(n, dtype=np.intp)
    start_ms = to_ms(cfg.start)
    signup = np.array(
        [start_ms if p.signup_ms is None else p.signup_ms for p in truth.profiles], dtype=np.int64
    )
    a = truth.minutes(np.maximum(signup, start_ms))
    b = np.full(n, truth.minutes(np.array([to_ms(cfg.end)]))[0])
    checks = truth.expected_checks_of(everyone, a, b)
    prof = np.repeat(everyone, rng.poisson(cfg.site_visit_rate * checks))
    minute, frac = truth.check_after_of(prof, a[prof], rng.random(prof.shape[0]) * checks[prof])
    visit_ms = truth.to_utc_ms(minute, frac)
    table.add(Code.VISIT, prof.astype(np.int64), visit_ms)
    m = prof.shape[0]
    n_views = rng.choice(4, m, p=(0.4, 0.35, 0.15, 0.1))
    view_ms = visit_ms[:, None] + rng.integers(20_000, 120_000, (m, 3)).cumsum(axis=1)
    sku = catalog.draw(rng, m * 3).reshape(m, 3)
    used = np.arange(3)[None, :] < n_views[:, None]
    rows = np.broadcast_to(prof[:, None], (m, 3))[used].astype(np.int64)
    table.add(Code.VIEW, rows, view_ms[used], aux=sku[used])
    fire = (n_views >= 1) & (rng.random(m) < cfg.browse_abandonment_share)
    delay = int(cfg.browse_abandonment_delay_minutes * MS_PER_MINUTE)
    t_prof, t_ms, t_sku = prof[fire], view_ms[fire, 0] + delay, sku[fire, 0]
    order = np.lexsort((t_ms, t_prof))
    cooldown = int(cfg.browse_abandonment_cooldown_days * 86_400_000)
    keep = np.zeros(order.shape[0], dtype=bool)
    last: dict[int, int] = {}
    for j, (p, t) in enumerate(zip(t_prof[order].tolist(), t_ms[order].tolist(), strict=True)):
        if t - last.get(p, -cooldown) >= cooldown:
            keep[j] = True
            last[p] = t
    chosen = order[keep]
    return t_prof[chosen].astype(np.int64), t_ms[chosen], t_sku[chosen]


def _candidates(
    cfg: SimConfig,
    profiles: list[TrueProfile],
    campaign_ms: list[int],
    featured: I64,
    catalog: Catalog,
    browse: tuple[I64, I64, I64],
) -> Candidates:
    signup = np.array(
        [-_NEVER if p.signup_ms is None else p.signup_ms for p in profiles], dtype=np.int64
    )
    parts: list[tuple[I64, I64, I64, I64]] = []
    for c, at_ms in enumerate(campaign_ms):
        who = np.flatnonzero(signup <= at_ms).astype(np.int64)
        parts.append(
            (who, np.full_like(who, at_ms), np.full_like(who, c), np.full_like(who, featured[c]))
        )
    welcome = np.flatnonzero(signup > -_NEVER).astype(np.int64)
    delay = int(cfg.welcome_delay_minutes * MS_PER_MINUTE)
    bestseller = int(np.argmax(catalog.popularity))
    n_camp = len(campaign_ms)
    parts.append(
        (
            welcome,
            signup[welcome] + delay,
            np.full_like(welcome, n_camp),
            np.full_like(welcome, bestseller),
        )
    )
    b_prof, b_ms, b_sku = browse
    parts.append((b_prof, b_ms, np.full_like(b_prof, n_camp + 1), b_sku))
    profile, send_ms, message, product = (np.concatenate([p[i] for p in parts]) for i in range(4))
    order = np.argsort(send_ms, kind="stable")
    return Candidates(profile[order], send_ms[order], message[order], product[order])


def config_for_event_count(count: int, tenant: str = "demo", seed: int = 42) -> SimConfig:
    """A configuration whose simulation yields at least `count` events (take the first N)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    profiles = math.ceil(count * _SAFETY / _EVENTS_PER_PROFILE) + _MIN_PROFILES
    return SimConfig(tenant=tenant, seed=seed, profiles=profiles, days=_DAYS_FOR_COUNT)
