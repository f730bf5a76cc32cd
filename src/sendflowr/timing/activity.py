"""Compact per-person activity profiles in LOCAL time, updated incrementally (pure numpy).

A profile is recency-decayed engagement weight per 15-minute bin of the local week (672 bins,
Monday 00:00 first), plus decayed evidence (burst-discounted engagement weight), decayed count of
active local days, last engagement and the machine opens that were excluded. Decay is exact and
lazy: a row holds its values as of `last_update`; an update first ages the row to the batch's
`now` by 2^(-elapsed/half_life) and adds each event aged by its own distance to `now`.

Serialised (`to_bytes`): a 40-byte header and the bins as uint16 scaled to their maximum (the
scale is in the header): 40 + 672 * 2 = 1,384 bytes, under the 2 KB feature-cache budget.
Quantising against the maximum loses at most max/65535 per bin, far below the noise of counts.

Send-time bias hook: an engagement that comes within seconds of its delivery is a machine open
(excluded, counted); one that comes soon after delivery says as much about when the brand sent
as about when the person reads, so its weight is scaled by 1 - exp(-lag / prompt_s). Engagements
without a delivery time (site visits, orders, activity logs) keep their full weight.

`ActivityTable` holds many profiles as dense rows (the bulk rebuild and the replay use it); the
audience is a one-row table fed the same effective weights as the people.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

BIN_MINUTES: Final = 15
DAY_MINUTES: Final = 1_440
WEEK_MINUTES: Final = 7 * DAY_MINUTES
BINS: Final = WEEK_MINUTES // BIN_MINUTES  # 672
BINS_PER_DAY: Final = DAY_MINUTES // BIN_MINUTES
DAY_S: Final = 86_400
NEVER: Final = np.iinfo(np.int64).min  # "no engagement yet"
# 1970-01-01 was a Thursday: add three days so minute 0 of the week is Monday 00:00.
_MONDAY_SHIFT_MIN: Final = 3 * DAY_MINUTES
_HEADER: Final = struct.Struct("<BxxxqqqIfff")  # 40 bytes
_FORMAT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class ActivityParams:
    half_life_s: float = 60 * DAY_S  # recency: old habits fade, but slowly (tuned on replay)
    # Events closer than this to the person's previous one are mostly the same sitting: weight
    # 1 - exp(-gap / burst_s), so a burst of 20 messages counts about once and the curve tracks
    # P(engaging in a slot), not message volume.
    burst_s: float = 3_600.0
    machine_open_s: float = 5.0  # engagement this soon after delivery is a machine open
    prompt_s: float = 0.0  # send-time bias discount (0: off; no send data to tune it on)


def minute_of_week(local_s: IntArray) -> IntArray:
    """Local wall-clock seconds since 1970-01-01 00:00 local -> minute of week, Monday first."""
    out: IntArray = (local_s // 60 + _MONDAY_SHIFT_MIN) % WEEK_MINUTES
    return out


def _decay(elapsed_s: FloatArray | float, half_life_s: float) -> FloatArray:
    out: FloatArray = np.exp2(-np.maximum(elapsed_s, 0.0) / half_life_s)
    return out


@dataclass(slots=True)
class ActivityTable:
    """Profiles as dense rows; one row a person (or the whole audience)."""

    bins: npt.NDArray[np.float32]  # (rows, BINS), decayed weight as of last_update
    evidence: FloatArray  # decayed sum of effective engagement weight
    active_days: FloatArray  # decayed count of local days with an engagement
    last_update: IntArray  # utc s the decayed values refer to
    last_engagement: IntArray  # utc s, NEVER if none
    last_day: IntArray  # local day number of the last engagement
    machine_opens: IntArray  # excluded, not decayed

    @classmethod
    def empty(cls, rows: int) -> ActivityTable:
        return cls(
            np.zeros((rows, BINS), np.float32),
            np.zeros(rows),
            np.zeros(rows),
            np.zeros(rows, np.int64),
            np.full(rows, NEVER, np.int64),
            np.full(rows, NEVER, np.int64),
            np.zeros(rows, np.int64),
        )

    def __len__(self) -> int:
        return len(self.evidence)

    def aged(self, now: int, half_life_s: float) -> FloatArray:
        """Per row, the factor that ages its stored values to `now`."""
        return _decay((now - self.last_update).astype(np.float64), half_life_s)

    def observe(
        self,
        rows: IntArray,
        utc_s: IntArray,
        offset_s: IntArray,
        weights: FloatArray,
        now: int,
        params: ActivityParams,
        delivered_s: IntArray | None = None,
        machine: npt.NDArray[np.bool_] | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """Add engagement events; returns, per event, its effective weight and its new-active-day
        count (0 or 1), both aged to `now`: what `absorb` adds to an aggregate.

        `offset_s`: the person's UTC offset at each event (local = utc + offset).
        `delivered_s`: delivery time of the message engaged with, or NEVER/absent.
        `machine`: the connector's machine-open flag. Rows need not be sorted.
        """
        n = len(rows)
        w = np.asarray(weights, np.float64).copy()
        if n == 0:
            return w, w.copy()
        now = max(int(now), int(utc_s.max()))
        if delivered_s is not None:
            has = delivered_s != NEVER
            lag = (utc_s - delivered_s).astype(np.float64)
            is_machine = has & (lag < params.machine_open_s)
            if machine is not None:
                is_machine |= machine
            np.add.at(self.machine_opens, rows[is_machine], 1)
            w[is_machine] = 0.0
            if params.prompt_s > 0:
                prompt = has & ~is_machine
                w[prompt] *= -np.expm1(-lag[prompt] / params.prompt_s)
        order = np.lexsort((utc_s, rows))
        r, t, w = rows[order], utc_s[order], w[order]
        day = (t + offset_s[order]) // DAY_S
        engaged = w > 0
        # previous engagement of the same row: within the batch, else the stored one
        prev = np.full(n, NEVER, np.int64)
        prev_day = self.last_day[r].copy()
        idx = np.where(engaged, np.arange(n), -1)
        last_seen = np.maximum.accumulate(idx)  # sorted by row: reset at row starts below
        row_start = np.ones(n, bool)
        row_start[1:] = r[1:] != r[:-1]
        start_idx = np.maximum.accumulate(np.where(row_start, np.arange(n), 0))
        before = np.concatenate([[-1], last_seen[:-1]])
        inside = before >= start_idx
        prev[inside] = t[before[inside]]
        prev_day[inside] = day[before[inside]]
        stored = ~inside
        prev[stored] = self.last_engagement[r[stored]]
        if params.burst_s > 0:
            gap = np.where(prev == NEVER, np.inf, (t - prev).astype(np.float64))
            w = w * -np.expm1(-gap / params.burst_s)
        aged = w * _decay((now - t).astype(np.float64), params.half_life_s)
        new_day = engaged & (day != prev_day)
        touched = np.unique(r)
        row_age = _decay((now - self.last_update[touched]).astype(np.float64), params.half_life_s)
        self.bins[touched] *= row_age[:, None].astype(np.float32)
        self.evidence[touched] *= row_age
        self.active_days[touched] *= row_age
        self.last_update[touched] = now
        local_bin = minute_of_week(t + offset_s[order]) // BIN_MINUTES
        np.add.at(self.bins, (r, local_bin), aged.astype(np.float32))
        np.add.at(self.evidence, r, aged)
        ones = _decay((now - t[new_day]).astype(np.float64), params.half_life_s)
        np.add.at(self.active_days, r[new_day], ones)
        # within a row events are sorted by time, so its last engaged event is the latest
        ends = np.flatnonzero(np.r_[r[1:] != r[:-1], True])
        last_engaged = last_seen[ends]
        ok = last_engaged >= start_idx[ends]
        self.last_engagement[r[ends[ok]]] = t[last_engaged[ok]]
        self.last_day[r[ends[ok]]] = day[last_engaged[ok]]
        out_w, out_d = np.empty(n), np.zeros(n)
        out_w[order] = aged
        out_d[order[new_day]] = ones
        return out_w, out_d

    def absorb(
        self,
        utc_s: IntArray,
        offset_s: IntArray,
        aged_weights: FloatArray,
        aged_days: FloatArray,
        now: int,
        half_life_s: float,
    ) -> None:
        """Add what `observe` returned for people to row 0, the audience aggregate (so the
        audience is the sum of its people, active days included)."""
        if len(utc_s) == 0:
            return
        now = max(int(now), int(utc_s.max()))
        age = float(_decay(float(now - self.last_update[0]), half_life_s))
        self.bins[0] *= np.float32(age)
        self.evidence[0] = self.evidence[0] * age + aged_weights.sum()
        self.active_days[0] = self.active_days[0] * age + aged_days.sum()
        self.last_update[0] = now
        local_bin = minute_of_week(utc_s + offset_s) // BIN_MINUTES
        np.add.at(self.bins[0], local_bin, aged_weights.astype(np.float32))
        latest = int(np.argmax(utc_s))
        if utc_s[latest] > self.last_engagement[0]:
            self.last_engagement[0] = utc_s[latest]
            self.last_day[0] = (utc_s[latest] + offset_s[latest]) // DAY_S

    def row(self, i: int) -> ActivityProfile:
        return ActivityProfile(
            self.bins[i].copy(),
            float(self.evidence[i]),
            float(self.active_days[i]),
            int(self.last_update[i]),
            int(self.last_engagement[i]),
            int(self.last_day[i]),
            int(self.machine_opens[i]),
        )


@dataclass(slots=True)
class ActivityProfile:
    """One person's profile, as kept in the feature cache."""

    bins: npt.NDArray[np.float32]
    evidence: float = 0.0
    active_days: float = 0.0
    last_update: int = 0
    last_engagement: int = NEVER
    last_day: int = NEVER
    machine_opens: int = 0

    @classmethod
    def empty(cls) -> ActivityProfile:
        return cls(np.zeros(BINS, np.float32))

    def table(self) -> ActivityTable:
        """A one-row table sharing nothing with this profile (update it, then `row(0)`)."""
        t = ActivityTable.empty(1)
        t.bins[0] = self.bins
        t.evidence[0], t.active_days[0] = self.evidence, self.active_days
        t.last_update[0], t.last_engagement[0] = self.last_update, self.last_engagement
        t.last_day[0], t.machine_opens[0] = self.last_day, self.machine_opens
        return t

    def to_bytes(self) -> bytes:
        top = float(self.bins.max(initial=0.0))
        scale = top / 65_535.0 if top > 0 else 1.0
        q = np.rint(self.bins.astype(np.float64) / scale).clip(0, 65_535).astype("<u2")
        header = _HEADER.pack(
            _FORMAT_VERSION,
            self.last_update,
            self.last_engagement,
            self.last_day,
            self.machine_opens,
            self.evidence,
            self.active_days,
            scale,
        )
        return header + q.tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ActivityProfile:
        if len(raw) != SERIALISED_BYTES:
            raise ValueError(f"profile is {len(raw)} bytes, not {SERIALISED_BYTES}")
        version, upd, last, last_day, machine, evidence, days, scale = _HEADER.unpack_from(raw)
        if version != _FORMAT_VERSION:
            raise ValueError(f"profile format version {version} is not {_FORMAT_VERSION}")
        q = np.frombuffer(raw, "<u2", BINS, _HEADER.size)
        bins = (q.astype(np.float64) * scale).astype(np.float32)
        return cls(bins, evidence, days, upd, last, last_day, machine)


SERIALISED_BYTES: Final = _HEADER.size + 2 * BINS  # 1,384


def _bump(minutes: FloatArray, centre_h: float, width_h: float) -> FloatArray:
    d = (minutes - centre_h * 60.0) / (width_h * 60.0)
    out: FloatArray = np.exp(-0.5 * d * d)
    return out


def global_prior() -> FloatArray:
    """A fixed, smooth week shape for people and audiences with no history, summing to 1.

    Weekdays: a morning peak at 09:30 and an afternoon one at 14:00 (office hours, where most
    email is read) and a smaller evening one at 20:30 (reading at home); weekends: a late
    morning and an evening peak at half the weekday level. A small floor keeps every slot
    possible. It only has to be sensible: real audiences replace it as soon as they have data.
    """
    minutes: FloatArray = (np.arange(BINS_PER_DAY, dtype=np.float64) + 0.5) * BIN_MINUTES
    office = _bump(minutes, 9.5, 1.5) + 0.8 * _bump(minutes, 14.0, 1.75)
    weekday = office + 0.5 * _bump(minutes, 20.5, 1.5)
    weekend = 0.5 * (_bump(minutes, 11.0, 2.0) + _bump(minutes, 20.0, 2.0))
    week = np.concatenate([weekday] * 5 + [weekend] * 2) + 0.02
    out: FloatArray = week / week.sum()
    return out
