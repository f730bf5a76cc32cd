"""The timing decision: the best minute of a window for each person (pure numpy).

The engagement curve over the week is a blend of three sources, each a shape over the window:
- personal: the person's decayed local-week bins, pooled across days (day of week, weekday or
  weekend, any day) and smoothed with a circular Gaussian across minute-of-week;
- audience: the tenant's aggregate, smoothed the same way with its own width;
- global: the fixed prior of activity.py.
Weights follow the evidence: w_personal = n / (n + k_personal); the rest goes to the audience in
proportion m / (m + k_audience), then to the global prior. So nobody is dropped: with no history
the audience (or the prior) decides, with rich history the person does.

Each source is normalised to its mass over the window, so the blend compares where in the
window each source puts the engagement, not how much of the week the window holds.

Scoring: a candidate target (delivery) minute t scores the blended share of the window's
engagement that falls in [t, t + horizon). Curves are constant within a 15-minute bin, so the
score is piecewise linear in t and its maximum lies where t or t + horizon meets a bin edge (or
at the window's ends): only those minutes are scored, which makes a batch one small matrix
product (people x ~120 bins) @ (~120 bins x ~100 candidates). Ties go to the earliest minute.

Confidence: if a person's engagements on a day they engage are k independent draws from the
curve, P(at least one in the horizon) = 1 - (1 - share)^k; k is the decayed engaged sittings per
active day, blended like the curve. It is the probability given the person engages that day.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from sendflowr.timing.activity import (
    BIN_MINUTES,
    BINS,
    BINS_PER_DAY,
    NEVER,
    ActivityParams,
    ActivityProfile,
    ActivityTable,
    FloatArray,
    IntArray,
    minute_of_week,
    send_time_corrected,
)
from sendflowr.timing.archetypes import Archetypes, fit_archetypes
from sendflowr.timing.calibration import Calibration
from sendflowr.timing.features import utc_offset_at

MODEL_VERSION: Final = "sendflowr-timing-3"
LEVELS: Final = ("personal", "audience", "global")
MINUTE: Final = 60
BoolArray = np.ndarray[tuple[int, ...], np.dtype[np.bool_]]
Curves = np.ndarray[tuple[int, ...], np.dtype[np.float32 | np.float64]]
_PROBE_S: Final = BIN_MINUTES * MINUTE  # UTC offsets are whole quarter hours, so are changes


@dataclass(frozen=True, slots=True)
class EngineParams:
    activity: ActivityParams = field(default_factory=ActivityParams)
    # Defaults tuned on the radoslaw_email replay (EWH@60 0.451); neighbours within +-0.005.
    personal_sigma_bins: float = 2.0  # Gaussian width across minute-of-week, in 15-min bins
    audience_sigma_bins: float = 2.0
    k_personal: float = 2.0  # evidence at which the person gets half the weight
    k_audience: float = 20.0
    share_dow: float = 0.3  # personal pooling: same day of week ...
    share_group: float = 0.0  # ... weekday or weekend (did not help there) ... rest: any day
    horizon_s: int = 3_600
    alternatives: int = 5
    alternative_gap_s: int = 1_800
    # audience archetypes (timing/archetypes.py): at most this many, one per this many people
    archetypes: int = 16
    # confidence: sittings per active day (k) times this (1.5: Brier 0.213 against 0.227 on the
    # radoslaw replay; the slope of the reliability curve stays too flat, see docs/timing.md)
    sittings_scale: float = 1.5
    people_per_archetype: int = 10
    archetype_sample: int = 20_000  # people the archetypes are fitted on, at most


@dataclass(frozen=True, slots=True)
class Decision:
    target_minute_utc: int  # delivery minute, unix seconds
    trigger_timestamp_utc: int  # target minus the ESP latency
    confidence_score: float
    alternatives: tuple[tuple[int, float], ...]  # (target minute, score), best first
    fallback_level: str
    weights: dict[str, float]  # personal / audience / global, summing to 1
    model_version: str = MODEL_VERSION
    # the engine's own confidence before the tenant's calibration map (None: no map applied)
    model_confidence: float | None = None


@dataclass(frozen=True, slots=True)
class BatchDecisions:
    """`decide_batch` for many people, one row each."""

    target: IntArray
    trigger: IntArray
    confidence: FloatArray
    alternatives: IntArray  # (people, alternatives), -1 where fewer exist
    alternative_scores: FloatArray  # same shape, nan where absent
    level: IntArray  # index into LEVELS
    weights: FloatArray  # (people, 3)
    # the engine's confidence before the tenant's calibration map; None: no map (= confidence)
    model_confidence: FloatArray | None = None

    @property
    def engine_confidence(self) -> FloatArray:
        """The engine's own confidence per row, whether a map was applied or not."""
        return self.confidence if self.model_confidence is None else self.model_confidence

    def row(self, i: int) -> Decision:
        alts = tuple(
            (int(t), float(s))
            for t, s in zip(self.alternatives[i], self.alternative_scores[i], strict=True)
            if t >= 0
        )
        w = {name: float(x) for name, x in zip(LEVELS, self.weights[i], strict=True)}
        return Decision(
            int(self.target[i]),
            int(self.trigger[i]),
            float(self.confidence[i]),
            alts,
            LEVELS[int(self.level[i])],
            w,
            model_confidence=(
                None if self.model_confidence is None else float(self.model_confidence[i])
            ),
        )


def local_minute_of_week(utc_minutes: IntArray, zone: ZoneInfo | int) -> IntArray:
    """Minute of the local week (Monday 00:00 = 0) of UTC instants on minute boundaries.

    `zone`: an IANA zone, or a fixed UTC offset in seconds.
    """
    if isinstance(zone, int):
        return minute_of_week(utc_minutes + zone)
    probes = utc_minutes - utc_minutes % _PROBE_S
    if probes.size == 1:  # a single decision's probe: no sort for one value
        return minute_of_week(utc_minutes + utc_offset_at(int(probes.flat[0]), zone))
    uniq, back = np.unique(probes, return_inverse=True)
    offsets = np.array([utc_offset_at(p, zone) for p in uniq.tolist()], np.int64)
    return minute_of_week(utc_minutes + offsets[back.ravel()])


def _circulant(sigma_bins: float) -> FloatArray:
    if sigma_bins <= 0:
        return np.eye(BINS)
    d = np.arange(BINS, dtype=np.float64)
    d = np.minimum(d, BINS - d)
    g = np.exp(-0.5 * (d / sigma_bins) ** 2)
    g /= g.sum()
    idx = (np.arange(BINS)[:, None] - np.arange(BINS)[None, :]) % BINS
    out: FloatArray = g[idx]
    return out


@dataclass(frozen=True, slots=True)
class _Window:
    candidates: IntArray  # target minutes, unix seconds, ascending
    horizon: FloatArray  # (BINS, candidates + 1): bin mass per candidate; last column the window


def _window(start_utc: int, end_utc: int, zone: ZoneInfo | int, horizon_s: int) -> _Window:
    first = -(-start_utc // MINUTE) * MINUTE  # targets are whole minutes
    if first >= end_utc:
        raise ValueError(f"window [{start_utc}, {end_utc}) holds no whole minute")
    h = max(horizon_s // MINUTE, 1)
    minutes = np.arange(first, end_utc + h * MINUTE, MINUTE, dtype=np.int64)
    local_bin = local_minute_of_week(minutes, zone) // BIN_MINUTES
    n_targets = int(np.sum(minutes < end_utc))
    edge = np.flatnonzero(np.r_[True, local_bin[1:] != local_bin[:-1]])
    # score(t) is linear between bin edges met by t or t + h: score only the kinks and ends
    kinks = np.unique(np.concatenate([edge, edge - h, [0, n_targets - 1]]))
    kinks = kinks[(kinks >= 0) & (kinks < n_targets)]
    horizon = np.zeros((BINS, len(kinks) + 1))
    cols = np.repeat(np.arange(len(kinks)), h)
    rows = local_bin[(kinks[:, None] + np.arange(h)[None, :]).ravel()]
    np.add.at(horizon, (rows, cols), 1.0 / BIN_MINUTES)
    np.add.at(horizon[:, -1], local_bin[:n_targets], 1.0 / BIN_MINUTES)
    return _Window(minutes[kinks], horizon)


def _pooled(bins: FloatArray, share_dow: float, share_group: float) -> FloatArray:
    """Mix each row's own day of week with its weekday/weekend mean and its all-days mean."""
    days = bins.reshape(len(bins), 7, BINS_PER_DAY)
    any_day = np.broadcast_to(days.mean(axis=1, keepdims=True), days.shape)
    group = np.concatenate(
        [
            np.broadcast_to(days[:, :5].mean(axis=1, keepdims=True), (len(bins), 5, BINS_PER_DAY)),
            np.broadcast_to(days[:, 5:].mean(axis=1, keepdims=True), (len(bins), 2, BINS_PER_DAY)),
        ],
        axis=1,
    )
    rest = 1.0 - share_dow - share_group
    out: FloatArray = (share_dow * days + share_group * group + rest * any_day).reshape(bins.shape)
    return out


def _shares(curves: Curves, operator: Curves) -> tuple[FloatArray, BoolArray]:
    """Per row: share of the window's mass at each candidate, and whether it has any mass."""
    used = np.flatnonzero(np.abs(operator).sum(axis=1) > 1e-12)
    raw = (curves[:, used] @ operator[used]).astype(np.float64)
    mass = raw[:, -1:]
    has = mass[:, 0] > 1e-12
    out: FloatArray = np.where(
        has[:, None], raw[:, :-1] / np.where(has, mass[:, 0], 1.0)[:, None], 0
    )
    return out, has


def curves(
    table: ActivityTable, rows: IntArray, zone: ZoneInfo | int, now: int, params: ActivityParams
) -> npt.NDArray[np.float32]:
    """The activity curves the engine scores: `table.bins[rows]`, with the send-time-bias
    correction (activity.send_time_corrected) for rows that had deliveries, when enabled."""
    bins = table.bins[rows]
    if not params.correct_send_time:
        return bins
    exposed = np.flatnonzero(
        (table.pending_since[rows] != NEVER) | (table.exposure[rows].max(axis=1) > 0)
    )
    if len(exposed) == 0:
        return bins
    sub = rows[exposed]
    pending = table.pending_since[sub]
    probe = np.where(pending != NEVER, pending - pending % MINUTE, now - now % MINUTE)
    exposure = table.open_exposure(sub, utc_offsets(probe, zone), now, params)
    # exposure is aged to `now`; prompted weight too, so their ratio is a hazard as of now
    aged = table.aged(now, params.half_life_s)[sub, None].astype(np.float32)
    if np.may_share_memory(bins, table.bins):  # indexing by an integer array copied already
        bins = bins.copy()
    bins[exposed] = send_time_corrected(
        bins[exposed], table.prompted[sub] * aged, exposure, params.exposure_prior_h
    )
    return bins


def audience_archetypes(
    people: ActivityTable, zone: ZoneInfo | int, now: int, params: EngineParams
) -> Archetypes | None:
    """The archetypes of a tenant's people (their corrected curves), or None when too few."""
    if params.archetypes <= 0:
        return None
    rows = np.flatnonzero(people.evidence > 0)
    k = min(params.archetypes, len(rows) // max(params.people_per_archetype, 1))
    if k < 2:
        return None
    if len(rows) > params.archetype_sample:  # a fixed, seeded sample bounds the fit's cost
        pick = np.random.default_rng(0).choice(len(rows), params.archetype_sample, replace=False)
        rows = rows[np.sort(pick)]
    return fit_archetypes(curves(people, rows, zone, now, params.activity), k)


def utc_offsets(utc_minutes: IntArray, zone: ZoneInfo | int) -> IntArray:
    """UTC offsets in seconds of `zone` at UTC instants on minute boundaries."""
    if isinstance(zone, int):
        return np.full(len(utc_minutes), zone, np.int64)
    week = BINS * BIN_MINUTES
    diff = local_minute_of_week(utc_minutes, zone) - minute_of_week(utc_minutes)
    out: IntArray = ((diff + week // 2) % week - week // 2) * MINUTE
    return out


@dataclass(frozen=True, slots=True)
class BatchScores:
    """Every candidate's engagement probability for a batch over one window."""

    candidates: IntArray  # (C,) target minutes, unix seconds: the kinks of the score
    prob: FloatArray  # (N, C) P(engagement within the horizon) when delivered at a candidate
    weights: FloatArray  # (N, 3) personal / audience / global
    # the tenant's confidence map (the audience's), applied to what `choose` states
    calibration: Calibration | None = None


@dataclass(frozen=True, slots=True)
class _Operators:
    """What scoring one window costs once, whatever the batch (cached per window and params):
    the candidates, and the linear maps from a curve to its mass at each candidate (last
    column: the window's total). Read-only."""

    candidates: IntArray
    horizon: FloatArray  # (BINS, C + 1): the global prior's map
    audience: FloatArray  # (BINS, C + 1): smoothing then horizon
    # personal: pooling, smoothing and horizon, factored so a batch multiplies few columns:
    # x @ P G H = share_dow * x[:, used] @ near[used] + (per-day sums of x) @ pooled
    used: IntArray  # bins where the smoothed horizon is not negligible
    near: npt.NDArray[np.float32]  # (len(used), C + 1), share_dow included
    pooled: npt.NDArray[np.float32]  # (BINS_PER_DAY * groups, C + 1)
    groups: tuple[tuple[int, int], ...]  # day ranges summed for `pooled` ((0, 7) or 3 groups)


@lru_cache(maxsize=8)
def _circulant_cached(sigma_bins: float) -> FloatArray:
    """The Gaussian's far tail (below 1e-100, where it underflows toward subnormal numbers
    that make every product with it a hundred times slower) set to zero: nothing below
    1e-12 counts anywhere in scoring."""
    g = _circulant(sigma_bins).copy()
    g[g < 1e-100] = 0.0
    return _frozen(g)


def _smoothed(sigma_bins: float, horizon: FloatArray) -> FloatArray:
    """`_circulant(sigma) @ horizon`, over the bins the window touches only (a single
    decision's window changes every second, so this runs per request)."""
    touched = np.flatnonzero(horizon.any(axis=1))
    out: FloatArray = _circulant_cached(sigma_bins)[:, touched] @ horizon[touched]
    return out


_NEGLIGIBLE: Final = 1e-12  # an operator row this light is left out (as `_shares` does)


_A = TypeVar("_A", bound=np.ndarray[Any, Any])


def _frozen(a: _A) -> _A:
    a.setflags(write=False)
    return a


@lru_cache(maxsize=64)
def _operators(
    start_utc: int, end_utc: int, zone: ZoneInfo | int, params: EngineParams
) -> _Operators:
    win = _window(start_utc, end_utc, zone, params.horizon_s)
    gh = _smoothed(params.personal_sigma_bins, win.horizon)
    cols = gh.shape[1]
    by_day = gh.reshape(7, BINS_PER_DAY, cols)
    rest = 1.0 - params.share_dow - params.share_group
    groups: tuple[tuple[int, int], ...] = ((0, 7),)
    parts = [rest / 7 * by_day.sum(axis=0)]
    if params.share_group != 0:
        groups = ((0, 7), (0, 5), (5, 7))
        parts += [
            params.share_group / 5 * by_day[:5].sum(axis=0),
            params.share_group / 2 * by_day[5:].sum(axis=0),
        ]
    # Rows of the full operator this light are left out, as `_shares` leaves them out. A
    # slot whose pooled part is light enough for some of its days to be left out (far from
    # the window) keeps its exact rows in `near` instead; the rest of `near` drops only rows
    # that could not move a share (a Gaussian tail of 1e-20 and less).
    by_group = np.zeros((7, BINS_PER_DAY, cols))
    for (lo, hi), part in zip(groups, parts, strict=True):
        by_group[lo:hi] += part[None]
    per_row = by_group.reshape(BINS, cols)
    near = params.share_dow * gh
    keep = np.abs(near + per_row).sum(axis=1) > _NEGLIGIBLE
    full_slot = np.tile(keep.reshape(7, BINS_PER_DAY).all(axis=0), 7)
    near = np.where(keep[:, None], near + np.where(full_slot[:, None], 0.0, per_row), 0.0)
    used = np.flatnonzero(np.abs(near).sum(axis=1) > _NEGLIGIBLE * 1e-8)
    pooled = np.concatenate(parts)
    pooled[~np.tile(full_slot[:BINS_PER_DAY], len(parts))] = 0.0
    return _Operators(
        _frozen(win.candidates),
        _frozen(win.horizon),
        _frozen(_smoothed(params.audience_sigma_bins, win.horizon)),
        _frozen(used),
        _frozen(near[used].astype(np.float32)),
        _frozen(pooled.astype(np.float32)),
        groups,
    )


def _personal_shares(
    bins: npt.NDArray[np.float32], ops: _Operators
) -> tuple[FloatArray, BoolArray]:
    """`_shares(bins, pooling @ smoothing @ horizon)`, without the full (BINS x C) product."""
    days = bins.reshape(len(bins), 7, BINS_PER_DAY)
    sums = [days[:, lo:hi].sum(axis=1) for lo, hi in ops.groups]
    raw = (bins[:, ops.used] @ ops.near).astype(np.float64)
    raw += (np.concatenate(sums, axis=1) if len(sums) > 1 else sums[0]) @ ops.pooled
    mass = raw[:, -1]
    has = mass > 1e-12
    out: FloatArray = np.where(has[:, None], raw[:, :-1] / np.where(has, mass, 1.0)[:, None], 0)
    return out, has


@dataclass(frozen=True, slots=True)
class AudienceScores:
    """What scoring a window takes from the audience and the prior alone: the same for every
    person of a batch (and for a tenant's single decisions within one minute)."""

    key: AudienceKey  # audience_key: window minutes, zone, minute of `now`, params
    ops: _Operators
    audience: FloatArray  # (1, C) the audience curve's shares
    archetypes: FloatArray | None  # (K, C) the archetypes' shares
    prior: FloatArray  # (1, C) the global prior's shares
    audience_share: float  # the audience's weight among what the person leaves
    audience_sittings: float  # the audience's engaged sittings per active day


def audience_scores(
    audience: ActivityTable,
    prior: FloatArray,
    start_utc: int,
    end_utc: int,
    zone: ZoneInfo | int,
    now: int,
    params: EngineParams = EngineParams(),
) -> AudienceScores:
    """`score_batch`'s audience and prior part for this window at `now`. A caller that keeps
    an audience unchanged may compute it once and pass it to several `score_batch` calls.

    The audience is taken as of the start of `now`'s minute (`audience_minute`): what it
    says changes by a few millionths within a minute (its aging, its open exposures), so
    every decision of a minute shares one computation, and the result still depends on
    `now` alone (not on which decision of the minute came first)."""
    first, last = window_minutes(start_utc, end_utc)
    ops = _operators(first, last, zone, params)
    now = audience_minute(now)
    audience_bins = curves(audience, np.zeros(1, np.int64), zone, now, params.activity)
    s_a, has_a = _shares(audience_bins.astype(np.float64), ops.audience)
    arch = audience.archetypes if params.archetypes > 0 else None
    s_k = _shares(arch.curves, ops.audience)[0] if arch is not None else None
    s_g, _ = _shares(prior[None, :], ops.horizon)
    aud_age = float(audience.aged(now, params.activity.half_life_s)[0])
    m = float(audience.evidence[0] * aud_age) if has_a[0] else 0.0
    a_days = float(audience.active_days[0] * aud_age)
    return AudienceScores(
        audience_key(start_utc, end_utc, zone, now, params),
        ops,
        _frozen(s_a),
        None if s_k is None else _frozen(s_k),
        _frozen(s_g),
        m / (m + params.k_audience),
        m / a_days if a_days > 0 else 1.0,
    )


def audience_minute(now: int) -> int:
    """The instant the audience part of a decision at `now` is taken at: its minute's start."""
    return now - now % MINUTE


AudienceKey = tuple[int, int, ZoneInfo | int, int, EngineParams]


def audience_key(
    start_utc: int, end_utc: int, zone: ZoneInfo | int, now: int, params: EngineParams
) -> AudienceKey:
    """What `audience_scores` depends on: the window's minutes, the zone, the minute of
    `now` and the parameters (`AudienceScores.key`)."""
    return (*window_minutes(start_utc, end_utc), zone, audience_minute(now), params)


def window_minutes(start_utc: int, end_utc: int) -> tuple[int, int]:
    """The window's ends rounded up to whole minutes: the candidates depend on nothing finer,
    so single decisions within a minute share the window's operators."""
    return -(-start_utc // MINUTE) * MINUTE, -(-end_utc // MINUTE) * MINUTE


SCORE_BLOCK: Final = 2_048  # rows scored at a time: temporaries stay in cache, memory bounded


def score_batch(
    people: ActivityTable,
    rows: IntArray,
    audience: ActivityTable,
    prior: FloatArray,
    start_utc: int,
    end_utc: int,
    zone: ZoneInfo | int,
    now: int,
    params: EngineParams = EngineParams(),
    shared: AudienceScores | None = None,
) -> BatchScores:
    """Score `people[rows]` (row -1: nobody known) at the window's candidate minutes. Between
    two candidates the share is linear in the minute (see the module notes).

    The window's operators are computed once (cached); people with a history are scored a
    block at a time; everyone without one gets the same row (audience and prior only).
    `shared`: `audience_scores` of this audience, prior, window, instant and parameters, when
    the caller has it (else computed here)."""
    if shared is None:
        shared = audience_scores(audience, prior, start_utc, end_utc, zone, now, params)
    elif shared.key != audience_key(start_utc, end_utc, zone, now, params):
        raise ValueError("audience scores of another window, zone, instant or parameters")
    ops, s_a, s_k, s_g = shared.ops, shared.audience, shared.archetypes, shared.prior
    a_share, k_aud = shared.audience_share, shared.audience_sittings
    arch = audience.archetypes if s_k is not None else None
    half = params.activity.half_life_s
    c = len(ops.candidates)

    rows = np.asarray(rows, np.int64)
    prob = np.empty((len(rows), c))
    weights = np.empty((len(rows), 3))
    known = np.flatnonzero(rows >= 0)
    if len(known) < len(rows):  # no history: one row for all of them
        stranger = np.flatnonzero(rows < 0)
        score = a_share * s_a[0] + (1.0 - a_share) * s_g[0]
        prob[stranger] = _engagement(
            score[None, :], np.array([max(params.sittings_scale * k_aud, 1.0)])
        )
        weights[stranger] = (0.0, a_share, 1.0 - a_share)
    for lo in range(0, len(known), SCORE_BLOCK):
        at = known[lo : lo + SCORE_BLOCK]
        r = rows[at]
        age = _decay_to(people.last_update[r], now, half)
        n = people.evidence[r] * age
        days = people.active_days[r] * age
        bins = curves(people, r, zone, now, params.activity)
        s_p, has_p = _personal_shares(bins, ops)
        w_p = np.where(has_p, n / (n + params.k_personal), 0.0)
        w_a = (1.0 - w_p) * a_share
        w_g = 1.0 - w_p - w_a
        score = s_p
        score *= w_p[:, None]
        if s_k is not None:
            assert arch is not None
            score += w_a[:, None] * (arch.posterior(bins) @ s_k)
        else:
            score += w_a[:, None] * s_a
        score += w_g[:, None] * s_g
        k_per = np.where(days > 0, n / np.maximum(days, 1e-12), k_aud)
        k = np.maximum(params.sittings_scale * (w_p * k_per + (1.0 - w_p) * k_aud), 1.0)
        prob[at] = _engagement(score, k)
        weights[at, 0], weights[at, 1], weights[at, 2] = w_p, w_a, w_g
    return BatchScores(ops.candidates, prob, weights, audience.calibration)


def _decay_to(last_update: IntArray, now: int, half_life_s: float) -> FloatArray:
    """ActivityTable.aged for some rows only."""
    out: FloatArray = np.exp2(
        -np.maximum((now - last_update).astype(np.float64), 0.0) / half_life_s
    )
    return out


def _engagement(score: FloatArray, k: FloatArray) -> FloatArray:
    """P(at least one of k engagements in the horizon) = 1 - (1 - share)^k, per row."""
    out = np.clip(score, 0.0, 1.0 - 1e-12)
    np.negative(out, out=out)
    np.log1p(out, out=out)
    out *= k[:, None]
    np.expm1(out, out=out)
    np.negative(out, out=out)
    return out


def decide_batch(
    people: ActivityTable,
    rows: IntArray,
    audience: ActivityTable,
    prior: FloatArray,
    start_utc: int,
    end_utc: int,
    zone: ZoneInfo | int,
    latency_s: int | IntArray,
    now: int,
    params: EngineParams = EngineParams(),
) -> BatchDecisions:
    """Decide for `people[rows]` (row -1: nobody known) over one window in one zone."""
    scored = score_batch(people, rows, audience, prior, start_utc, end_utc, zone, now, params)
    return choose(scored, latency_s, params)


def choose(
    scored: BatchScores, latency_s: int | IntArray, params: EngineParams = EngineParams()
) -> BatchDecisions:
    """Each row's best candidate (the earliest on ties), its alternatives and its level."""
    prob = scored.prob
    best = np.argmax(prob, axis=1)  # first maximum: the earliest minute
    target = scored.candidates[best]
    alts, alt_scores = _alternatives(prob, best, scored.candidates, params)
    confidence = prob[np.arange(len(best)), best]
    model_confidence = None
    if scored.calibration is not None:  # the choice is the engine's; only what it states maps
        model_confidence = confidence
        confidence = calibrated(scored.calibration, confidence)
        alt_scores = calibrated(scored.calibration, alt_scores)
    return BatchDecisions(
        target,
        target - np.asarray(latency_s, np.int64),
        confidence,
        alts,
        alt_scores,
        np.argmax(scored.weights, axis=1).astype(np.int64),
        scored.weights,
        model_confidence,
    )


def calibrated(calibration: Calibration, scores: FloatArray) -> FloatArray:
    """Scores through the tenant's map; negative ones (minutes a policy refused) and NaN
    (absent alternatives) unchanged."""
    out: FloatArray = np.where(scores >= 0, calibration.apply(scores), scores)
    return out


def _alternatives(
    prob: FloatArray, best: IntArray, candidates: IntArray, params: EngineParams
) -> tuple[IntArray, FloatArray]:
    """Greedy next-best targets, each at least the gap away from the choice and each other.

    Candidates are ascending, so the ones within the gap of a pick are one contiguous index
    range (precomputed per candidate): each round blanks that range in a working copy of the
    scores and takes the row maxima (first maximum on ties, as argmax does)."""
    n, c = prob.shape
    people = np.arange(n)
    alts = np.full((n, params.alternatives), -1, np.int64)
    scores = np.full((n, params.alternatives), np.nan)
    if params.alternatives == 0 or n == 0:
        return alts, scores
    gap = params.alternative_gap_s
    if n == 1:  # a single decision: the same picks on one row, without the 2-D masks
        return _row_alternatives(prob[0], int(best[0]), candidates, params)
    lo = np.searchsorted(candidates, candidates - gap, side="right").astype(np.int32)
    hi = np.searchsorted(candidates, candidates + gap, side="left").astype(np.int32)
    idx = np.arange(c, dtype=np.int32)[None, :]
    masked = prob.copy()
    chosen = best
    for j in range(params.alternatives):
        np.putmask(masked, (idx >= lo[chosen][:, None]) & (idx < hi[chosen][:, None]), -np.inf)
        chosen = np.argmax(masked, axis=1)
        picked = masked[people, chosen]
        ok = picked != -np.inf
        alts[ok, j] = candidates[chosen[ok]]
        scores[ok, j] = picked[ok]
    return alts, scores


def _row_alternatives(
    prob: FloatArray, best: int, candidates: IntArray, params: EngineParams
) -> tuple[IntArray, FloatArray]:
    """`_alternatives` for one row: each round blanks the candidates within the gap of the
    last pick (one contiguous slice, found by bisection in a list: numpy's searchsorted costs
    more per call than the search itself on a hundred candidates) and takes the first maximum
    of what is left."""
    alts = np.full((1, params.alternatives), -1, np.int64)
    scores = np.full((1, params.alternatives), np.nan)
    gap = params.alternative_gap_s
    at = candidates.tolist()
    masked = prob.copy()
    chosen = best
    for j in range(params.alternatives):
        lo = bisect_right(at, at[chosen] - gap)
        hi = bisect_left(at, at[chosen] + gap)
        masked[lo:hi] = -np.inf
        chosen = int(np.argmax(masked))
        picked = masked[chosen]
        if picked != -np.inf:
            alts[0, j] = at[chosen]
            scores[0, j] = picked
    return alts, scores


def decide(
    profile: ActivityProfile | None,
    audience: ActivityTable,
    prior: FloatArray,
    start_utc: int,
    end_utc: int,
    zone: ZoneInfo | int,
    latency_s: int,
    now: int,
    params: EngineParams = EngineParams(),
) -> Decision:
    """One person's decision (the API path); `decide_batch` with a single row."""
    table = profile.table() if profile is not None else ActivityTable.empty(1)
    rows = np.array([0 if profile is not None else -1], np.int64)
    batch = decide_batch(
        table, rows, audience, prior, start_utc, end_utc, zone, latency_s, now, params
    )
    return batch.row(0)
