"""The three baselines of EVALUATION.md section 1, as replay policies (pure).

Hour counts are kept incrementally from the history each `observe` adds, so a whole replay
touches every event once.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from sendflowr.evaluate.replay import Day, Decisions, IntArray, Policy, ReplaySetup

HOURS: Final = 24


class RandomPolicy:
    """`random`: t uniform in [start(D), end(D)) from a generator seeded by the replay seed."""

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)

    def begin(self, setup: ReplaySetup) -> None:
        self._rng = np.random.default_rng(setup.seed)

    def observe(self, users: IntArray, unix_ts: IntArray) -> None:
        pass

    def choose(self, day: Day) -> Decisions:
        return Decisions(self._rng.integers(day.start, day.end, size=len(day.users)))


class _HourCounts:
    """Events per (user, local hour of day), all history so far."""

    def __init__(self) -> None:
        self._setup: ReplaySetup | None = None
        self.per_user = np.zeros((0, HOURS), np.int64)

    def begin(self, setup: ReplaySetup) -> None:
        self._setup = setup
        self.per_user = np.zeros((setup.n_users, HOURS), np.int64)

    def observe(self, users: IntArray, unix_ts: IntArray) -> None:
        if self._setup is None:
            raise RuntimeError("observe before begin")
        hours = self._setup.local_hour(users, unix_ts)
        np.add.at(self.per_user, (users, hours), 1)

    def global_hour(self) -> int:
        # argmax returns the first maximum: ties go to the earliest hour, as the protocol says
        return int(np.argmax(self.per_user.sum(axis=0)))


class GlobalHourPolicy(_HourCounts):
    """`global_hour`: everyone gets the first instant of the audience's busiest local hour."""

    def choose(self, day: Day) -> Decisions:
        t = np.full(len(day.users), day.hour_starts[self.global_hour()], np.int64)
        return Decisions(t)


class UserHourPolicy(_HourCounts):
    """`user_hour`: each user's own busiest local hour; `global_hour` for users with no history."""

    def choose(self, day: Day) -> Decisions:
        counts = self.per_user[day.users]
        hours = np.where(counts.sum(axis=1) > 0, np.argmax(counts, axis=1), self.global_hour())
        return Decisions(day.hour_starts[hours])


def baselines() -> dict[str, Policy]:
    """The protocol's baselines by their report names."""
    return {
        "random": RandomPolicy(),
        "global_hour": GlobalHourPolicy(),
        "user_hour": UserHourPolicy(),
    }
