"""Oracle share in the ground-truth simulator (EVALUATION.md section 2).

A simulated audience (known minute-of-week intensities in each person's own zone) receives the
brand's biased schedule (Tuesday and Thursday 10:00 brand time by default) with a share of
Apple MPP machine opens; its events are folded into activity profiles by the same function the
production paths use (`decisions.fold_history`: single decisions, audiences, schedules) and
each person is decided by the engine's batch form over windows after the history (one brand-
local day each), as a schedule is. Utility of a target minute t (the delivery minute; the
trigger is t minus the latency) = the true P(real engagement within 60 minutes of t), from the
known intensity; oracle share = sum of utilities of the choices / sum of the best utilities.

Baselines, section 1's rules on the same history (brand-local hours, every engagement event
counted as a baseline would count it, machine opens included: they cannot tell), their chosen
instant taken as the delivery time:
- `random`: uniform in the window; `global_hour`: the first instant of the audience's busiest
  hour; `user_hour`: the person's busiest hour, `global_hour` without history.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np

from sendflowr.decisions import fold_history
from sendflowr.evaluate.replay import IntArray
from sendflowr.simulate import SimConfig, Simulation, simulate
from sendflowr.timing.activity import ActivityTable, global_prior, summed
from sendflowr.timing.engine import EngineParams, audience_archetypes, decide_batch, utc_offsets
from sendflowr.timing.features import ENGAGEMENT_WEIGHTS

HORIZON_MINUTES: Final = 60
MACHINE_SHARES: Final = (0.45, 0.0)
POLICIES: Final = ("random", "global_hour", "user_hour", "sendflowr", "sendflowr_uncorrected")


@dataclass(frozen=True, slots=True)
class SimulatedSetup:
    seed: int = 0
    profiles: int = 2_000
    days: int = 90  # history
    windows: int = 7  # one brand-local day each, right after the history
    latency_s: int = 45  # the simulated ESP's median delivery latency


@dataclass(frozen=True, slots=True)
class History:
    """A simulation's events as the event store returns a tenant's history."""

    rows: IntArray  # profile index
    utc_s: IntArray
    types: list[str]
    machine: np.ndarray[Any, np.dtype[np.bool_]]


def history_of(sim: Simulation) -> History:
    row_of = {p.email_hash: p.index for p in sim.profiles}
    rows = np.fromiter(
        (row_of[e.identifiers.email_hash or ""] for e in sim.events), np.int64, len(sim.events)
    )
    utc = np.fromiter(
        (int(e.occurred_at.timestamp()) for e in sim.events), np.int64, len(sim.events)
    )
    types = [str(e.event_type) for e in sim.events]
    machine = np.fromiter((e.is_machine_open for e in sim.events), np.bool_, len(sim.events))
    return History(rows, utc, types, machine)


def _windows(cfg: SimConfig, count: int) -> list[tuple[int, int]]:
    brand = ZoneInfo(cfg.brand_tz)
    first = cfg.end.astimezone(brand).date() + timedelta(days=1)
    out = []
    for k in range(count):
        day = first + timedelta(days=k)
        start = datetime(day.year, day.month, day.day, tzinfo=brand)
        end = start + timedelta(days=1)  # wall-clock day in the brand's zone
        out.append((int(start.astimezone(UTC).timestamp()), int(end.astimezone(UTC).timestamp())))
    return out


def _sendflowr(
    people: ActivityTable, audience: ActivityTable, zone: ZoneInfo, now: int,
    window: tuple[int, int], latency: int, params: EngineParams,
) -> IntArray:  # fmt: skip
    rows = np.where(people.evidence > 0, np.arange(len(people)), -1).astype(np.int64)
    got = decide_batch(
        people, rows, audience, global_prior(), window[0], window[1], zone, latency, now, params
    )
    return got.target


def _hour_starts(window: tuple[int, int], zone: ZoneInfo) -> IntArray:
    """First instant of each brand-local hour 0..23 of the window's day (DST: the next one)."""
    start = datetime.fromtimestamp(window[0], zone)
    out = []
    for hour in range(24):
        wall = start.replace(hour=hour)
        t = int(wall.astimezone(UTC).timestamp())
        out.append(min(max(t, window[0]), window[1] - 60))
    return np.asarray(out, np.int64)


def _hour_counts(h: History, n: int, zone: ZoneInfo) -> IntArray:
    engage = np.fromiter((t in ENGAGEMENT_WEIGHTS for t in h.types), np.bool_, len(h.types))
    utc = h.utc_s[engage]
    probe = utc - utc % 60
    hours = (utc + utc_offsets(probe, zone)) % 86_400 // 3_600
    counts = np.zeros((n, 24), np.int64)
    np.add.at(counts, (h.rows[engage], hours), 1)
    return counts


def oracle_shares(
    sim: Simulation, setup: SimulatedSetup, params: EngineParams | None = None
) -> dict[str, Any]:
    """Oracle share of every policy over `setup.windows` windows after the simulated history."""
    params = params or EngineParams()
    cfg = sim.config
    zone = ZoneInfo(cfg.brand_tz)
    n = len(sim.profiles)
    h = history_of(sim)
    now = int(cfg.end.timestamp())
    counts = _hour_counts(h, n, zone)
    global_hour = int(np.argmax(counts.sum(axis=0)))
    user_hour = np.where(counts.sum(axis=1) > 0, np.argmax(counts, axis=1), global_hour)
    rng = np.random.default_rng(setup.seed)
    uncorrected = replace(params, activity=replace(params.activity, correct_send_time=False))
    people = ActivityTable.empty(n)
    fold_history(people, h.rows, h.utc_s, h.types, h.machine, zone, now, params.activity)
    audience = summed(people, now, params.activity.half_life_s)
    audience.archetypes = audience_archetypes(people, zone, now, params)
    chosen: dict[str, float] = dict.fromkeys(POLICIES, 0.0)
    best_total = 0.0
    prof = np.arange(n, dtype=np.intp)
    for window in _windows(cfg, setup.windows):
        minutes = np.arange(-(-window[0] // 60) * 60, window[1], 60, dtype=np.int64)
        # utility of every whole minute of the window for everyone: (n, minutes)
        util = np.empty((n, len(minutes)))
        for j in range(0, n, 256):
            p = prof[j : j + 256]
            grid = np.broadcast_to(minutes[None, :], (len(p), len(minutes)))
            util[j : j + 256] = sim.truth.engage_probability_of(
                np.repeat(p, len(minutes)).reshape(grid.shape), grid * 1000, HORIZON_MINUTES
            )
        best_total += float(util.max(axis=1).sum())
        starts = _hour_starts(window, zone)
        picks: dict[str, IntArray] = {
            "random": rng.integers(window[0], window[1], n),
            "global_hour": np.full(n, starts[global_hour], np.int64),
            "user_hour": starts[user_hour],
            "sendflowr": _sendflowr(people, audience, zone, now, window, setup.latency_s, params),
            "sendflowr_uncorrected": _sendflowr(
                people, audience, zone, now, window, setup.latency_s, uncorrected
            ),
        }
        for name, t in picks.items():
            col = np.clip((t - minutes[0]) // 60, 0, len(minutes) - 1)
            chosen[name] += float(util[prof, col].sum())
    return {
        "profiles": n,
        "events": len(sim.events),
        "machine_opens": int(h.machine.sum()),
        "oracle_share": {k: v / best_total for k, v in chosen.items()},
    }


def run_simulated(setup: SimulatedSetup, params: EngineParams | None = None) -> dict[str, Any]:
    """EVALUATION.md section 2: the biased schedule with 45% machine opens and without any."""
    runs: dict[str, Any] = {}
    for share in MACHINE_SHARES:
        cfg = SimConfig(
            seed=setup.seed, profiles=setup.profiles, days=setup.days, machine_open_share=share
        )
        runs[f"machine_open_share={share:g}"] = oracle_shares(simulate(cfg), setup, params)
    base = SimConfig(seed=setup.seed, profiles=setup.profiles, days=setup.days)
    return {
        "metric": "oracle share",
        "horizon_minutes": HORIZON_MINUTES,
        "seed": setup.seed,
        "profiles": setup.profiles,
        "history_days": setup.days,
        "windows": setup.windows,
        "latency_seconds": setup.latency_s,
        "brand_schedule": {
            "zone": base.brand_tz,
            "weekdays": list(base.send_weekdays),
            "minute_of_day": base.send_minute_of_day,
        },
        "runs": runs,
    }


def shares_table(report: dict[str, Any]) -> list[tuple[str, list[float]]]:
    """(policy, share per run) rows in POLICIES order, for printing."""
    runs = list(report["runs"].values())
    return [(name, [float(r["oracle_share"][name]) for r in runs]) for name in POLICIES]
