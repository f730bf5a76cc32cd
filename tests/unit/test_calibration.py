"""The per-tenant confidence map (timing/calibration.py): its fit, its outcomes, and that it
changes what a decision states, never which minute it chooses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sendflowr.timing.activity import ActivityTable, global_prior
from sendflowr.timing.calibration import (
    Calibration,
    _pool_adjacent_violators,
    any_between,
    decision_outcomes,
    fit_calibration,
    since_latest,
)
from sendflowr.timing.engine import BatchScores, choose, score_batch


def _overconfident(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stated confidences whose truth is half of what they state."""
    rng = np.random.default_rng(seed)
    stated = rng.uniform(0.1, 0.9, n)
    return stated, rng.random(n) < stated / 2


def test_too_few_decisions_give_no_map() -> None:
    stated, outcome = _overconfident(199)
    assert fit_calibration(stated, outcome) is None
    assert fit_calibration(stated, outcome, min_decisions=100) is not None
    # every decision stating the same: nothing to map between
    assert fit_calibration(np.full(500, 0.4), outcome[:1].repeat(500)) is None


def test_an_overconfident_model_is_mapped_to_what_happened() -> None:
    stated, outcome = _overconfident(20_000)
    cal = fit_calibration(stated, outcome)
    assert cal is not None
    assert cal.decisions == 20_000
    assert cal.observed_rate == pytest.approx(outcome.mean())
    grid = np.linspace(0.15, 0.85, 15)
    np.testing.assert_allclose(cal.apply(grid), grid / 2, atol=0.03)
    assert np.all(np.diff(cal.calibrated) >= 0)
    assert cal.brier_after < cal.brier_before - 0.02
    # flat beyond the knots, NaN kept, one value as the array form
    assert cal.apply_one(0.0) == pytest.approx(cal.calibrated[0])
    assert cal.apply_one(1.0) == pytest.approx(cal.calibrated[-1])
    assert np.isnan(cal.apply(np.array([np.nan]))[0])
    assert cal.apply_one(0.5) == pytest.approx(float(cal.apply(np.array([0.5]))[0]))


def test_a_calibrated_model_keeps_its_confidences() -> None:
    rng = np.random.default_rng(1)
    stated = rng.uniform(0.05, 0.95, 50_000)
    cal = fit_calibration(stated, rng.random(50_000) < stated)
    assert cal is not None
    grid = np.linspace(0.1, 0.9, 9)
    np.testing.assert_allclose(cal.apply(grid), grid, atol=0.03)


def test_small_bins_are_shrunk_toward_what_they_stated() -> None:
    # 200 decisions, none came true: the map goes down, not to zero
    stated = np.linspace(0.2, 0.8, 200)
    cal = fit_calibration(stated, np.zeros(200, bool), prior_strength=20)
    assert cal is not None
    assert np.all(cal.calibrated > 0)
    assert np.all(cal.calibrated < cal.stated)
    no_prior = fit_calibration(stated, np.zeros(200, bool), prior_strength=0)
    assert no_prior is not None
    np.testing.assert_array_equal(no_prior.calibrated, 0.0)


def test_ties_are_never_split_across_bins() -> None:
    stated = np.repeat([0.2, 0.5, 0.8], [300, 300, 300])
    outcome = np.tile([True, False, False], 300)
    cal = fit_calibration(stated, outcome, prior_strength=0)
    assert cal is not None
    np.testing.assert_allclose(cal.stated, [0.2, 0.5, 0.8])
    np.testing.assert_allclose(cal.calibrated, 1 / 3)


def test_pooling_adjacent_violators_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        k = int(rng.integers(1, 8))
        values, weights = rng.random(k), rng.uniform(0.5, 3, k)
        got = _pool_adjacent_violators(values, weights)
        assert np.all(np.diff(got) >= -1e-12)
        # optimality: no non-decreasing sequence of block means does better (small search)
        best = _brute(values, weights)
        loss = float(np.sum(weights * (got - values) ** 2))
        assert loss <= best + 1e-9


def _brute(values: np.ndarray, weights: np.ndarray) -> float:
    """The least weighted squared error of a non-decreasing fit, over every partition into
    consecutive blocks fitted by their weighted means."""
    k = len(values)
    best = np.inf
    for mask in range(1 << (k - 1)):
        cuts = [0, *(i + 1 for i in range(k - 1) if mask >> i & 1), k]
        means = [
            float(np.average(values[a:b], weights=weights[a:b]))
            for a, b in itertools.pairwise(cuts)
        ]
        if any(x > y for x, y in itertools.pairwise(means)):
            continue
        fit = np.repeat(means, np.diff(cuts))
        best = min(best, float(np.sum(weights * (fit - values) ** 2)))
    return best


def test_any_between_is_half_open_and_per_person() -> None:
    ev_person = np.array([0, 0, 1, 2], np.int64)
    ev_s = np.array([100, 200, 150, 300], np.int64)
    person = np.array([0, 0, 0, 1, 1, 2, -1], np.int64)
    lo = np.array([100, 101, 150, 0, 151, 300, 0], np.int64)
    hi = np.array([101, 200, 201, 151, 999, 300, 999], np.int64)
    got = any_between(person, lo, hi, ev_person, ev_s)
    assert got.tolist() == [True, False, True, True, False, False, False]
    assert any_between(person, lo, hi, ev_person[:0], ev_s[:0]).tolist() == [False] * 7


def test_a_decision_counts_only_when_delivered_and_succeeds_on_a_real_engagement() -> None:
    # persons: 0 delivered + engaged, 1 delivered late (too late), 2 delivered, engaged after
    # the horizon, 3 no events at all (-1)
    decision_person = np.array([0, 1, 2, -1], np.int64)
    trigger = np.array([940, 940, 940, 940], np.int64)
    target = np.array([1_000, 1_000, 1_000, 1_000], np.int64)
    ev_person = np.array([0, 0, 1, 1, 2, 2], np.int64)
    ev_s = np.array([1_010, 1_500, 1_000 + 1_800, 2_900, 1_005, 1_000 + 3_600], np.int64)
    delivery = np.array([True, False, True, False, True, False])
    engaged_kind = ~delivery
    acted, engaged = decision_outcomes(
        decision_person, trigger, target, ev_person, ev_s, delivery, engaged_kind, 3_600
    )
    assert acted.tolist() == [True, False, True, False]
    assert engaged.tolist() == [True, True, False, False]


def test_since_latest_is_per_person_and_counts_a_delivery_at_the_same_second() -> None:
    del_person = np.array([0, 1, 0], np.int64)
    del_s = np.array([100, 90, 300], np.int64)
    person = np.array([0, 0, 0, 1, 1, 2], np.int64)
    at = np.array([100, 103, 200, 50, 95, 10], np.int64)
    got = since_latest(person, at, del_person, del_s)
    # person 1's event at 50 precedes their only delivery; person 2 has none; person 0's
    # delivery at 300 follows their events
    assert got.tolist() == [0.0, 3.0, 100.0, np.inf, 5.0, np.inf]
    assert since_latest(person, at, del_person[:0], del_s[:0]).tolist() == [np.inf] * 6


def test_an_engagement_within_seconds_of_delivery_is_no_outcome() -> None:
    # each person delivered at 1,000; person 0 "engaged" 3 s later only (a fetch on
    # arrival the connector did not flag), person 1 at 3 s and again at 10 s
    decision_person = np.array([0, 1], np.int64)
    trigger, target = np.array([950, 950], np.int64), np.array([1_000, 1_000], np.int64)
    ev_person = np.array([0, 0, 1, 1, 1], np.int64)
    ev_s = np.array([1_000, 1_003, 1_000, 1_003, 1_010], np.int64)
    delivery = np.array([True, False, True, False, False])
    args = (decision_person, trigger, target, ev_person, ev_s, delivery, ~delivery, 3_600)
    acted, engaged = decision_outcomes(*args, machine_open_s=5.0)
    assert acted.tolist() == [True, True]
    assert engaged.tolist() == [False, True]
    assert decision_outcomes(*args)[1].tolist() == [True, True]  # without the rule


def test_the_map_changes_what_is_stated_never_the_chosen_minute() -> None:
    rng = np.random.default_rng(5)
    people = ActivityTable.empty(50)
    people.bins[:] = rng.random(people.bins.shape).astype(np.float32)
    people.evidence[:] = rng.uniform(1, 40, 50)
    people.active_days[:] = rng.uniform(1, 10, 50)
    now = 1_780_000_000
    people.last_update[:] = now
    rows = np.r_[np.arange(50), -1].astype(np.int64)
    plain = score_batch(
        people, rows, ActivityTable.empty(1), global_prior(), now + 600, now + 86_400, 0, now
    )
    cal = Calibration(np.array([0.0, 0.5, 1.0]), np.array([0.1, 0.2, 0.3]), 500, 0.2, 0.3, 0.2)
    mapped = BatchScores(plain.candidates, plain.prob, plain.weights, cal)
    a, b = choose(plain, 60), choose(mapped, 60)
    np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_array_equal(a.alternatives, b.alternatives)
    assert a.model_confidence is None
    assert b.model_confidence is not None
    np.testing.assert_array_equal(b.model_confidence, a.confidence)
    np.testing.assert_allclose(b.confidence, cal.apply(a.confidence))
    ok = ~np.isnan(a.alternative_scores)
    np.testing.assert_allclose(b.alternative_scores[ok], cal.apply(a.alternative_scores[ok]))
    assert np.isnan(b.alternative_scores[~ok]).all()
    row = b.row(3)
    assert row.model_confidence == pytest.approx(float(a.confidence[3]))
    assert row.confidence_score == pytest.approx(float(cal.apply(a.confidence[3:4])[0]))
    # the audience's map reaches the scores
    audience = ActivityTable.empty(1)
    audience.calibration = cal
    via = score_batch(people, rows, audience, global_prior(), now + 600, now + 86_400, 0, now)
    assert via.calibration is cal
