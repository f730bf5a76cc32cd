"""Send policies over candidate minutes (timing/policy.py): pure rules, no stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from sendflowr.timing.activity import ActivityParams, ActivityTable, global_prior
from sendflowr.timing.engine import BatchScores, score_batch
from sendflowr.timing.policy import (
    Facts,
    HotPathHit,
    PolicyConfig,
    Suppression,
    apply,
    choose_allowed,
    exploration_draws,
    match_hot_path,
)

WARSAW = ZoneInfo("Europe/Warsaw")
# Warsaw springs forward on Sunday 2026-03-29 at 02:00 (CET +1 -> CEST +2)
DST_START = int(datetime(2026, 3, 28, 12, 0, tzinfo=UTC).timestamp())


def _audience(local_hour: int, now: int) -> ActivityTable:
    """An audience that clicks at `local_hour`:00 Warsaw time every day of the last 4 weeks."""
    table = ActivityTable.empty(1)
    day = datetime.fromtimestamp(now, WARSAW).date() - timedelta(days=28)
    utc, offsets = [], []
    for d in range(28):
        at = datetime(day.year, day.month, day.day, local_hour, 0, tzinfo=WARSAW) + timedelta(
            days=d
        )
        off = at.utcoffset()
        assert off is not None
        utc.append(int(at.timestamp()))
        offsets.append(int(off.total_seconds()))
    table.observe(
        np.zeros(len(utc), np.int64),
        np.asarray(utc, np.int64),
        np.asarray(offsets, np.int64),
        np.ones(len(utc)),
        now,
        ActivityParams(),
    )
    return table


def _scores(n: int, start: int, hours: int, local_hour: int = 23) -> BatchScores:
    return score_batch(
        ActivityTable.empty(n),
        np.full(n, -1, np.int64),
        _audience(local_hour, start),
        global_prior(),
        start,
        start + hours * 3600,
        WARSAW,
        start,
    )


def _local(t: int) -> datetime:
    return datetime.fromtimestamp(int(t), WARSAW)


def _brute_best_allowed(applied_scores: BatchScores, allowed_minutes: np.ndarray) -> float:
    c = applied_scores.candidates
    values = np.interp(allowed_minutes, c, applied_scores.prob[0])
    return float(values.max())


def _in_quiet(t: int, start_h: int, end_h: int) -> bool:
    h = _local(t).hour
    return h >= start_h or h < end_h


QUIET = PolicyConfig(quiet_start_minute=21 * 60, quiet_end_minute=8 * 60)


def test_quiet_hours_on_a_dst_day_move_the_send_to_the_best_allowed_minute() -> None:
    scores = _scores(1, DST_START, 36)  # the audience peaks at 23:00, inside quiet hours
    applied = apply(scores, QUIET, Facts(1), WARSAW, ["d1"])
    chosen = choose_allowed(applied, 60)
    target = int(chosen.decisions.target[0])
    assert not _in_quiet(target, 21, 8)
    assert chosen.policies[0] == ("quiet_hours",)
    info = chosen.details[0]["quiet_hours"]
    assert _in_quiet(int(datetime.fromisoformat(info["preferred_minute_utc"]).timestamp()), 21, 8)
    assert info["engagement_lost"] > 0
    # both sides of every boundary are candidates, on local wall time across the DST switch:
    # 20:59 / 21:00 CET on the 28th, 07:59 / 08:00 CEST on the 29th
    cands = applied.candidates.tolist()
    for local, allowed in (
        (datetime(2026, 3, 28, 20, 59, tzinfo=WARSAW), True),
        (datetime(2026, 3, 28, 21, 0, tzinfo=WARSAW), False),
        (datetime(2026, 3, 29, 7, 59, tzinfo=WARSAW), False),
        (datetime(2026, 3, 29, 8, 0, tzinfo=WARSAW), True),
    ):
        t = int(local.timestamp())
        assert t in cands, local
        assert bool(applied.allowed[0, cands.index(t)]) is allowed, local
    assert (
        int(datetime(2026, 3, 29, 8, 0, tzinfo=WARSAW).timestamp())
        - int(datetime(2026, 3, 28, 21, 0, tzinfo=WARSAW).timestamp())
        == 10 * 3600
    )  # 11 wall-clock hours, one of them skipped
    # exact: the choice is worth the best allowed whole minute (brute force over all minutes)
    minutes = np.arange(scores.candidates[0], scores.candidates[-1] + 60, 60)
    ok = np.array([not _in_quiet(int(t), 21, 8) for t in minutes])
    best = _brute_best_allowed(BatchScores(applied.candidates, applied.raw, scores.weights),
                               minutes[ok])  # fmt: skip
    assert chosen.decisions.confidence[0] == pytest.approx(best, abs=1e-12)
    # alternatives are allowed minutes only
    for t in chosen.decisions.alternatives[0]:
        if t >= 0:
            assert not _in_quiet(int(t), 21, 8)


def test_a_window_entirely_in_quiet_hours_is_suppressed_with_the_reason() -> None:
    start = int(datetime(2026, 3, 28, 21, 30, tzinfo=WARSAW).timestamp())
    scores = _scores(2, start, 8)  # 21:30 -> 05:30 local
    applied = apply(scores, QUIET, Facts(2), WARSAW, ["a", "b"])
    for s in applied.suppressed:
        assert s is not None
        assert s.policy == "quiet_hours"
        assert "quiet hours 21:00-08:00 in Europe/Warsaw" in s.reason
    chosen = choose_allowed(applied, 60)
    assert chosen.policies == [("quiet_hours",), ("quiet_hours",)]
    assert chosen.details[0]["suppressed"]["policy"] == "quiet_hours"


def test_frequency_cap_boundary_is_exact() -> None:
    t0 = DST_START - 3 * 3600
    cfg = PolicyConfig(cap_count=2, cap_period_seconds=24 * 3600)
    scores = _scores(3, DST_START, 30)
    facts = Facts(3, sends={0: [t0, t0 + 3600], 1: [t0]})  # row 1 is under the cap
    applied = apply(scores, cfg, facts, WARSAW, ["a", "b", "c"])
    cands = applied.candidates.tolist()
    free = t0 + 24 * 3600  # the first send leaves the rolling day here
    assert free in cands
    assert free - 60 in cands
    assert applied.allowed[0, cands.index(free)]
    assert not applied.allowed[0, cands.index(free - 60)]
    assert not applied.allowed[0, : cands.index(free)].any()
    assert applied.allowed[1].all()
    assert applied.allowed[2].all()
    chosen = choose_allowed(applied, 0)
    assert chosen.decisions.target[0] >= free
    # the same two sends with a one-hour window before `free`: no allowed minute
    short = _scores(1, DST_START, 2)
    held = apply(short, cfg, Facts(1, sends={0: [t0, t0 + 3600]}), WARSAW, ["x"])
    s = held.suppressed[0]
    assert s is not None
    assert s.policy == "frequency_cap"
    assert "at most 2 sends per 24 h" in s.reason


def test_order_cool_off_and_breakers() -> None:
    cfg = PolicyConfig(order_cooloff_seconds=6 * 3600)
    scores = _scores(3, DST_START, 24)
    order = DST_START - 3600 + 17  # cool-off ends mid-minute: the next whole minute is free
    facts = Facts(
        3,
        last_order={0: order},
        breaker={1: Suppression("unsubscribed", "unsubscribed at 2026-03-01T00:00:00+00:00")},
    )
    applied = apply(scores, cfg, facts, WARSAW, ["a", "b", "c"])
    first_free = (order + 6 * 3600) // 60 * 60 + 60
    cands = applied.candidates.tolist()
    assert applied.allowed[0, cands.index(first_free)]
    assert not applied.allowed[0, cands.index(first_free - 60)]
    assert applied.suppressed[1] is not None
    assert applied.suppressed[1].policy == "unsubscribed"
    assert applied.suppressed[0] is None
    assert applied.suppressed[2] is None
    everyone = apply(
        scores, cfg, Facts(3, tenant_breaker=Suppression("tenant_breaker", "ESP outage")),
        WARSAW, ["a", "b", "c"],
    )  # fmt: skip
    assert [s.policy if s else None for s in everyone.suppressed] == ["tenant_breaker"] * 3


def test_hot_path_promotes_to_the_earliest_allowed_minute() -> None:
    assert match_hot_path([("site_visit", 900)], {"site_visit": 1000}, 1800) == HotPathHit(
        "site_visit", 1000, 900
    )
    assert match_hot_path([("site_visit", 900)], {"site_visit": 1000}, 1901) is None
    assert match_hot_path([("ordered", 900)], {"site_visit": 1000}, 1100) is None
    start = int(datetime(2026, 3, 28, 19, 0, tzinfo=WARSAW).timestamp())
    scores = _scores(2, start, 24)
    hit = HotPathHit("site_visit", start - 60, 900)
    applied = apply(scores, QUIET, Facts(2, hot_path={0: hit}), WARSAW, ["a", "b"])
    chosen = choose_allowed(applied, 60)
    assert chosen.decisions.target[0] == start  # 19:00 is allowed: as soon as possible
    assert chosen.policies[0] == ("hot_path",)
    assert chosen.details[0]["hot_path"]["signal"] == "site_visit"
    assert chosen.decisions.target[1] != start  # no signal: the curve decides
    late = int(datetime(2026, 3, 28, 22, 0, tzinfo=WARSAW).timestamp())
    quiet_start = apply(_scores(1, late, 24), QUIET, Facts(1, hot_path={0: hit}), WARSAW, ["c"])
    promoted = choose_allowed(quiet_start, 60).decisions.target[0]
    assert _local(promoted) == datetime(2026, 3, 29, 8, 0, tzinfo=WARSAW)


def test_exploration_share_is_reproducible_and_uniform_over_allowed_minutes() -> None:
    n = 20_000
    ids = [f"decision-{i}" for i in range(n)]
    cfg = PolicyConfig(quiet_start_minute=21 * 60, quiet_end_minute=8 * 60, exploration_share=0.1)
    scores = _scores(n, DST_START, 36)
    applied = apply(scores, cfg, Facts(n), WARSAW, ids)
    share = applied.exploration.mean()
    assert 0.09 < share < 0.11
    again = apply(scores, cfg, Facts(n), WARSAW, ids)
    assert again.forced == applied.forced
    rows = np.flatnonzero(applied.exploration)
    minutes = np.asarray([applied.forced[int(r)][1] for r in rows], np.int64)
    assert applied.allowed_at(rows, minutes).all()
    assert not any(_in_quiet(int(t), 21, 8) for t in minutes)
    # uniform over the allowed minutes: each allowed hour of the window gets its share
    allowed_minutes = [
        t for t in range(int(scores.candidates[0]), int(scores.candidates[-1]) + 60, 60)
        if not _in_quiet(t, 21, 8)
    ]  # fmt: skip
    lo, hi = allowed_minutes[0], allowed_minutes[-1]
    first_half = np.mean(minutes < lo + (hi - lo) / 2)
    expected = np.mean(np.asarray(allowed_minutes) < lo + (hi - lo) / 2)
    assert abs(first_half - expected) < 0.05
    chosen = choose_allowed(applied, 60)
    r = int(rows[0])
    assert chosen.policies[r] == ("exploration",)
    assert chosen.decisions.target[r] == applied.forced[r][1]
    a, b = exploration_draws(["x", "y"])
    a2, b2 = exploration_draws(["x", "y"])
    assert (a == a2).all()
    assert (b == b2).all()
    assert a[0] != a[1]


def test_no_policies_change_nothing() -> None:
    scores = _scores(4, DST_START, 24)
    applied = apply(scores, PolicyConfig(), Facts(4), WARSAW, ["a", "b", "c", "d"])
    assert applied.allowed.all()
    assert np.array_equal(applied.candidates, scores.candidates)
    assert np.array_equal(applied.scores.prob, scores.prob)
    chosen = choose_allowed(applied, 60)
    assert chosen.policies == [()] * 4
    assert all(s is None for s in applied.suppressed)


def test_boundary_columns_are_inserted_by_linear_interpolation() -> None:
    from sendflowr.timing.policy import _with_columns

    rng = np.random.default_rng(4)
    cands = np.array([0, 300, 900, 1_200, 3_000], np.int64)
    prob = rng.random((6, len(cands)))
    new = np.array([60, 120, 1_000, 2_940], np.int64)  # two in one gap, none in some
    got = _with_columns(prob, cands, new)
    every = np.union1d(cands, new)
    want = np.stack([np.interp(every, cands, row) for row in prob])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(got[:, np.isin(every, cands)], prob)  # copied exactly
