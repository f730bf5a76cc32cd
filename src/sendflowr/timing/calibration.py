"""Per-tenant calibration of the confidence score (pure numpy, no I/O).

The engine's confidence is a model probability: P(an engagement within the horizon of
delivery) under its curve and its count of sittings. How often that comes true differs by
tenant (an audience that reads on the phone all day, a B2B list read at desks), so a tenant's
stated confidences are mapped through a monotone curve fitted on its own past decisions and
what followed them:

- `decision_outcomes`: which past decisions were acted on (delivered near their target) and
  whether a real engagement followed within the horizon (an engagement within
  `machine_open_s` of the person's latest delivery is a machine fetching the message as it
  arrives, as the activity profile counts it, flagged by the connector or not);
- `fit_calibration`: stated confidences sorted into equal-count bins; each bin's observed rate
  shrunk toward what the bin stated (`prior_strength` pseudo-decisions), then made
  non-decreasing by pooling adjacent violators (isotonic regression over the bins, weighted by
  their counts); below `min_decisions` there is no map and confidences stand as stated;
- `Calibration.apply`: linear interpolation between the bins' (mean stated, calibrated) points,
  flat beyond the first and last.

The map never changes which minute is chosen: the engine picks on its own scores and only the
stated confidence (and the alternatives' scores) pass through the map. A 20-line fit instead
of a dependency: scikit-learn's IsotonicRegression or scipy's isotonic_regression would bring
40-100 MB for one pooling loop over at most `max_bins` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MIN_DECISIONS: Final = 200  # past decisions with an outcome before a tenant gets a map
MAX_BINS: Final = 20
MIN_PER_BIN: Final = 50
PRIOR_STRENGTH: Final = 20.0  # pseudo-decisions per bin at the stated rate
MAX_DECISIONS: Final = 200_000  # the most recent decisions a fit reads, at most
DELIVERED_WITHIN_S: Final = 1_800  # a delivery this long after the target still counts


@dataclass(frozen=True, slots=True)
class Calibration:
    """A monotone map from stated to calibrated confidence."""

    stated: FloatArray  # ascending knots: mean stated confidence per bin
    calibrated: FloatArray  # non-decreasing, in [0, 1]
    decisions: int  # past decisions (with an outcome) it was fitted on
    observed_rate: float  # share of them followed by an engagement within the horizon
    brier_before: float  # on those decisions, stated as they were ...
    brier_after: float  # ... and through the map

    def apply(self, confidence: FloatArray) -> FloatArray:
        """Map confidences (any shape); NaN stays NaN."""
        out: FloatArray = np.interp(confidence, self.stated, self.calibrated)
        return out

    def apply_one(self, confidence: float) -> float:
        return float(np.interp(confidence, self.stated, self.calibrated))

    def describe(self) -> dict[str, float | int]:
        """What an explanation records of the map."""
        return {
            "decisions": self.decisions,
            "observed_rate": round(self.observed_rate, 4),
            "brier_before": round(self.brier_before, 4),
            "brier_after": round(self.brier_after, 4),
        }


def fit_calibration(
    stated: FloatArray,
    outcome: BoolArray,
    *,
    min_decisions: int = MIN_DECISIONS,
    max_bins: int = MAX_BINS,
    min_per_bin: int = MIN_PER_BIN,
    prior_strength: float = PRIOR_STRENGTH,
) -> Calibration | None:
    """The map fitted on past decisions' stated confidences and outcomes, or None when there
    are fewer than `min_decisions` of them (or all state the same confidence)."""
    x = np.asarray(stated, np.float64)
    y = np.asarray(outcome, np.bool_)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"stated {x.shape} and outcome {y.shape} must be equal 1-D arrays")
    ok = np.isfinite(x)
    x, y = np.clip(x[ok], 0.0, 1.0), y[ok]
    n = len(x)
    if n < max(min_decisions, 2):
        return None
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    bins = int(min(max_bins, max(n // max(min_per_bin, 1), 1)))
    edges = np.linspace(0, n, bins + 1).round().astype(np.int64)
    # equal-count bins that never split a run of equal stated values
    edges = np.unique(np.searchsorted(x, x[np.minimum(edges, n - 1)], side="left"))
    edges = np.unique(np.r_[0, edges[edges > 0], n])
    if len(edges) < 3:
        return None  # one bin: nothing to interpolate between
    counts = np.diff(edges).astype(np.float64)
    xs = np.add.reduceat(x, edges[:-1]) / counts
    hits = np.add.reduceat(y.astype(np.float64), edges[:-1])
    rate = (hits + prior_strength * xs) / (counts + prior_strength)
    fitted = _pool_adjacent_violators(rate, counts + prior_strength)
    fitted = np.clip(fitted, 0.0, 1.0)
    truth = y.astype(np.float64)
    before = float(np.mean((x - truth) ** 2))
    after = float(np.mean((np.interp(x, xs, fitted) - truth) ** 2))
    return Calibration(xs, fitted, n, float(truth.mean()), before, after)


def _pool_adjacent_violators(values: FloatArray, weights: FloatArray) -> FloatArray:
    """The non-decreasing sequence closest to `values` in weighted least squares."""
    means: list[float] = []
    mass: list[float] = []
    sizes: list[int] = []
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        means.append(v)
        mass.append(w)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            w2 = mass[-2] + mass[-1]
            means[-2] = (means[-2] * mass[-2] + means[-1] * mass[-1]) / w2
            mass[-2] = w2
            sizes[-2] += sizes[-1]
            del means[-1], mass[-1], sizes[-1]
    out: FloatArray = np.repeat(np.asarray(means), sizes)
    return out


def decision_outcomes(
    decision_person: IntArray,
    trigger_s: IntArray,
    target_s: IntArray,
    event_person: IntArray,
    event_s: IntArray,
    is_delivery: BoolArray,
    is_engagement: BoolArray,
    horizon_s: int,
    *,
    delivered_within_s: int = DELIVERED_WITHIN_S,
    machine_open_s: float = 0.0,
) -> tuple[BoolArray, BoolArray]:
    """Per past decision: whether it was acted on (a delivery to the person between its
    trigger and `delivered_within_s` after its target) and whether a real engagement of
    theirs followed between the trigger and the target plus the horizon.

    Persons are integer codes shared by both sides (-1: a person without events);
    engagements must already exclude flagged machine opens, and those less than
    `machine_open_s` after the person's latest delivery are excluded here."""
    if machine_open_s > 0:
        is_engagement = is_engagement.copy()
        at = np.flatnonzero(is_engagement)
        lag = since_latest(
            event_person[at], event_s[at], event_person[is_delivery], event_s[is_delivery]
        )
        is_engagement[at[lag < machine_open_s]] = False
    acted = any_between(
        decision_person, trigger_s, target_s + delivered_within_s,
        event_person[is_delivery], event_s[is_delivery],
    )  # fmt: skip
    engaged = any_between(
        decision_person, trigger_s, target_s + horizon_s,
        event_person[is_engagement], event_s[is_engagement],
    )  # fmt: skip
    return acted, engaged


def since_latest(
    person: IntArray, at_s: IntArray, del_person: IntArray, del_s: IntArray
) -> FloatArray:
    """Per event (`person` at `at_s`): seconds since the same person's latest delivery (of
    `del_person` at `del_s`) at or before it; inf when there is none."""
    out: FloatArray = np.full(len(at_s), np.inf)
    if len(at_s) == 0 or len(del_s) == 0:
        return out
    base = int(min(at_s.min(), del_s.min()))
    span = int(max(at_s.max(), del_s.max())) - base + 1
    key = person.astype(np.int64) * span + (at_s - base)
    deliveries = np.sort(del_person.astype(np.int64) * span + (del_s - base))
    i = np.searchsorted(deliveries, key, side="right") - 1
    latest = deliveries[np.maximum(i, 0)]
    same = (i >= 0) & (latest // span == person)
    out[same] = (key[same] - latest[same]).astype(np.float64)
    return out


def any_between(
    person: IntArray, lo: IntArray, hi: IntArray, ev_person: IntArray, ev_s: IntArray
) -> BoolArray:
    """Per row: whether `person` has an event (of `ev_person` at `ev_s`) in [lo, hi)."""
    if len(ev_s) == 0 or len(person) == 0:
        return np.zeros(len(person), np.bool_)
    base = int(min(ev_s.min(), lo.min()))
    span = int(max(ev_s.max(), hi.max())) - base + 1
    keys = np.sort(ev_person.astype(np.int64) * span + (ev_s - base))
    start = person.astype(np.int64) * span + (lo - base)
    stop = person.astype(np.int64) * span + (np.maximum(hi, lo) - base)
    out: BoolArray = np.searchsorted(keys, stop) > np.searchsorted(keys, start)
    return out
