"""The decision curve (timing/curve.py): the engine's own points, the choice on it, policies'
refused minutes marked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from sendflowr.timing.activity import ActivityParams, ActivityTable, global_prior
from sendflowr.timing.curve import decision_curve
from sendflowr.timing.engine import BatchScores, choose, score_batch
from sendflowr.timing.policy import Facts, PolicyConfig, apply, choose_allowed

PARIS = ZoneInfo("Europe/Paris")
START = int(datetime(2026, 5, 4, 6, 0, tzinfo=UTC).timestamp())  # a Monday, 08:00 in Paris


def _person_at(local_hour: int) -> ActivityTable:
    """One person who clicked at `local_hour`:10 Paris time on each of the last 20 days."""
    table = ActivityTable.empty(1)
    utc, offsets = [], []
    first = datetime.fromtimestamp(START, PARIS).date() - timedelta(days=20)
    for d in range(20):
        day = first + timedelta(days=d)
        at = datetime(day.year, day.month, day.day, local_hour, 10, tzinfo=PARIS)
        off = at.utcoffset()
        assert off is not None
        utc.append(int(at.timestamp()))
        offsets.append(int(off.total_seconds()))
    table.observe(
        np.zeros(20, np.int64),
        np.asarray(utc, np.int64),
        np.asarray(offsets, np.int64),
        np.full(20, 2.0),
        START,
        ActivityParams(),
    )
    return table


def _scores(hours: int, local_hour: int = 14) -> BatchScores:
    return score_batch(
        _person_at(local_hour),
        np.zeros(1, np.int64),
        ActivityTable.empty(1),
        global_prior(),
        START,
        START + hours * 3600,
        PARIS,
        START,
    )


def test_points_are_the_engines_candidates_and_the_choice_is_the_best_point() -> None:
    scores = _scores(24)
    curve = decision_curve(scores)
    assert [p.minute_utc for p in curve] == scores.candidates.tolist()
    assert all(p.allowed for p in curve)
    minutes = np.array([p.minute_utc for p in curve])
    # every quarter hour of the window is a point, and the ends
    assert minutes[0] == START
    assert minutes[-1] == START + 24 * 3600 - 60
    quarter = np.arange(START, START + 24 * 3600, 900)
    assert np.isin(quarter, minutes).all()
    assert len(curve) <= 24 * 4 + 2
    d = choose(scores, 60).row(0)
    best = max(curve, key=lambda p: p.score)
    assert best.minute_utc == d.target_minute_utc
    assert best.score == d.confidence_score
    # the person's hour (14:10 Paris = 12:10 UTC) is where the curve peaks
    peak = datetime.fromtimestamp(best.minute_utc, PARIS)
    assert 13 <= peak.hour <= 14
    for t, s in d.alternatives:
        assert any(p.minute_utc == t and p.score == s for p in curve)


def test_quiet_hours_mark_refused_points_and_the_choice_is_the_best_allowed_one() -> None:
    scores = _scores(24)
    cfg = PolicyConfig(quiet_start_minute=12 * 60, quiet_end_minute=16 * 60)  # 12:00-16:00
    applied = apply(scores, cfg, Facts(1), PARIS, ["d-1"])
    curve = decision_curve(applied)
    refused = [p for p in curve if not p.allowed]
    assert refused
    for p in refused:
        assert 12 <= datetime.fromtimestamp(p.minute_utc, PARIS).hour < 16
    # the values are the unmasked scores: the refused peak is still visible
    assert max(p.score for p in curve) == float(scores.prob[0].max())
    d = choose_allowed(applied, 60).decisions.row(0)
    best_allowed = max((p for p in curve if p.allowed), key=lambda p: p.score)
    assert best_allowed.minute_utc == d.target_minute_utc
    assert best_allowed.score == d.confidence_score
