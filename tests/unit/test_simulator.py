"""The ground-truth simulator: reproducibility, its stated rates, and the truth it keeps.

Rate checks use 4 standard errors of the quantity being compared, so a correct simulator fails
them with probability well under 1e-3 per check (and, being seeded, deterministically never).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pytest

from sendflowr.events import CanonicalEvent, EventType
from sendflowr.simulate import (
    KIND_CAMPAIGN,
    PERSONA_NAMES,
    SimConfig,
    Simulation,
    base_rate,
    config_for_event_count,
    cumulative,
    read_events,
    read_truth,
    simulate,
    write_simulation,
)
from sendflowr.simulate.personas import MINUTES_PER_DAY, MINUTES_PER_WEEK

CFG = SimConfig(profiles=4000, days=84, seed=7)
SMALL = SimConfig(profiles=300, days=28, seed=11)
Z = 4.0


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(CFG)


@pytest.fixture(scope="module")
def small() -> Simulation:
    return simulate(SMALL)


def _by_profile(sim: Simulation) -> dict[str, int]:
    return {p.email_hash: p.index for p in sim.profiles}


def _engage(sim: Simulation, horizon_minutes: int) -> np.ndarray:
    """engage_probability for every delivered email, aligned with sim.sends."""
    s = sim.sends
    out = np.empty(len(s))
    for p in np.unique(s.profile):
        idx = np.flatnonzero(s.profile == p)
        out[idx] = sim.engage_probability(int(p), s.delivery_ms[idx], horizon_minutes)
    return out


def _binomial_ok(successes: int, trials: int, p: float) -> bool:
    se = math.sqrt(max(p * (1 - p), 1e-12) / trials)
    return abs(successes / trials - p) <= Z * se + 1.0 / trials


def test_same_seed_same_events_and_other_seed_differs(small: Simulation) -> None:
    again = simulate(SMALL)
    encode = msgspec.json.Encoder().encode_lines
    assert encode(again.events) == encode(small.events)
    other = simulate(SimConfig(profiles=300, days=28, seed=12))
    assert [e.occurred_at for e in other.events] != [e.occurred_at for e in small.events]


def test_events_are_sorted_unique_and_round_trip_through_json(small: Simulation) -> None:
    events = small.events
    assert all(a.occurred_at <= b.occurred_at for a, b in itertools.pairwise(events))
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.tenant == SMALL.tenant and e.esp == SMALL.esp for e in events)
    raw = msgspec.json.encode(events)
    assert msgspec.json.decode(raw, type=list[CanonicalEvent]) == events
    assert all(
        e.occurred_at.tzinfo is UTC and e.occurred_at.microsecond % 1000 == 0 for e in events
    )


def test_write_and_read_back(small: Simulation, tmp_path: Path) -> None:
    write_simulation(small, tmp_path)
    assert read_events(tmp_path) == small.events
    truth = read_truth(tmp_path)
    assert truth.config == small.config
    assert truth.profiles == small.profiles
    at = small.sends.delivery_ms[:50]
    p = int(small.sends.profile[0])
    assert np.array_equal(truth.engage_probability(p, at), small.engage_probability(p, at))


def test_personas_are_rates_over_the_week() -> None:
    assert {"early_bird", "commuter", "lunch_checker", "evening_reader", "night_owl"} <= set(
        PERSONA_NAMES
    )
    assert {"weekend_only", "erratic", "office_hours"} <= set(PERSONA_NAMES)
    for name in PERSONA_NAMES:
        rate, cum = base_rate(name), cumulative(name)
        assert rate.shape == (MINUTES_PER_WEEK,)
        assert cum.shape == (MINUTES_PER_WEEK + 1,)
        assert (rate >= 0).all()
        assert rate.sum() > 0
        assert cum[0] == 0
        assert np.allclose(np.diff(cum), rate)
    weekdays = base_rate("weekend_only")[: 5 * MINUTES_PER_DAY]
    assert (weekdays == 0).all()


def test_intensity_follows_persona_in_local_time(sim: Simulation) -> None:
    """Independent of the simulator's offset tables: local time via zoneinfo per instant."""
    rng = np.random.default_rng(0)
    start = int(CFG.start.timestamp() * 1000)
    at = start + rng.integers(0, CFG.days * 86_400_000, 200)
    for profile in sim.profiles[:20]:
        zone = ZoneInfo(profile.tz)
        expected = []
        for ms in at.tolist():
            local = datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone)
            minute = local.weekday() * MINUTES_PER_DAY + local.hour * 60 + local.minute
            rate = base_rate(profile.persona)[(minute - profile.shift_minutes) % MINUTES_PER_WEEK]
            expected.append(profile.scale * rate)
        assert np.allclose(sim.intensity(profile.index, at), expected)


def test_expected_checks_integrate_the_rate_across_dst(sim: Simulation) -> None:
    truth = sim.truth
    us = next(p for p in sim.profiles if p.tz.startswith("America/"))
    # 2026-03-08 is the US switch to daylight time; integrate a week around it.
    a = truth.minutes(np.array([int(datetime(2026, 3, 5, tzinfo=UTC).timestamp() * 1000)]))
    grid = a[0] + np.arange(0, 7 * MINUTES_PER_DAY, 0.25)
    riemann = truth.rate_of(np.full(grid.shape, us.index, dtype=np.intp), grid).sum() * 0.25
    exact = truth.expected_checks_of(np.array([us.index]), a, a + 7 * MINUTES_PER_DAY)[0]
    assert exact == pytest.approx(riemann, rel=1e-9)


def test_machine_opens_share_and_timing(sim: Simulation) -> None:
    n = len(sim.profiles)
    mpp = np.array([p.is_mpp for p in sim.profiles])
    assert _binomial_ok(int(mpp.sum()), n, CFG.machine_open_share)
    # A flow message can reach a person more than once: pair each machine open with the latest
    # delivery of that message to that person (events are in time order).
    received: dict[tuple[str, str | None], int] = {}
    machine = []
    for e in sim.events:
        key = (e.identifiers.email_hash or "", e.message_id)
        if e.event_type is EventType.RECEIVED:
            received[key] = e.occurred_at_ms
        elif e.is_machine_open:
            machine.append(e.occurred_at_ms - received[key])
    to_mpp = int(mpp[sim.sends.profile].sum())
    assert len(machine) == to_mpp
    # Deliveries cluster by profile, so the share among deliveries has the profile-level error.
    share = len(machine) / len(sim.sends)
    assert abs(share - CFG.machine_open_share) <= Z * 1.2 * math.sqrt(0.45 * 0.55 / n)
    assert all(0 <= delay <= 5_000 for delay in machine)


def test_open_rate_matches_profiles_and_intensity(sim: Simulation) -> None:
    s = sim.sends
    opened = s.open_ms >= 0
    implied = _engage(sim, int(CFG.open_horizon_hours * 60))
    se = math.sqrt((implied * (1 - implied)).sum()) / len(s)
    assert abs(opened.mean() - implied.mean()) <= Z * se
    # Per-profile open probabilities are Beta around the configured mean.
    p_open = np.array([p.p_open for p in sim.profiles])
    var = CFG.open_probability * (1 - CFG.open_probability) / (CFG.open_concentration + 1)
    assert abs(p_open.mean() - CFG.open_probability) <= Z * math.sqrt(var / len(p_open))
    real_opens = sum(
        1 for e in sim.events if e.event_type is EventType.OPENED and not e.is_machine_open
    )
    assert real_opens == int(opened.sum())


def test_engage_probability_matches_opens_within_an_hour(sim: Simulation) -> None:
    s = sim.sends
    within = (s.open_ms >= 0) & (s.open_ms - s.delivery_ms < 3_600_000)
    p = _engage(sim, 60)
    se = math.sqrt((p * (1 - p)).sum()) / len(s)
    assert abs(within.mean() - p.mean()) <= Z * se


def test_click_and_order_rates(sim: Simulation) -> None:
    index = _by_profile(sim)
    p_click = np.array([p.p_click for p in sim.profiles])
    openers = [
        index[e.identifiers.email_hash or ""]
        for e in sim.events
        if e.event_type is EventType.OPENED and not e.is_machine_open
    ]
    clicks = sum(1 for e in sim.events if e.event_type is EventType.CLICKED)
    expected = p_click[openers]
    se = math.sqrt((expected * (1 - expected)).sum())
    assert abs(clicks - expected.sum()) <= Z * se
    assert abs(expected.mean() - CFG.click_probability) < 0.02
    orders = sum(1 for e in sim.events if e.event_type is EventType.ORDERED)
    assert _binomial_ok(orders, clicks, CFG.order_probability)


def test_real_opens_and_clicks_only_while_active(sim: Simulation) -> None:
    index = _by_profile(sim)
    times: dict[int, list[int]] = defaultdict(list)
    weekend_checked = 0
    for e in sim.events:
        if e.event_type not in (EventType.OPENED, EventType.CLICKED) or e.is_machine_open:
            continue
        profile = sim.profiles[index[e.identifiers.email_hash or ""]]
        times[profile.index].append(e.occurred_at_ms)
        if profile.persona == "weekend_only":
            weekend_checked += 1
            assert e.occurred_at.astimezone(ZoneInfo(profile.tz)).weekday() >= 5
    assert weekend_checked > 0
    for p, at in times.items():
        assert (sim.intensity(p, np.array(at)) > 0).all()


def test_campaigns_follow_the_brand_schedule(sim: Simulation) -> None:
    s = sim.sends
    campaign_ms = np.unique(s.send_ms[s.kind == KIND_CAMPAIGN])
    assert len(campaign_ms) == len(CFG.send_weekdays) * CFG.days // 7
    brand = ZoneInfo(CFG.brand_tz)
    for ms in campaign_ms.tolist():
        local = datetime.fromtimestamp(ms / 1000, UTC).astimezone(brand)
        assert local.weekday() in CFG.send_weekdays
        assert local.hour * 60 + local.minute == CFG.send_minute_of_day
        assert local.second == 0
        assert local.microsecond == 0
    latency = s.delivery_ms - s.send_ms
    assert (latency > 0).all()
    assert np.median(latency) == pytest.approx(CFG.latency_median_seconds * 1000, rel=0.05)
    assert (s.kind != KIND_CAMPAIGN).any()  # flows too


def test_opt_outs_are_rare_and_stop_sends(sim: Simulation) -> None:
    index = _by_profile(sim)
    counts: dict[EventType, int] = defaultdict(int)
    stopped: dict[int, int] = {}
    for e in sim.events:
        counts[e.event_type] += 1
        if e.event_type in (EventType.BOUNCED, EventType.UNSUBSCRIBED, EventType.SPAM_COMPLAINT):
            stopped.setdefault(index[e.identifiers.email_hash or ""], e.occurred_at_ms)
    delivered = counts[EventType.RECEIVED]
    attempted = delivered + counts[EventType.BOUNCED]
    assert _binomial_ok(counts[EventType.BOUNCED], attempted, CFG.bounce_rate)
    real_opens = int((sim.sends.open_ms >= 0).sum())
    assert _binomial_ok(counts[EventType.UNSUBSCRIBED], real_opens, CFG.unsubscribe_rate)
    spam_expected = delivered * CFG.spam_complaint_rate
    assert abs(counts[EventType.SPAM_COMPLAINT] - spam_expected) <= Z * math.sqrt(spam_expected) + 1
    s = sim.sends
    for p, at in stopped.items():
        assert not (s.send_ms[s.profile == p] > at).any()


def test_orders_carry_commerce_fields_and_follow_clicks(sim: Simulation) -> None:
    clicks: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    orders = 0
    for e in sim.events:
        key = (e.identifiers.email_hash or "", e.message_id)
        if e.event_type is EventType.CLICKED:
            clicks[key].append(e.occurred_at_ms)
            assert "utm_source=klaviyo" in e.properties["URL"]
        elif e.event_type is EventType.ORDERED:
            orders += 1
            props = e.properties
            assert props["$value"] > 0
            assert props["Currency"] == CFG.currency
            assert 1 <= len(props["Items"]) <= 3
            for item in props["Items"]:
                assert {"sku", "name", "quantity", "price"} <= item.keys()
            assert props["utm_source"] == "klaviyo"
            assert props["utm_medium"] == "email"
            assert props["utm_campaign"]
            assert any(t < e.occurred_at_ms for t in clicks[key])
    assert orders > 0


def test_delivery_events_carry_message_ids(small: Simulation) -> None:
    for e in small.events:
        if e.event_type in (EventType.RECEIVED, EventType.OPENED, EventType.CLICKED):
            assert e.message_id
            assert e.campaign_id or e.flow_id
            assert e.properties["$message"] == e.message_id
            assert e.identifiers.email_hash
            assert e.identifiers.esp_profile_id


def test_config_for_event_count_yields_enough() -> None:
    cfg = config_for_event_count(3000, tenant="acme", seed=5)
    events = simulate(cfg).events
    assert len(events) >= 3000
    assert all(e.tenant == "acme" for e in events[:10])
    assert cfg.start + timedelta(days=cfg.days) == cfg.end


def test_vectorised_engage_probability_matches_per_profile(small: Simulation) -> None:
    s = small.sends
    pick = np.arange(0, len(s), max(len(s) // 200, 1))
    prof = s.profile[pick].astype(np.intp)
    got = small.truth.engage_probability_of(prof, s.delivery_ms[pick], 60)
    want = np.array(
        [
            small.engage_probability(int(p), s.delivery_ms[i : i + 1])[0]
            for p, i in zip(prof, pick, strict=True)
        ]
    )
    assert np.allclose(got, want)
    assert got.max() > 0
