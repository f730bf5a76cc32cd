"""Personas: each a known inbox-check rate per minute over the local week.

Minute 0 is Monday 00:00 local time; the week has 10,080 minutes. A rate is the expected number of
inbox checks per minute, so a person's checks are a Poisson process with that intensity. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Final

import numpy as np
from numpy.typing import NDArray

MINUTES_PER_DAY: Final = 1440
MINUTES_PER_WEEK: Final = 7 * MINUTES_PER_DAY

# Bumps are cut off at this many standard deviations so that personas can have exact zeros
# (weekend_only on weekdays, office_hours at night): "never active then" must be testable.
_CUTOFF_SD: Final = 3.0


@dataclass(frozen=True, slots=True)
class Bump:
    """A truncated Gaussian over the minute of day, repeated on every day of the week."""

    center: float  # minute of day
    sd: float  # minutes
    weight: float  # relative height


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    bumps: tuple[Bump, ...]
    day_weights: tuple[float, float, float, float, float, float, float]  # Monday .. Sunday
    floor: float  # constant level relative to a bump of weight 1, applied to every minute
    checks_per_week: float  # expected inbox checks per week before the personal scale


def _h(hour: float) -> float:
    return hour * 60.0


_WEEKDAYS: Final = (1.0, 1.0, 1.0, 1.0, 1.0)

PERSONAS: Final[tuple[Persona, ...]] = (
    Persona(
        "early_bird",
        (Bump(_h(6.0), 45, 1.0), Bump(_h(12.5), 40, 0.3), Bump(_h(19.0), 60, 0.25)),
        (*_WEEKDAYS, 0.8, 0.8),
        0.01,
        70.0,
    ),
    Persona(
        "commuter",
        (Bump(_h(7.75), 30, 1.0), Bump(_h(17.75), 35, 0.9), Bump(_h(12.5), 45, 0.2)),
        (*_WEEKDAYS, 0.35, 0.35),
        0.01,
        60.0,
    ),
    Persona(
        "lunch_checker",
        (Bump(_h(12.5), 30, 1.0), Bump(_h(9.0), 60, 0.2), Bump(_h(20.0), 60, 0.15)),
        (*_WEEKDAYS, 0.4, 0.4),
        0.01,
        50.0,
    ),
    Persona(
        "evening_reader",
        (Bump(_h(20.5), 60, 1.0), Bump(_h(7.5), 40, 0.2)),
        (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        0.01,
        56.0,
    ),
    Persona(
        "night_owl",
        (Bump(_h(23.5), 70, 1.0), Bump(_h(1.5), 60, 0.6), Bump(_h(14.0), 90, 0.2)),
        (1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.0),
        0.01,
        56.0,
    ),
    # Active only between 07:00 and 21:30 on Saturday and Sunday, so that a personal phase shift of
    # up to two hours never moves any activity onto a weekday.
    Persona(
        "weekend_only",
        (Bump(_h(10.5), 70, 1.0), Bump(_h(18.5), 60, 0.8)),
        (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0),
        0.0,
        16.0,
    ),
    Persona(
        "erratic",
        (Bump(_h(11.0), 180, 0.3), Bump(_h(21.0), 150, 0.2)),
        (1.0, 0.6, 1.3, 0.8, 1.1, 0.5, 1.4),
        1.0,
        20.0,
    ),
    Persona(
        "office_hours",
        (
            Bump(_h(9.5), 50, 1.0),
            Bump(_h(11.5), 60, 0.8),
            Bump(_h(14.5), 70, 0.9),
            Bump(_h(16.5), 50, 0.7),
        ),
        (*_WEEKDAYS, 0.05, 0.05),
        0.0,
        60.0,
    ),
)

PERSONA_NAMES: Final = tuple(p.name for p in PERSONAS)
_BY_NAME: Final = {p.name: p for p in PERSONAS}


def persona(name: str) -> Persona:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown persona {name!r}; known: {', '.join(PERSONA_NAMES)}") from None


@cache
def base_rate(name: str) -> NDArray[np.float64]:
    """Checks per minute for each of the 10,080 minutes of the local week (read-only)."""
    p = persona(name)
    minute = np.arange(MINUTES_PER_WEEK, dtype=np.float64) + 0.5
    rate = np.full(MINUTES_PER_WEEK, p.floor, dtype=np.float64)
    for day, day_weight in enumerate(p.day_weights):
        if day_weight == 0.0:
            continue
        for bump in p.bumps:
            # Circular distance so that a bump near midnight spills into the next day (and Sunday
            # night into Monday) instead of being cut at the day boundary.
            dist = (minute - (day * MINUTES_PER_DAY + bump.center)) % MINUTES_PER_WEEK
            dist = np.minimum(dist, MINUTES_PER_WEEK - dist)
            z = dist / bump.sd
            shape = np.where(z <= _CUTOFF_SD, np.exp(-0.5 * z * z), 0.0)
            rate += day_weight * bump.weight * shape
    rate *= p.checks_per_week / rate.sum()
    rate.flags.writeable = False
    return rate


@cache
def cumulative(name: str) -> NDArray[np.float64]:
    """Cumulative rate at the start of each minute, 10,081 values from 0 to the weekly total."""
    out = np.zeros(MINUTES_PER_WEEK + 1, dtype=np.float64)
    np.cumsum(base_rate(name), out=out[1:])
    out.flags.writeable = False
    return out
