"""EWH@60 replay (EVALUATION.md section 1): windows, the policy protocol, successes, bootstrap.

Pure: events come in as arrays, results go out as arrays. Times are unix seconds (int64).
Policies never see the event arrays: the replay hands each one copies of the events strictly
before start(D) just before asking it about day D, and asks about every user on every day of the
test span (which users are active on D is itself a peek), so seeing D or later is impossible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final, Protocol
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from sendflowr.timing.calibration import any_between

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

DAY: Final = 86_400
HOUR: Final = 3_600
HORIZON: Final = 3_600  # EWH@60: an event within 60 minutes of t
CUTOFF_SHARE: Final = 0.8
RESAMPLES: Final = 1_000
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
# Probe the zone this often; no real zone changes offset twice within 6 hours.
_PROBE_STEP: Final = 6 * HOUR
_MARGIN: Final = 3 * DAY  # day bounds reach past the first and last event


@dataclass(frozen=True, slots=True)
class ActivityEvents:
    """Activity events, one per (user, instant); `users` are dense codes into `labels`."""

    users: IntArray
    unix_ts: IntArray
    labels: tuple[str, ...]
    zones: tuple[str, ...] | None = None  # per user code, when the input names one per user


def _offset_at(tz: ZoneInfo, ts: int) -> int:
    delta = datetime.fromtimestamp(ts, UTC).astimezone(tz).utcoffset()
    assert delta is not None
    return int(delta.total_seconds())


class ZoneClock:
    """One IANA zone's UTC offsets over a span as a transition table, so conversions vectorise.

    Exact inside [lo, hi]; beyond it the edge offsets are assumed to hold.
    """

    def __init__(self, zone: str, lo: int, hi: int) -> None:
        tz = ZoneInfo(zone)
        self.zone = zone
        grid = list(range(lo, hi + _PROBE_STEP, _PROBE_STEP))
        probes = [_offset_at(tz, g) for g in grid]
        transitions: list[int] = []
        for k in range(len(grid) - 1):
            if probes[k] == probes[k + 1]:
                continue
            a, b = grid[k], grid[k + 1]  # offset(a) == probes[k] != offset(b)
            while b - a > 1:
                mid = (a + b) // 2
                a, b = (mid, b) if _offset_at(tz, mid) == probes[k] else (a, mid)
            transitions.append(b)
        self.transitions = np.array(transitions, np.int64)
        self.offsets = np.array([probes[0], *(_offset_at(tz, t) for t in transitions)], np.int64)

    def local_seconds(self, ts: IntArray) -> IntArray:
        """Local wall-clock time as seconds since 1970-01-01 00:00 local."""
        out: IntArray = ts + self.offsets[np.searchsorted(self.transitions, ts, side="right")]
        return out

    def first_instant(self, wall: IntArray) -> IntArray:
        """First instant whose local wall clock reads `wall` or later.

        Spring-forward gap: the instant clocks jump (the next existing one); fall-back: the
        first occurrence.
        """
        big = np.iinfo(np.int64).max
        lower = np.concatenate([[-big], self.transitions])
        upper = np.concatenate([self.transitions, [big]])
        cand = np.maximum(lower[None, :], wall[:, None] - self.offsets[None, :])
        out: IntArray = np.where(cand < upper[None, :], cand, big).min(axis=1)
        return out


@dataclass(frozen=True, slots=True)
class ReplaySetup:
    """What a policy may know before the replay starts: users, their zones, the seed."""

    n_users: int
    user_zone: IntArray  # index into `clocks`, per user code
    clocks: tuple[ZoneClock, ...]
    seed: int

    def local_seconds(self, users: IntArray, ts: IntArray) -> IntArray:
        if len(self.clocks) == 1:
            return self.clocks[0].local_seconds(ts)
        out = np.empty_like(ts)
        zone = self.user_zone[users]
        for z, clock in enumerate(self.clocks):
            mask = zone == z
            out[mask] = clock.local_seconds(ts[mask])
        return out

    def local_hour(self, users: IntArray, ts: IntArray) -> IntArray:
        out: IntArray = self.local_seconds(users, ts) % DAY // HOUR
        return out


@dataclass(frozen=True, slots=True)
class Day:
    """One local calendar day D of one zone, and every user of that zone.

    Every user, not only those with a window: who is active on D is itself part of D.
    """

    zone: int  # index into ReplaySetup.clocks
    local_date: date
    start: int  # start(D), unix seconds
    end: int  # end(D), exclusive
    hour_starts: IntArray  # first instant of each local hour 0..23 on D
    users: IntArray  # ascending user codes


@dataclass(frozen=True, slots=True)
class Decisions:
    """A policy's answer for one day: `t[i]` for `day.users[i]`, optionally a confidence."""

    t: IntArray
    confidence: FloatArray | None = None  # P(success) the policy claims, for calibration


class Policy(Protocol):
    def begin(self, setup: ReplaySetup) -> None:
        """Reset all state; called once before the first day."""

    def observe(self, users: IntArray, unix_ts: IntArray) -> None:
        """New history: every event in [previous day's start, this day's start), in
        (unix_ts, user) order; possibly empty. Called before each `choose`."""

    def choose(self, day: Day) -> Decisions: ...


@dataclass(frozen=True, slots=True)
class Windows:
    """The evaluation windows, sorted by (day start, zone, user), and the days to replay."""

    events: ActivityEvents  # deduplicated, sorted by (unix_ts, user)
    cutoff: int
    setup: ReplaySetup
    days: tuple[Day, ...]  # every day of each zone's test span, by (start, zone)
    users: IntArray  # per window
    day_index: IntArray  # per window, index into `days`
    decision_index: IntArray  # per window, index into all days' decisions laid end to end

    def __len__(self) -> int:
        return len(self.users)


def dedupe_sorted(events: ActivityEvents) -> ActivityEvents:
    order = np.lexsort((events.users, events.unix_ts))
    users, ts = events.users[order], events.unix_ts[order]
    keep = np.ones(len(ts), bool)
    keep[1:] = (users[1:] != users[:-1]) | (ts[1:] != ts[:-1])
    return ActivityEvents(users[keep], ts[keep], events.labels, events.zones)


def build_windows(
    events: ActivityEvents, zone_or_zones: str | Sequence[str], seed: int = 0
) -> Windows:
    ev = dedupe_sorted(events)
    n = len(ev.unix_ts)
    if n == 0:
        raise ValueError("no events")
    n_users = len(ev.labels)
    names = [zone_or_zones] * n_users if isinstance(zone_or_zones, str) else list(zone_or_zones)
    if len(names) != n_users:
        raise ValueError(f"{len(names)} zones given for {n_users} users")
    zone_names, user_zone = np.unique(np.array(names, dtype=object), return_inverse=True)
    lo, hi = int(ev.unix_ts[0]) - _MARGIN, int(ev.unix_ts[-1]) + _MARGIN
    clocks = tuple(ZoneClock(str(z), lo, hi) for z in zone_names)
    setup = ReplaySetup(n_users, user_zone.astype(np.int64), clocks, seed)

    cutoff = int(ev.unix_ts[int(np.floor(CUTOFF_SHARE * n))])
    test = ev.unix_ts >= cutoff
    t_users = ev.users[test]
    local_day = setup.local_seconds(t_users, ev.unix_ts[test]) // DAY
    zone = setup.user_zone[t_users]
    keys = np.unique(np.stack([local_day, zone, t_users], axis=1), axis=0)
    days: list[Day] = []
    walls_per_day = DAY * np.arange(25, dtype=np.int64) // 24  # 00:00 .. 23:00, next 00:00
    zone_users = [np.flatnonzero(setup.user_zone == z) for z in range(len(clocks))]
    for z, clock in enumerate(clocks):
        roster = zone_users[z]
        roster.flags.writeable = False
        in_zone = keys[keys[:, 1] == z, 0]
        if len(in_zone) == 0:
            continue
        for d in range(int(in_zone.min()), int(in_zone.max()) + 1):
            bounds = clock.first_instant(d * DAY + walls_per_day)
            hour_starts = bounds[:24].copy()
            hour_starts.flags.writeable = False
            day_date = date.fromordinal(_EPOCH_ORDINAL + d)
            days.append(Day(z, day_date, int(bounds[0]), int(bounds[24]), hour_starts, roster))
    days.sort(key=lambda day: (day.start, day.zone))
    where = {
        (day.zone, day.local_date.toordinal() - _EPOCH_ORDINAL): i for i, day in enumerate(days)
    }
    first = np.cumsum([0, *(len(day.users) for day in days)])
    slots, slot_of = np.unique(keys[:, :2], axis=0, return_inverse=True)
    day_index = np.array([where[(z, d)] for d, z in slots.tolist()], np.int64)[slot_of.ravel()]
    rank_in_zone = np.empty(n_users, np.int64)
    for roster in zone_users:
        rank_in_zone[roster] = np.arange(len(roster))
    rank = rank_in_zone[keys[:, 2]]
    order = np.lexsort((keys[:, 2], day_index))  # by day as replayed, then user
    day_index, users = day_index[order], keys[order, 2]
    decision_index = (first[day_index] + rank[order]).astype(np.int64)
    return Windows(ev, cutoff, setup, tuple(days), users, day_index, decision_index)


@dataclass(frozen=True, slots=True)
class PolicyResult:
    name: str
    t: IntArray  # per window
    success: BoolArray  # per window
    confidence: FloatArray | None
    ewh: float
    ci_low: float
    ci_high: float


def replay_times(windows: Windows, policy: Policy) -> tuple[IntArray, FloatArray | None]:
    """Ask `policy` about every day, feeding it the history just before each; times per window."""
    ev = windows.events
    policy.begin(windows.setup)
    chosen: list[IntArray] = []
    stated: list[FloatArray] = []
    any_conf = False
    fed = 0
    for day in windows.days:
        upto = int(np.searchsorted(ev.unix_ts, day.start, side="left"))
        policy.observe(ev.users[fed:upto].copy(), ev.unix_ts[fed:upto].copy())
        fed = upto
        got = policy.choose(day)
        k = len(day.users)
        if got.t.shape != (k,) or not np.issubdtype(got.t.dtype, np.integer):
            raise ValueError(f"policy returned {got.t.shape} {got.t.dtype} times for {k} users")
        if np.any(got.t < day.start) or np.any(got.t >= day.end):
            raise ValueError(f"policy chose a time outside {day.local_date} ({day.start}..)")
        chosen.append(got.t.astype(np.int64))
        if got.confidence is None:
            stated.append(np.full(k, np.nan))
        elif got.confidence.shape != (k,):
            raise ValueError(f"policy returned {got.confidence.shape} confidences for {k} users")
        else:
            stated.append(got.confidence.astype(np.float64))
            any_conf = True
    t: IntArray = np.concatenate(chosen)[windows.decision_index]
    conf: FloatArray = np.concatenate(stated)[windows.decision_index]
    return t, (conf if any_conf else None)


def successes(windows: Windows, t: IntArray) -> BoolArray:
    """Whether each window's user has an event in [t, t + HORIZON)."""
    ev = windows.events
    return any_between(windows.users, t, t + HORIZON, ev.users, ev.unix_ts)


def bootstrap_ci(
    users: IntArray, success: BoolArray, seed: int, resamples: int = RESAMPLES
) -> tuple[float, float]:
    """95% percentile interval of successes/windows, resampling users with replacement.

    The same seed gives the same user draws for every policy, so intervals are paired.
    """
    present, idx = np.unique(users, return_inverse=True)
    wins = np.bincount(idx, minlength=len(present)).astype(np.float64)
    hits = np.bincount(idx, weights=success.astype(np.float64), minlength=len(present))
    draw = np.random.default_rng(seed).integers(0, len(present), size=(resamples, len(present)))
    rates = hits[draw].sum(axis=1) / wins[draw].sum(axis=1)
    low, high = np.quantile(rates, [0.025, 0.975])
    return float(low), float(high)


def evaluate_policy(windows: Windows, name: str, policy: Policy, seed: int = 0) -> PolicyResult:
    t, conf = replay_times(windows, policy)
    success = successes(windows, t)
    low, high = bootstrap_ci(windows.users, success, seed)
    return PolicyResult(name, t, success, conf, float(success.mean()), low, high)
