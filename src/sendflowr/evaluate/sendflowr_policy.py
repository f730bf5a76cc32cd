"""SendFlowr's production timing engine as a replay policy (EVALUATION.md section 1).

No evaluation-only model: the history the replay hands over is folded into activity profiles
with the same incremental update the pipeline uses (`ActivityTable.observe`, the audience via
`absorb`), and each day is decided by `engine.decide_batch`, the batch form of the decision the
API serves, given the zone by name as the API is. In activity logs every event is an engagement
signal of weight 1 and delivery is instant (latency 0), so target = trigger = the chosen instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np

from sendflowr.evaluate.replay import Day, Decisions, FloatArray, IntArray, ReplaySetup
from sendflowr.timing.activity import ActivityTable, global_prior
from sendflowr.timing.calibration import Calibration, any_between, fit_calibration
from sendflowr.timing.engine import EngineParams, audience_archetypes, decide_batch


class SendflowrPolicy:
    def __init__(self, params: EngineParams | None = None) -> None:
        self.params = params if params is not None else EngineParams()
        self._setup: ReplaySetup | None = None
        self._people = ActivityTable.empty(0)
        self._audiences: list[ActivityTable] = []
        self._prior = global_prior()
        self._fitted: dict[int, int] = {}
        self._seen: list[tuple[IntArray, IntArray]] = []  # every event observed
        self._decided: list[_Decided] = []  # per past day: what was decided

    def begin(self, setup: ReplaySetup) -> None:
        self._setup = setup
        self._people = ActivityTable.empty(setup.n_users)
        # one audience per zone: the replay's days are per zone, as a tenant's audience would be
        self._audiences = [ActivityTable.empty(1) for _ in setup.clocks]
        self._fitted = {}  # zone -> week its archetypes were fitted
        self._seen = []
        self._decided = []

    def observe(self, users: IntArray, unix_ts: IntArray) -> None:
        if self._setup is None:
            raise RuntimeError("observe before begin")
        if len(users) == 0:
            return
        self._seen.append((users, unix_ts))
        offsets = self._setup.local_seconds(users, unix_ts) - unix_ts
        now = int(unix_ts.max())
        act = self.params.activity
        weights = np.ones(len(users))
        aged_w, aged_d = self._people.observe(users, unix_ts, offsets, weights, now, act)
        zone = self._setup.user_zone[users]
        for z, audience in enumerate(self._audiences):
            mine = zone == z
            audience.absorb(
                unix_ts[mine], offsets[mine], aged_w[mine], aged_d[mine], now, act.half_life_s
            )

    def choose(self, day: Day) -> Decisions:
        if self._setup is None:
            raise RuntimeError("choose before begin")
        zone = ZoneInfo(self._setup.clocks[day.zone].zone)
        # the audience's archetypes, refitted on everyone's history so far (production refits
        # them when it rebuilds a tenant's audience): weekly here
        week = day.start // (7 * 86_400)
        if self._fitted.get(day.zone) != week:
            self._fitted[day.zone] = week
            in_zone = self._setup.user_zone == day.zone
            people = self._people
            if not in_zone.all():
                people = ActivityTable.empty(int(in_zone.sum()))
                people.copy_rows(slice(None), self._people, np.flatnonzero(in_zone))
            self._audiences[day.zone].archetypes = audience_archetypes(
                people, zone, day.start, self.params
            )
        # the confidence map, fitted as production fits a tenant's (timing/calibration.py) on
        # the past decisions of this zone and what followed them: a day's decision was acted
        # on when its person was active that day (the windows the replay scores)
        self._audiences[day.zone].calibration = self._calibration(day)
        got = decide_batch(
            self._people,
            day.users,
            self._audiences[day.zone],
            self._prior,
            day.start,
            day.end,
            zone,
            0,
            day.start,
            self.params,
        )
        self._decided.append(
            _Decided(day.zone, day.start, day.end, day.users, got.target, got.engine_confidence)
        )
        return Decisions(got.target, got.confidence)

    def _calibration(self, day: Day) -> Calibration | None:
        past = [d for d in self._decided if d.zone == day.zone and d.end <= day.start]
        if not past or not self._seen:
            return None
        ev_users = np.concatenate([u for u, _ in self._seen])
        ev_ts = np.concatenate([t for _, t in self._seen])
        users = np.concatenate([d.users for d in past])
        start = np.concatenate([np.full(len(d.users), d.start, np.int64) for d in past])
        end = np.concatenate([np.full(len(d.users), d.end, np.int64) for d in past])
        t = np.concatenate([d.target for d in past])
        acted = any_between(users, start, end, ev_users, ev_ts)
        engaged = any_between(users, t, t + self.params.horizon_s, ev_users, ev_ts)
        stated = np.concatenate([d.stated for d in past])
        return fit_calibration(stated[acted], engaged[acted])


@dataclass(frozen=True, slots=True)
class _Decided:
    zone: int
    start: int
    end: int
    users: IntArray
    target: IntArray
    stated: FloatArray  # the engine's confidence before calibration


def sendflowr_policy(params: EngineParams | None = None) -> SendflowrPolicy:
    """The policy under its report name `sendflowr`."""
    return SendflowrPolicy(params)
