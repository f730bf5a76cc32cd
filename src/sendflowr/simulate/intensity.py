"""Each profile's true inbox-check intensity, its integral, and the inverse of that integral.

rate_r(UTC instant u) = scale_r * base_persona((local minute of week at u - shift_r) mod 10080).
The generator draws check times by inverting the cumulative rate and the evaluation computes
engagement probabilities from the same integral, so both always agree. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
from numpy.typing import NDArray

from sendflowr.simulate.config import SimConfig, TrueProfile
from sendflowr.simulate.personas import (
    MINUTES_PER_DAY,
    MINUTES_PER_WEEK,
    PERSONA_NAMES,
    base_rate,
    cumulative,
)
from sendflowr.simulate.timezones import zone_segments

MS_PER_MINUTE: Final = 60_000
# Offsets are tabulated this far around the period, so the truth can score decisions made later.
_SPAN_BEFORE: Final = timedelta(days=35)
_SPAN_AFTER: Final = timedelta(days=400)
# 1970-01-01 was a Thursday: Unix minute 0 is minute 3 * 1440 of a Monday-based week.
_EPOCH_MINUTE_OF_WEEK: Final = 3 * MINUTES_PER_DAY

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
IndexArray = NDArray[np.intp]


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(value: datetime) -> int:
    """UTC milliseconds since the epoch, exactly (no float rounding)."""
    return (value - _EPOCH) // timedelta(milliseconds=1)


class GroundTruth:
    """The true behaviour of a simulated audience; methods ending in `_of` are vectorised over
    profile indexes, and their times are float minutes since `origin_ms`."""

    def __init__(self, config: SimConfig, profiles: Sequence[TrueProfile]) -> None:
        self.config = config
        self.profiles = list(profiles)
        names = list(PERSONA_NAMES)
        zones = tuple(sorted({p.tz for p in profiles} | {z for z, _ in config.time_zones}))
        self._persona = np.array([names.index(p.persona) for p in profiles], dtype=np.intp)
        self._zone = np.array([zones.index(p.tz) for p in profiles], dtype=np.intp)
        self._shift = np.array([p.shift_minutes for p in profiles], dtype=np.int64)
        self._scale = np.array([p.scale for p in profiles], dtype=np.float64)
        self._p_open = np.array([p.p_open for p in profiles], dtype=np.float64)
        self._rate = np.stack([base_rate(n) for n in names])
        self._cum = np.stack([cumulative(n) for n in names])
        self._week = self._cum[:, -1].copy()
        start_ms = to_ms(config.start)
        self.origin_ms = start_ms - start_ms % MS_PER_MINUTE
        self._segments = zone_segments(
            zones,
            self.origin_ms,
            to_ms(config.start - _SPAN_BEFORE),
            to_ms(config.end + _SPAN_AFTER),
        )
        # Adding K to (minutes since origin + UTC offset) gives a minute count whose residue
        # modulo 10080 is the local minute of the week; K is reduced to keep sums small and exact.
        origin_min = self.origin_ms // MS_PER_MINUTE
        self._k = (origin_min + _EPOCH_MINUTE_OF_WEEK) % MINUTES_PER_WEEK
        self.horizon_minutes = config.open_horizon_hours * 60.0

    # -- public, per profile -------------------------------------------------------------------

    def intensity(self, profile_index: int, utc_ms: NDArray[np.int64]) -> FloatArray:
        """True inbox checks per minute of profile `profile_index` at the UTC instants `utc_ms`."""
        ms = np.asarray(utc_ms, dtype=np.int64)
        prof = np.full(ms.shape, profile_index, dtype=np.intp)
        return self.rate_of(prof, self.minutes(ms))

    def engage_probability(
        self, profile_index: int, delivery_utc_ms: NDArray[np.int64], horizon_minutes: int = 60
    ) -> FloatArray:
        """P(a real open within `horizon_minutes` of delivery) for deliveries at those instants.

        The person opens at their first inbox check after delivery with probability p_open, so
        this is p_open * (1 - exp(-expected checks in [d, d + horizon))).
        """
        ms = np.asarray(delivery_utc_ms, dtype=np.int64)
        prof = np.full(ms.shape, profile_index, dtype=np.intp)
        start = self.minutes(ms)
        span = min(float(horizon_minutes), self.horizon_minutes)
        checks = self.expected_checks_of(prof, start, start + span)
        p_open = float(self._p_open[profile_index])
        return p_open * -np.expm1(-checks)

    def engage_probability_of(
        self, prof: IndexArray, delivery_utc_ms: IntArray, horizon_minutes: int = 60
    ) -> FloatArray:
        """`engage_probability` vectorised: one delivery instant per element of `prof`."""
        start = self.minutes(delivery_utc_ms)
        span = min(float(horizon_minutes), self.horizon_minutes)
        checks = self.expected_checks_of(prof, start, start + span)
        out: FloatArray = self._p_open[prof] * -np.expm1(-checks)
        return out

    # -- vectorised over profiles --------------------------------------------------------------

    def minutes(self, utc_ms: NDArray[np.int64]) -> FloatArray:
        return (np.asarray(utc_ms, dtype=np.int64) - self.origin_ms) / MS_PER_MINUTE

    def to_utc_ms(self, minute: IntArray, frac: FloatArray) -> IntArray:
        """Whole minutes since the origin plus a fraction of a minute, floored to milliseconds.

        Flooring keeps the instant inside the minute the inversion chose, where the rate is > 0.
        """
        return (
            self.origin_ms
            + minute * MS_PER_MINUTE
            + np.floor(frac * MS_PER_MINUTE).astype(np.int64)
        )

    def rate_of(self, prof: IndexArray, minute: FloatArray) -> FloatArray:
        offset = self._segments.offset_at(self._zone[prof], minute)
        local = np.floor(minute).astype(np.int64) + offset - self._shift[prof] + self._k
        pers = self._persona[prof]
        rate: FloatArray = self._scale[prof] * self._rate[pers, local % MINUTES_PER_WEEK]
        return rate

    def expected_checks_of(self, prof: IndexArray, a: FloatArray, b: FloatArray) -> FloatArray:
        """Integral of the true rate over [a, b), following changes of UTC offset."""
        seg = self._segments
        zone, pers, base = self._zone[prof], self._persona[prof], self._k - self._shift[prof]
        total = np.zeros(np.broadcast(a, b).shape, dtype=np.float64)
        for j in range(seg.width):
            lo = np.maximum(a, seg.start[zone, j])
            hi = np.minimum(b, seg.end[zone, j])
            inside = hi > lo
            if not inside.any():
                continue
            shift = (base + seg.offset[zone, j])[inside]
            p = pers[inside]
            total[inside] += self._g(p, hi[inside] + shift) - self._g(p, lo[inside] + shift)
        return total * self._scale[prof]

    def check_after_of(
        self, prof: IndexArray, a: FloatArray, checks: FloatArray
    ) -> tuple[IntArray, FloatArray]:
        """The instant after `a` at which `checks` expected checks have accumulated.

        With checks ~ Exp(1) this is the first inbox check after `a`. Returned as whole minutes
        since the origin and the fraction of that minute.
        """
        seg = self._segments
        zone, pers, base = self._zone[prof], self._persona[prof], self._k - self._shift[prof]
        remaining = checks / self._scale[prof]
        minute = np.zeros(a.shape, dtype=np.int64)
        frac = np.zeros(a.shape, dtype=np.float64)
        todo = np.ones(a.shape, dtype=bool)
        for j in range(seg.width):
            live = todo & (seg.end[zone, j] > a)
            if not live.any():
                continue
            idx = np.flatnonzero(live)
            shift = base[idx] + seg.offset[zone[idx], j]
            p = pers[idx]
            y0 = self._g(p, np.maximum(a[idx], seg.start[zone[idx], j]) + shift)
            end = seg.end[zone[idx], j]
            finite = np.isfinite(end)
            mass = np.full(idx.shape, np.inf)
            mass[finite] = self._g(p[finite], end[finite] + shift[finite]) - y0[finite]
            hit = remaining[idx] < mass
            h = idx[hit]
            local_minute, local_frac = self._g_inverse(p[hit], y0[hit] + remaining[h])
            minute[h] = local_minute - shift[hit]
            frac[h] = local_frac
            todo[h] = False
            miss = idx[~hit]
            remaining[miss] -= mass[~hit]
        return minute, frac

    # -- the persona's cumulative rate over an unbounded local-minute axis ----------------------

    def _g(self, pers: IndexArray, v: FloatArray) -> FloatArray:
        week = np.floor(v / MINUTES_PER_WEEK)
        within = v - week * MINUTES_PER_WEEK
        i = np.clip(np.floor(within).astype(np.int64), 0, MINUTES_PER_WEEK - 1)
        out: FloatArray = (
            week * self._week[pers] + self._cum[pers, i] + self._rate[pers, i] * (within - i)
        )
        return out

    def _g_inverse(self, pers: IndexArray, y: FloatArray) -> tuple[IntArray, FloatArray]:
        total = self._week[pers]
        week = np.floor(y / total)
        rest = np.maximum(y - week * total, 0.0)
        wrap = rest >= total
        week[wrap] += 1.0
        rest[wrap] = 0.0
        i = np.empty(y.shape, dtype=np.int64)
        for p in np.unique(pers):
            mine = pers == p
            # The last minute whose cumulative start is <= rest has a positive rate (ties are runs
            # of zero-rate minutes, and side="right" skips past them).
            i[mine] = np.searchsorted(self._cum[p], rest[mine], side="right") - 1
        i = np.clip(i, 0, MINUTES_PER_WEEK - 1)
        rate = self._rate[pers, i]
        safe = np.where(rate > 0.0, rate, 1.0)
        frac = np.where(rate > 0.0, (rest - self._cum[pers, i]) / safe, 0.0)
        frac = np.clip(frac, 0.0, 1.0 - 1e-9)
        return week.astype(np.int64) * MINUTES_PER_WEEK + i, frac
