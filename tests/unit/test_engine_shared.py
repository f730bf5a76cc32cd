"""The engine's shared audience part (`audience_scores`) and the hour sums of the send-time
correction (`quarter_sums`): faster forms that must give the very same numbers."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import numpy as np
import pytest

from sendflowr.decisions import fold_history
from sendflowr.timing.activity import ActivityTable, global_prior, quarter_sums, summed
from sendflowr.timing.engine import EngineParams, audience_archetypes, audience_scores, score_batch

ZONE = ZoneInfo("America/New_York")
NOW = 1_767_225_600


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quarter_sums_are_numpys_sums_bit_for_bit(dtype: type[np.floating]) -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((300, 168, 4)) * 10.0 ** rng.integers(-8, 8, (300, 168, 4))).astype(dtype)
    x[0, :3] = [[1e30, 1.0, -1e30, 1e-30]] * 3  # order matters here
    got = quarter_sums(x)
    want = x.sum(axis=-1)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def _people() -> tuple[ActivityTable, ActivityTable]:
    rng = np.random.default_rng(0)
    pool, per = 400, 20
    n = pool * per
    rows = np.repeat(np.arange(pool), per)
    utc = NOW - 80 * 86_400 + rng.integers(0, 80, n) * 86_400 + rng.integers(6, 22, n) * 3_600
    kinds = np.array(["received", "opened", "clicked", "opened"])[np.arange(n) % 4]
    utc = np.where(kinds == "received", utc - 600, utc)
    order = np.argsort(utc, kind="stable")
    params = EngineParams()
    people = ActivityTable.empty(pool)
    fold_history(
        people, rows[order], utc[order], kinds[order].tolist(), (rng.random(n) < 0.1)[order],
        ZONE, NOW, params.activity,
    )  # fmt: skip
    audience = summed(people, NOW, params.activity.half_life_s)
    audience.archetypes = audience_archetypes(people, ZONE, NOW, params)
    assert audience.archetypes is not None
    return people, audience


def test_shared_audience_scores_change_nothing_and_must_match() -> None:
    people, audience = _people()
    prior, params = global_prior(), EngineParams()
    rows = np.arange(-1, len(people), dtype=np.int64)
    start, end = NOW + 3_617, NOW + 30 * 3_600
    alone = score_batch(people, rows, audience, prior, start, end, ZONE, NOW, params)
    shared = audience_scores(audience, prior, start, end, ZONE, NOW, params)
    # the same window minutes (a few seconds later) share it too
    again = score_batch(
        people, rows, audience, prior, start + 20, end - 40, ZONE, NOW, params, shared
    )
    np.testing.assert_array_equal(again.prob, alone.prob)
    np.testing.assert_array_equal(again.weights, alone.weights)
    # the audience part is taken at the start of the minute: a decision later in the minute
    # shares it, and gets what it would get alone
    later = score_batch(people, rows, audience, prior, start, end, ZONE, NOW + 59, params, shared)
    later_alone = score_batch(people, rows, audience, prior, start, end, ZONE, NOW + 59, params)
    np.testing.assert_array_equal(later.prob, later_alone.prob)
    with pytest.raises(ValueError, match="another window"):
        score_batch(people, rows, audience, prior, start, end, ZONE, NOW + 60, params, shared)
    with pytest.raises(ValueError, match="another window"):
        score_batch(people, rows, audience, prior, start + 60, end, ZONE, NOW, params, shared)
