"""engine._alternatives (restructured for speed) against the plain greedy reference it replaced:
identical picks and scores, ties and exhausted windows included, for a batch and for one row
(a single decision's path)."""

from __future__ import annotations

import numpy as np
import pytest

from sendflowr.timing.activity import FloatArray, IntArray
from sendflowr.timing.engine import BatchScores, EngineParams, _alternatives, choose


def _reference(
    prob: FloatArray, best: IntArray, candidates: IntArray, params: EngineParams
) -> tuple[IntArray, FloatArray]:
    people = np.arange(len(best))
    open_ = np.ones(prob.shape, bool)
    chosen = best
    alts = np.full((len(best), params.alternatives), -1, np.int64)
    scores = np.full((len(best), params.alternatives), np.nan)
    for j in range(params.alternatives + 1):
        near = np.abs(candidates[None, :] - candidates[chosen][:, None]) < params.alternative_gap_s
        open_ &= ~near
        if j == params.alternatives:
            break
        masked = np.where(open_, prob, -np.inf)
        chosen = np.argmax(masked, axis=1)
        ok = open_[people, chosen]
        alts[ok, j] = candidates[chosen[ok]]
        scores[ok, j] = prob[people[ok], chosen[ok]]
    return alts, scores


@pytest.mark.parametrize("c", [1, 2, 7, 97, 300])
@pytest.mark.parametrize(("k", "gap"), [(5, 1_800), (3, 60), (8, 7_200), (0, 1_800)])
def test_alternatives_equal_the_reference(c: int, k: int, gap: int) -> None:
    rng = np.random.default_rng(c * 31 + k)
    # irregular kinks, like a window's: minutes, ascending, some close together
    candidates = 1_767_225_600 + 60 * np.cumsum(rng.integers(1, 30, c)).astype(np.int64)
    prob = rng.random((500, c))
    prob[:100] = np.round(prob[:100], 1)  # many ties
    prob[100:110] = 0.25  # all equal
    params = EngineParams(alternatives=k, alternative_gap_s=gap)
    best = np.argmax(prob, axis=1)
    got = _alternatives(prob, best, candidates, params)
    want = _reference(prob, best, candidates, params)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    for i in range(0, 500, 7):  # one row: a single decision's own path
        one = _alternatives(prob[i : i + 1], best[i : i + 1], candidates, params)
        np.testing.assert_array_equal(one[0], want[0][i : i + 1])
        np.testing.assert_array_equal(one[1], want[1][i : i + 1])
    scored = BatchScores(candidates, prob, np.tile([0.5, 0.3, 0.2], (500, 1)))
    decided = choose(scored, 120, params)
    np.testing.assert_array_equal(decided.alternatives, want[0])
    assert (decided.target - decided.trigger == 120).all()


def test_a_short_window_has_no_alternatives() -> None:
    candidates = np.array([0, 60, 120], np.int64)
    prob = np.array([[0.1, 0.3, 0.2]])
    alts, scores = _alternatives(prob, np.array([1]), candidates, EngineParams())
    assert alts.tolist() == [[-1] * 5]
    assert np.isnan(scores).all()
