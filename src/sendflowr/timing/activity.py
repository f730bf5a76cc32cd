"""Compact per-person activity profiles in LOCAL time, updated incrementally (pure numpy).

A profile is recency-decayed engagement weight per 15-minute bin of the local week (672 bins,
Monday 00:00 first), plus decayed evidence (burst-discounted engagement weight), decayed count of
active local days, last engagement and the machine opens that were excluded. Decay is exact and
lazy: a row holds its values as of `last_update`; an update first ages the row to the batch's
`now` by 2^(-elapsed/half_life) and adds each event aged by its own distance to `now`.

Serialised (`to_bytes`): a 40-byte header and the bins as uint16 scaled to their maximum (the
scale is in the header): 40 + 672 * 2 = 1,384 bytes, under the 2 KB feature-cache budget.
Quantising against the maximum loses at most max/65535 per bin, far below the noise of counts.

Send-time bias hook: an engagement that comes within seconds of its delivery (the one given, or
else its row's latest delivery seen) is a machine open (excluded, counted); one that comes soon
after delivery says as much about when the brand sent as about when the person reads, so its
weight is scaled by 1 - exp(-lag / prompt_s). Engagements without a delivery time (activity
logs, or no delivery seen before them) keep their full weight.

`ActivityTable` holds many profiles as dense rows (the bulk rebuild and the replay use it); the
audience is a one-row table fed the same effective weights as the people.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sendflowr.timing.archetypes import Archetypes
    from sendflowr.timing.calibration import Calibration

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
_HEADER_V1: Final = struct.Struct("<BxxxqqqIfff")  # 44 bytes
_HEADER: Final = struct.Struct("<BxxxqqqIfffqqfff")  # 72 bytes
_FORMAT_VERSION: Final = 2
HOURS: Final = 7 * 24  # exposure and prompted weight: hours of the local week
LAG_BUCKETS: Final = 16  # latency histogram: [0, 30 s), then octaves from 30 s
LAG_BASE_S: Final = 30.0
_SPAN: Final = np.int64(1) << np.int64(34)  # above any utc second in use (year 2514)


@dataclass(frozen=True, slots=True)
class ActivityParams:
    half_life_s: float = 60 * DAY_S  # recency: old habits fade, but slowly (tuned on replay)
    # Events closer than this to the person's previous one are mostly the same sitting: weight
    # 1 - exp(-gap / burst_s), so a burst of 20 messages counts about once and the curve tracks
    # P(engaging in a slot), not message volume.
    burst_s: float = 3_600.0
    machine_open_s: float = 5.0  # engagement this soon after delivery is a machine open
    prompt_s: float = 0.0  # send-time bias discount (0: off; no send data to tune it on)
    # Send-time-bias correction (see the module notes): a delivered message exposes the person
    # until their next real engagement or this cap; engagements this soon after an exposure
    # ended are its response (a click right after the open), and the exposure-hours prior
    # shrinks thin hours' hazard toward the uncorrected curve.
    correct_send_time: bool = True
    exposure_cap_s: float = 3 * DAY_S
    # An unanswered delivery (the next event is another delivery, or the cap passes) counts
    # this much exposure: the person saw it at some unobserved check and let it be, so its
    # exposure is unknown; 0 counts only the answered ones (hazard given an answer).
    unanswered_exposure_s: float = 0.0
    prompt_grace_s: float = 1_800.0
    exposure_prior_h: float = 0.25


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
    # send-time-bias correction and latency (all decayed like `bins`, zero without deliveries)
    prompted: npt.NDArray[np.float32]  # (rows, HOURS) weight of engagements answering a delivery
    exposure: npt.NDArray[np.float32]  # (rows, HOURS) hours with a delivered message waiting
    lag: npt.NDArray[np.float32]  # (rows, LAG_BUCKETS) delivery -> engagement lags
    pending_since: IntArray  # utc s of the delivery still waiting (open exposure), NEVER if none
    exposure_end: IntArray  # utc s the last exposure ended, NEVER if none
    # an audience's fitted shapes (timing/archetypes.py); None for people and unfitted audiences
    archetypes: Archetypes | None = None
    # an audience's confidence map, fitted on the tenant's past decisions (timing/calibration.py)
    calibration: Calibration | None = None

    @classmethod
    def empty(cls, rows: int) -> ActivityTable:
        # np.zeros maps untouched pages lazily: tables without deliveries pay for `bins` only
        return cls(
            np.zeros((rows, BINS), np.float32),
            np.zeros(rows),
            np.zeros(rows),
            np.zeros(rows, np.int64),
            np.full(rows, NEVER, np.int64),
            np.full(rows, NEVER, np.int64),
            np.zeros(rows, np.int64),
            np.zeros((rows, HOURS), np.float32),
            np.zeros((rows, HOURS), np.float32),
            np.zeros((rows, LAG_BUCKETS), np.float32),
            np.full(rows, NEVER, np.int64),
            np.full(rows, NEVER, np.int64),
        )

    def __len__(self) -> int:
        return len(self.evidence)

    def copy_rows(
        self, at: IntArray | slice, src: ActivityTable, src_rows: IntArray | slice
    ) -> None:
        """`self[at] = src[src_rows]`, every column (use this rather than naming columns)."""
        for name in _COLUMNS:
            getattr(self, name)[at] = getattr(src, name)[src_rows]

    def aged(self, now: int, half_life_s: float) -> FloatArray:
        """Per row, the factor that ages its stored values to `now`."""
        return _decay((now - self.last_update).astype(np.float64), half_life_s)

    def _age_rows(self, touched: IntArray, now: int, half_life_s: float) -> None:
        """Bring every decayed column of `touched` (unique rows) forward to `now`."""
        row_age = _decay((now - self.last_update[touched]).astype(np.float64), half_life_s)
        age32 = row_age[:, None].astype(np.float32)
        self.bins[touched] *= age32
        self.prompted[touched] *= age32
        self.exposure[touched] *= age32
        self.lag[touched] *= age32
        self.evidence[touched] *= row_age
        self.active_days[touched] *= row_age
        self.last_update[touched] = np.maximum(self.last_update[touched], now)

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
        delivery: npt.NDArray[np.bool_] | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """Add engagement events; returns, per event, its effective weight and its new-active-day
        count (0 or 1), both aged to `now`: what `absorb` adds to an aggregate.

        `offset_s`: the person's UTC offset at each event (local = utc + offset).
        `delivered_s`: delivery time of the message engaged with, or NEVER/absent.
        `machine`: the connector's machine-open flag. Rows need not be sorted.
        `delivery`: events that are deliveries (`received`): they add no weight, they open an
        exposure that the person's next real engagement closes (the send-time-bias correction
        and the delivery -> engagement latency). Without it, nothing about deliveries changes.
        With it and without `delivered_s`, each engagement's delivery is taken to be its row's
        latest one (`latest_delivery`), so an engagement within `machine_open_s` of a delivery
        is a machine open even when the connector did not flag it (a mail client or a link
        scanner fetching the message as it arrives).
        """
        n = len(rows)
        if delivery is None or n == 0:
            return self._observe(rows, utc_s, offset_s, weights, now, params, delivered_s, machine)
        now = max(int(now), int(utc_s.max()))
        is_d = np.asarray(delivery, np.bool_)
        if delivered_s is None:
            # an engagement within seconds of its row's latest delivery is a machine open
            delivered_s = self.latest_delivery(rows, utc_s, is_d)
        e = np.flatnonzero(~is_d)
        out_w, out_d = np.zeros(n), np.zeros(n)
        if len(e):
            out_w[e], out_d[e] = self._observe(
                rows[e],
                utc_s[e],
                offset_s[e],
                np.asarray(weights, np.float64)[e],
                now,
                params,
                None if delivered_s is None else delivered_s[e],
                None if machine is None else machine[e],
            )
        self._expose(rows, utc_s, offset_s, is_d, ~is_d & (out_w > 0), out_w, now, params)
        return out_w, out_d

    def latest_delivery(
        self, rows: IntArray, utc_s: IntArray, is_delivery: npt.NDArray[np.bool_]
    ) -> IntArray:
        """Per event, utc s of its row's latest delivery at or before it: in the batch, else
        the row's stored open exposure (`pending_since`); NEVER if none is known."""
        n = len(rows)
        order = np.lexsort((~is_delivery, utc_s, rows))  # deliveries first on equal times
        r, t, dv = rows[order], utc_s[order], is_delivery[order]
        row_start = np.r_[True, r[1:] != r[:-1]]
        start_idx = np.maximum.accumulate(np.where(row_start, np.arange(n), 0))
        last_d = np.maximum.accumulate(np.where(dv, np.arange(n), -1))
        inside = last_d >= start_idx
        found = np.where(inside, t[np.maximum(last_d, 0)], self.pending_since[r])
        out = np.empty(n, np.int64)
        out[order] = found
        return out

    def _observe(
        self,
        rows: IntArray,
        utc_s: IntArray,
        offset_s: IntArray,
        weights: FloatArray,
        now: int,
        params: ActivityParams,
        delivered_s: IntArray | None,
        machine: npt.NDArray[np.bool_] | None,
    ) -> tuple[FloatArray, FloatArray]:
        n = len(rows)
        w = np.asarray(weights, np.float64).copy()
        if n == 0:
            return w, w.copy()
        now = max(int(now), int(utc_s.max()))
        # the connector's flag counts with or without delivery times
        is_machine = np.zeros(n, np.bool_) if machine is None else np.asarray(machine, np.bool_)
        if delivered_s is not None:
            has = delivered_s != NEVER
            lag = (utc_s - delivered_s).astype(np.float64)
            is_machine = is_machine | (has & (lag < params.machine_open_s))
            if params.prompt_s > 0:
                prompt = has & ~is_machine
                w[prompt] *= -np.expm1(-lag[prompt] / params.prompt_s)
        if is_machine.any():
            np.add.at(self.machine_opens, rows[is_machine], 1)
            w[is_machine] = 0.0
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
        self._age_rows(np.unique(r), now, params.half_life_s)
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

    def _expose(
        self,
        rows: IntArray,
        utc_s: IntArray,
        offset_s: IntArray,
        is_delivery: npt.NDArray[np.bool_],
        is_engagement: npt.NDArray[np.bool_],
        aged_w: FloatArray,
        now: int,
        params: ActivityParams,
    ) -> None:
        """The exposure state machine, vectorised. A delivery D exposes its row over
        [D, min(D + cap, next delivery or real engagement)); the engagement that ends an
        exposure within the cap gives a latency sample (from the latest delivery), and it and
        the engagements within the grace after it are `prompted`. The last open exposure of a
        row is kept as `pending_since` and closed by the row's next batch (or read as open)."""
        sel = np.flatnonzero(is_delivery | is_engagement)
        if len(sel) == 0:
            return
        r, t, off = rows[sel], utc_s[sel], offset_s[sel]
        dv, w = is_delivery[sel], aged_w[sel]
        touched = np.unique(r)
        self._age_rows(touched, now, params.half_life_s)
        # the stored open exposure re-enters as a delivery at its start
        carried = touched[self.pending_since[touched] != NEVER]
        if len(carried):
            by_row = np.argsort(r, kind="stable")
            first_off = off[by_row[np.searchsorted(r[by_row], carried)]]
            r = np.concatenate([carried, r])
            t = np.concatenate([self.pending_since[carried], t])
            off = np.concatenate([first_off, off])
            dv = np.concatenate([np.ones(len(carried), np.bool_), dv])
            w = np.concatenate([np.zeros(len(carried)), w])
        order = np.lexsort((~dv, t, r))  # by row, time, deliveries first on ties
        r, t, off, dv, w = r[order], t[order], off[order], dv[order], w[order]
        last_in_row = np.r_[r[1:] != r[:-1], True]
        first_in_row = np.r_[True, r[1:] != r[:-1]]
        cap = int(params.exposure_cap_s)
        nxt = np.where(last_in_row, np.iinfo(np.int64).max, np.r_[t[1:], 0])
        closed = dv & ~last_in_row
        nxt_is_e = np.r_[~dv[1:], False] & ~last_in_row
        answered = closed & nxt_is_e & (nxt - t < cap)
        end = np.where(answered, nxt, np.minimum(t + int(params.unanswered_exposure_s), nxt))
        d_idx = np.flatnonzero(closed & (end > t))
        self._add_exposure(r[d_idx], t[d_idx], end[d_idx], off[d_idx], now, params)
        # engagements that end an exposure, and when each exposure ended
        prev_d = np.r_[False, dv[:-1]] & ~first_in_row
        prev_t = np.r_[0, t[:-1]]
        closes = ~dv & prev_d
        within = closes & (t - prev_t < cap)
        ended = np.where(within, t, np.where(closes, prev_t + cap, NEVER))
        # running latest end per row, starting from the stored one
        base = np.where(first_in_row, self.exposure_end[r], NEVER)
        seg = np.cumsum(first_in_row) - 1
        running = np.maximum(ended, base)
        # a per-row cumulative maximum: offset each row's values so rows do not mix
        val = np.where(running == NEVER, 0, np.clip(running + 1, 1, _SPAN - 1))
        acc = np.maximum.accumulate(seg * _SPAN + val) - seg * _SPAN
        last_end = np.where(acc == 0, NEVER, acc - 1)
        prompted = ~dv & (last_end != NEVER) & (t - last_end <= params.prompt_grace_s)
        hour = minute_of_week(t + off) // 60
        np.add.at(self.prompted, (r[prompted], hour[prompted]), w[prompted].astype(np.float32))
        lag = (t - prev_t)[within].astype(np.float64)
        octave = np.floor(np.log2(np.maximum(lag, 1.0) / LAG_BASE_S)).astype(np.int64)
        bucket = np.clip(octave + 1, 0, LAG_BUCKETS - 1)
        lag_w = _decay((now - t[within]).astype(np.float64), params.half_life_s)
        np.add.at(self.lag, (r[within], bucket), lag_w.astype(np.float32))
        ends_at = np.flatnonzero(last_in_row)
        self.exposure_end[r[ends_at]] = last_end[ends_at]
        self.pending_since[r[ends_at]] = np.where(dv[ends_at], t[ends_at], NEVER)

    def _add_exposure(
        self,
        rows: IntArray,
        start: IntArray,
        end: IntArray,
        offset_s: IntArray,
        now: int,
        params: ActivityParams,
    ) -> None:
        """Add the hours of [start, end) per row to the local hour-of-week exposure, aged."""
        add_exposure(self.exposure, rows, start, end, offset_s, now, params.half_life_s)

    def open_exposure(
        self, rows: IntArray, offset_s: IntArray, now: int, params: ActivityParams
    ) -> npt.NDArray[np.float32]:
        """`exposure[rows]` as of `now`, the still-open exposures included (read-only: the
        stored rows are not changed). `offset_s`: each row's UTC offset."""
        out = self.exposure[rows] * self.aged(now, params.half_life_s)[rows, None].astype(
            np.float32
        )
        pend = self.pending_since[rows]
        open_ = np.flatnonzero(pend != NEVER)
        if len(open_):
            s = pend[open_]
            e = np.minimum(s + int(params.unanswered_exposure_s), now)
            ok = e > s
            add_exposure(out, open_[ok], s[ok], e[ok], offset_s[open_][ok], now, params.half_life_s)
        return out

    def median_latency_s(self, i: int) -> float | None:
        """The row's median delivery -> real engagement lag in seconds (None without one)."""
        return median_latency(self.lag[i])

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
        audience is the sum of its people, active days included). Carries no delivery data:
        an audience that needs the correction is built with `summed` instead."""
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
            self.prompted[i].copy(),
            self.exposure[i].copy(),
            self.lag[i].copy(),
            int(self.pending_since[i]),
            int(self.exposure_end[i]),
        )

    def set_row(self, i: int, p: ActivityProfile) -> None:
        self.bins[i] = p.bins
        self.evidence[i], self.active_days[i] = p.evidence, p.active_days
        self.last_update[i], self.last_engagement[i] = p.last_update, p.last_engagement
        self.last_day[i], self.machine_opens[i] = p.last_day, p.machine_opens
        self.prompted[i], self.exposure[i], self.lag[i] = p.prompted, p.exposure, p.lag
        self.pending_since[i], self.exposure_end[i] = p.pending_since, p.exposure_end


_COLUMNS: Final = (
    "bins",
    "evidence",
    "active_days",
    "last_update",
    "last_engagement",
    "last_day",
    "machine_opens",
    "prompted",
    "exposure",
    "lag",
    "pending_since",
    "exposure_end",
)


def summed(table: ActivityTable, now: int, half_life_s: float) -> ActivityTable:
    """All rows of `table` summed into one row aged to `now`: an audience built from its
    people, delivery data included (latency samples too)."""
    out = ActivityTable.empty(1)
    if len(table) == 0:
        return out
    age = table.aged(now, half_life_s)
    a32 = age[:, None].astype(np.float32)
    out.bins[0] = (table.bins * a32).sum(axis=0)
    out.prompted[0] = (table.prompted * a32).sum(axis=0)
    out.exposure[0] = (table.exposure * a32).sum(axis=0)
    out.lag[0] = (table.lag * a32).sum(axis=0)
    out.evidence[0] = float(table.evidence @ age)
    out.active_days[0] = float(table.active_days @ age)
    out.last_update[0] = now
    latest = int(np.argmax(table.last_engagement))
    out.last_engagement[0] = table.last_engagement[latest]
    out.last_day[0] = table.last_day[latest]
    out.machine_opens[0] = int(table.machine_opens.sum())
    return out


def add_exposure(
    into: npt.NDArray[np.float32],
    rows: IntArray,
    start: IntArray,
    end: IntArray,
    offset_s: IntArray,
    now: int,
    half_life_s: float,
) -> None:
    """Add the hours of each [start, end) (utc s, end > start) to `into[row, local hour of
    week]`, each piece aged by its distance to `now`."""
    if len(rows) == 0:
        return
    a = start + offset_s
    b = end + offset_s
    h0 = a // 3_600
    count = (b - 1) // 3_600 - h0 + 1
    k = np.repeat(np.arange(len(rows)), count)
    step = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    hour = h0[k] + step
    lo = np.maximum(hour * 3_600, a[k])
    hi = np.minimum((hour + 1) * 3_600, b[k])
    hours = (hi - lo) / 3_600.0
    mid_utc = (lo + hi) // 2 - offset_s[k]
    aged = hours * _decay((now - mid_utc).astype(np.float64), half_life_s)
    how = minute_of_week(hour * 3_600) // 60
    np.add.at(into, (rows[k], how), aged.astype(np.float32))


def median_latency(lag: npt.NDArray[np.float32]) -> float | None:
    """Median of a lag histogram (octave buckets from LAG_BASE_S), geometric within a bucket."""
    total = float(lag.sum())
    if total <= 0:
        return None
    cum = np.cumsum(lag.astype(np.float64))
    b = int(np.searchsorted(cum, total / 2))
    below = float(cum[b - 1]) if b > 0 else 0.0
    frac = (total / 2 - below) / max(float(lag[b]), 1e-12)
    if b == 0:
        return LAG_BASE_S * frac
    lo = LAG_BASE_S * 2.0 ** (b - 1)
    return float(lo * 2.0**frac)


def send_time_corrected(
    bins: npt.NDArray[np.float32],
    prompted: npt.NDArray[np.float32],
    exposure: npt.NDArray[np.float32],
    prior_h: float,
) -> npt.NDArray[np.float32]:
    """Curves with their delivery-prompted weight re-spread by the person's hazard.

    Per row: the weight of prompted engagements (those answering a delivery) is taken out of
    each hour in proportion and put back where the person's hazard is high, hazard being
    prompted weight per exposure hour, pooled into an hour-of-day and a day-of-week factor
    (separable), each shrunk toward the row's uncorrected prompted shape by `prior_h`
    exposure-hours (thin hours keep what the raw curve said). Rows without exposure are
    returned unchanged; so is the total weight of every row.
    """
    p = prompted.astype(np.float64)
    e = exposure.astype(np.float64)
    tot_p, tot_e = p.sum(axis=1), e.sum(axis=1)
    idx = np.flatnonzero((tot_p > 0) & (tot_e > 0))
    if len(idx) == 0:
        return bins
    out = bins.copy()
    p, e, tot_p = p[idx], e[idx], tot_p[idx]
    rho = (tot_p / tot_e[idx])[:, None]
    ph, eh = p.reshape(-1, 7, 24).sum(axis=1), e.reshape(-1, 7, 24).sum(axis=1)
    pd, ed = p.reshape(-1, 7, 24).sum(axis=2), e.reshape(-1, 7, 24).sum(axis=2)
    # prior hazard: the uncorrected shape at the mean hazard (no exposure: no change of shape)
    prior_hod = rho * ph / np.maximum(ph.mean(axis=1, keepdims=True), 1e-12)
    prior_dow = rho * pd / np.maximum(pd.mean(axis=1, keepdims=True), 1e-12)
    r_hod = (ph + prior_h * prior_hod) / (eh + prior_h)
    r_dow = (pd + 24 * prior_h * prior_dow) / (ed + 24 * prior_h)
    hazard = r_dow[:, :, None] * r_hod[:, None, :]
    shape = (hazard / np.maximum(hazard.sum(axis=(1, 2), keepdims=True), 1e-300)).reshape(-1, HOURS)
    moved = tot_p[:, None] * shape
    b = out[idx].astype(np.float64).reshape(-1, HOURS, BINS // HOURS)
    keep = np.clip(1.0 - p / np.maximum(quarter_sums(b), 1e-12), 0.0, 1.0)
    b *= keep[:, :, None]  # in place: the same products and sums, fewer temporaries
    b += (moved / (BINS // HOURS))[:, :, None]
    out[idx] = b.reshape(-1, BINS).astype(np.float32)
    return out


_F = TypeVar("_F", bound=np.floating[Any])


def quarter_sums(x: npt.NDArray[_F]) -> npt.NDArray[_F]:
    """`x.sum(axis=-1)` for a last axis of 4 (the quarter hours of an hour), bit for bit: numpy
    adds so few values one after the other, and so does this, but as whole-array additions
    instead of a reduction over an axis of four (several times faster)."""
    out = x[..., 0] + x[..., 1]
    out += x[..., 2]
    out += x[..., 3]
    return out


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
    prompted: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(HOURS, np.float32))
    exposure: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(HOURS, np.float32))
    lag: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(LAG_BUCKETS, np.float32))
    pending_since: int = NEVER
    exposure_end: int = NEVER

    @classmethod
    def empty(cls) -> ActivityProfile:
        return cls(np.zeros(BINS, np.float32))

    def table(self) -> ActivityTable:
        """A one-row table sharing nothing with this profile (update it, then `row(0)`)."""
        t = ActivityTable.empty(1)
        t.set_row(0, self)
        return t

    @property
    def median_latency_s(self) -> float | None:
        return median_latency(self.lag)

    def to_bytes(self) -> bytes:
        q, scale = _quantise(self.bins, 65_535, "<u2")
        qp, p_scale = _quantise(self.prompted, 65_535, "<u2")
        qe, e_scale = _quantise(self.exposure, 255, "u1")
        ql, l_scale = _quantise(self.lag, 255, "u1")
        header = _HEADER.pack(
            _FORMAT_VERSION,
            self.last_update,
            self.last_engagement,
            self.last_day,
            self.machine_opens,
            self.evidence,
            self.active_days,
            scale,
            self.pending_since,
            self.exposure_end,
            p_scale,
            e_scale,
            l_scale,
        )
        return header + q + qp + qe + ql

    @classmethod
    def from_bytes(cls, raw: bytes) -> ActivityProfile:
        if len(raw) == _V1_BYTES and raw[:1] == b"\x01":
            return cls._from_v1(raw)
        if len(raw) != SERIALISED_BYTES:
            raise ValueError(f"profile is {len(raw)} bytes, not {SERIALISED_BYTES}")
        (version, upd, last, last_day, machine, evidence, days, scale, pending, exp_end,
         p_scale, e_scale, l_scale) = _HEADER.unpack_from(raw)  # fmt: skip
        if version != _FORMAT_VERSION:
            raise ValueError(f"profile format version {version} is not {_FORMAT_VERSION}")
        off = _HEADER.size
        bins = _dequantise(raw, "<u2", BINS, off, scale)
        off += 2 * BINS
        prompted = _dequantise(raw, "<u2", HOURS, off, p_scale)
        off += 2 * HOURS
        exposure = _dequantise(raw, "u1", HOURS, off, e_scale)
        off += HOURS
        lag = _dequantise(raw, "u1", LAG_BUCKETS, off, l_scale)
        return cls(
            bins, evidence, days, upd, last, last_day, machine, prompted, exposure, lag,
            pending, exp_end,
        )  # fmt: skip

    @classmethod
    def _from_v1(cls, raw: bytes) -> ActivityProfile:
        """Format 1 (no delivery data), still readable."""
        _, upd, last, last_day, machine, evidence, days, scale = _HEADER_V1.unpack_from(raw)
        bins = _dequantise(raw, "<u2", BINS, _HEADER_V1.size, scale)
        return cls(bins, evidence, days, upd, last, last_day, machine)


def _quantise(values: npt.NDArray[np.float32], top_q: int, dtype: str) -> tuple[bytes, float]:
    top = float(values.max(initial=0.0))
    scale = top / top_q if top > 0 else 1.0
    q = np.rint(values.astype(np.float64) / scale).clip(0, top_q).astype(dtype)
    return q.tobytes(), scale


def _dequantise(
    raw: bytes, dtype: str, count: int, offset: int, scale: float
) -> npt.NDArray[np.float32]:
    q = np.frombuffer(raw, dtype, count, offset)
    out: npt.NDArray[np.float32] = (q.astype(np.float64) * scale).astype(np.float32)
    return out


_V1_BYTES: Final = _HEADER_V1.size + 2 * BINS
SERIALISED_BYTES: Final = _HEADER.size + 2 * BINS + 2 * HOURS + HOURS + LAG_BUCKETS  # 1,936


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
