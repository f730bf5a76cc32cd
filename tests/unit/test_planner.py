"""The capacity-aware planner: exact top minutes, capacity, optimality, scale, errors."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendflowr.scheduling.planner import (
    Candidates,
    CapacityError,
    Plan,
    concat,
    plan,
    top_minutes,
    trigger_minute,
)

BASE = 1_767_225_600  # 2026-01-01 00:00 UTC, a whole minute
MIN = 60
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ helpers


def brute_top(cands: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every whole minute of the window through np.interp; best first, ties earlier."""
    minutes = np.arange(cands[0], cands[-1] + 1, MIN)
    out_m = np.full((len(values), k), -1, np.int64)
    out_v = np.full((len(values), k), -np.inf)
    for i, row in enumerate(values):
        v = np.interp(minutes.astype(np.float64), cands.astype(np.float64), row)
        order = np.lexsort((minutes, -v))[:k]
        out_m[i, : len(order)] = minutes[order]
        out_v[i, : len(order)] = v[order]
    return out_m, out_v.astype(np.float32)


def lists_from(values: np.ndarray, first: int = BASE, k: int | None = None) -> Candidates:
    """Candidates from each person's value at every minute of a window starting at `first`:
    best first, ties to the earlier minute, the k best kept."""
    k = values.shape[1] if k is None else k
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    minutes = first + MIN * order
    return Candidates(minutes.astype(np.int64), np.take_along_axis(values, order, 1))


def trigger_load(p: Plan, latency: int, booked: dict[int, int]) -> Counter[int]:
    load = Counter(trigger_minute(p.target, latency).tolist())
    for minute, count in booked.items():
        load[minute] += count
    return load


def check_plan(
    p: Plan,
    c: Candidates,
    latency: int,
    capacity: int,
    booked: dict[int, int],
    first: int,
    last: int,
) -> None:
    n = len(c)
    assert p.target.shape == (n,)
    # everyone placed, on a whole minute of the window
    assert np.all(p.target % MIN == 0)
    assert np.all((p.target >= first) & (p.target <= last))
    # never above capacity in any trigger minute, counting what others booked
    mine = Counter(trigger_minute(p.target, latency).tolist())
    assert mine == Counter(p.load())
    for minute, count in mine.items():
        assert count + booked.get(minute, 0) <= capacity, (minute, count)
    # nobody whose preferred minute (still) has room is moved
    pref_trig = trigger_minute(p.preferred, latency)
    for j in np.flatnonzero(p.moved).tolist():
        t = int(pref_trig[j])
        assert mine[t] + booked.get(t, 0) >= capacity, j
    # value accounting: exact on a candidate, the k-th (last in window) value off the list
    for i in range(n):
        row_m, row_v = c.minutes[i], c.values[i]
        inside = (row_m >= first) & (row_m <= last)
        hit = np.flatnonzero(row_m == p.target[i])
        if p.approximate[i]:
            assert hit.size == 0
            assert p.value[i] == row_v[np.flatnonzero(inside)[-1]]
        else:
            assert hit.size == 1
            assert p.value[i] == row_v[hit[0]]
        assert p.preferred[i] == row_m[np.flatnonzero(inside)[0]]
    assert np.array_equal(p.moved, p.target != p.preferred)
    expected_loss = float(np.sum(p.preferred_value.astype(float) - p.value.astype(float)))
    assert p.total_loss == pytest.approx(expected_loss)
    assert p.moved_count == int(p.moved.sum())
    assert p.max_shift_seconds == (int(np.abs(p.target - p.preferred).max()) if n else 0)


def optimum(values: np.ndarray, room: np.ndarray) -> float:
    """Best total value over every assignment of people to minutes within `room`."""
    n, s = values.shape
    best = -np.inf
    for assign in itertools.product(range(s), repeat=n):
        if np.all(np.bincount(assign, minlength=s) <= room):
            best = max(best, float(values[np.arange(n), assign].astype(np.float64).sum()))
    return best


# -------------------------------------------------------------------------- top_minutes


@st.composite
def curves(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    n_kinks = draw(st.integers(1, 10))
    gaps = draw(st.lists(st.integers(1, 40), min_size=n_kinks - 1, max_size=n_kinks - 1))
    cands = BASE + MIN * np.concatenate([[0], np.cumsum(gaps, dtype=np.int64)])
    n = draw(st.integers(1, 5))
    level = st.sampled_from([0.0, 0.25, 0.5, 1.0])  # exact ties and flat stretches
    value = draw(st.one_of(level, st.floats(0, 1, allow_nan=False, width=32)))
    rows = draw(
        st.lists(
            st.one_of(
                st.lists(level, min_size=n_kinks, max_size=n_kinks),
                st.lists(st.floats(0, 1, width=32), min_size=n_kinks, max_size=n_kinks),
                st.just([value] * n_kinks),  # a flat row
            ),
            min_size=n,
            max_size=n,
        )
    )
    k = draw(st.integers(1, 24))
    return cands, np.asarray(rows, np.float64), k


@FAST
@given(curves())
def test_top_minutes_is_the_brute_force_over_every_minute(
    case: tuple[np.ndarray, np.ndarray, int],
) -> None:
    cands, values, k = case
    got = top_minutes(cands, values, k)
    want_m, want_v = brute_top(cands, values, k)
    assert np.array_equal(got.minutes, want_m)
    assert np.array_equal(got.values, want_v)


def test_top_minutes_local_path_on_a_long_window() -> None:
    """A window far longer than 4k minutes takes the neighbourhood path: still exact."""
    rng = np.random.default_rng(7)
    cands = BASE + MIN * np.concatenate([[0], np.cumsum(rng.integers(1, 30, 80))])
    x = np.arange(len(cands))
    peaks = rng.uniform(0, len(cands), (300, 1))
    values = np.exp(-0.5 * ((x[None, :] - peaks) / rng.uniform(1, 8, (300, 1))) ** 2)
    values[:20] = np.round(values[:20], 1)  # ties and plateaus
    values[20:25] = 0.3  # flat rows
    values[25] = np.where(x % 2, 0.5, 0.1)  # many equal peaks
    for k in (1, 5, 16, 64):
        got = top_minutes(cands, values, k)
        want_m, want_v = brute_top(cands, values, k)
        assert np.array_equal(got.minutes, want_m), k
        assert np.array_equal(got.values, want_v), k


def test_top_minutes_pads_a_window_shorter_than_k() -> None:
    cands = np.array([BASE, BASE + 3 * MIN])
    got = top_minutes(cands, np.array([[0.2, 0.8]]), k=6)
    assert got.minutes.tolist() == [[BASE + 180, BASE + 120, BASE + 60, BASE, -1, -1]]
    assert got.values[0, 4:].tolist() == [-np.inf, -np.inf]
    assert got.values[0, :4] == pytest.approx([0.8, 0.6, 0.4, 0.2])


def test_top_minutes_flat_row_takes_the_earliest_minutes() -> None:
    cands = BASE + MIN * np.array([0, 100, 300])
    got = top_minutes(cands, np.full((2, 3), 0.4), k=3)
    assert got.minutes.tolist() == [[BASE, BASE + 60, BASE + 120]] * 2


def test_top_minutes_in_chunks_concat_to_the_whole() -> None:
    rng = np.random.default_rng(3)
    cands = BASE + MIN * np.arange(0, 600, 15)
    values = rng.random((50, len(cands)))
    whole = top_minutes(cands, values, 8)
    parts = concat([top_minutes(cands, values[i : i + 7], 8) for i in range(0, 50, 7)])
    assert np.array_equal(parts.minutes, whole.minutes)
    assert np.array_equal(parts.values, whole.values)
    assert whole.minutes.dtype == np.int64
    assert whole.values.dtype == np.float32


def test_top_minutes_refuses_bad_grids() -> None:
    with pytest.raises(ValueError, match="whole minutes"):
        top_minutes(np.array([BASE, BASE + 90]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="ascending"):
        top_minutes(np.array([BASE + 60, BASE]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="finite"):
        top_minutes(np.array([BASE, BASE + 60]), np.array([[0.0, np.nan]]))


# ------------------------------------------------------------------------ plan: invariants


@dataclass(frozen=True)
class Instance:
    cands: Candidates
    latency: int
    capacity: int
    booked: dict[int, int]
    first: int
    last: int


@st.composite
def instances(draw: st.DrawFn) -> Instance:
    slots = draw(st.integers(1, 12))
    n = draw(st.integers(0, 40))
    capacity = draw(st.integers(1, 6))
    latency = draw(st.sampled_from([0, 30, 60, 90, 299, 600]))
    k = draw(st.integers(1, slots))
    level = st.sampled_from([0.0, 0.5, 1.0])
    rows = draw(
        st.lists(
            st.lists(st.one_of(level, st.floats(0, 1, width=32)), min_size=slots, max_size=slots),
            min_size=n,
            max_size=n,
        )
    )
    values = np.asarray(rows, np.float32).reshape(n, slots)
    # bookings on trigger minutes of the window (and one outside), some over capacity
    trig = trigger_minute(BASE + MIN * np.arange(-1, slots + 1), latency).tolist()
    booked = draw(st.dictionaries(st.sampled_from(trig), st.integers(0, capacity + 1)))
    return Instance(
        lists_from(values, k=k), latency, capacity, booked, BASE, BASE + MIN * (slots - 1)
    )


@FAST
@given(instances())
def test_plan_respects_capacity_and_places_everyone(case: Instance) -> None:
    c, latency, capacity, booked = case.cands, case.latency, case.capacity, case.booked
    first, last = case.first, case.last
    trig = trigger_minute(np.arange(first, last + 1, MIN), latency).tolist()
    free = sum(max(0, capacity - booked.get(t, 0)) for t in trig)
    if free < len(c):
        with pytest.raises(CapacityError):
            plan(c, latency, capacity, booked, first, last)
        return
    p = plan(c, latency, capacity, booked, first, last)
    check_plan(p, c, latency, capacity, booked, first, last)


def test_people_whose_minute_has_room_stay() -> None:
    values = np.array([[1.0, 0.5, 0.1], [0.2, 1.0, 0.1], [0.2, 1.0, 0.1], [0.1, 0.2, 1.0]])
    c = lists_from(values.astype(np.float32))
    p = plan(c, 0, 2, {}, BASE, BASE + 120)
    assert not p.moved.any()
    assert p.total_loss == 0.0
    assert p.max_shift_seconds == 0
    assert p.moved_count == 0
    assert p.optimal


# ------------------------------------------------------------------------ plan: optimality


@st.composite
def small(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    slots = draw(st.integers(1, 5))
    n = draw(st.integers(1, 6))
    level = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])
    rows = draw(
        st.lists(
            st.lists(st.one_of(level, st.floats(0, 1, width=32)), min_size=slots, max_size=slots),
            min_size=n,
            max_size=n,
        )
    )
    room = draw(st.lists(st.integers(0, 3), min_size=slots, max_size=slots))
    if sum(room) < n:
        room[-1] += n - sum(room)
    return np.asarray(rows, np.float32), np.asarray(room)


@settings(max_examples=300, deadline=None)
@given(small())
def test_plan_is_optimal_on_small_instances(case: tuple[np.ndarray, np.ndarray]) -> None:
    """Brute force over every assignment: the plan's total value is the optimum."""
    values, room = case
    capacity = int(room.max())
    booked = {BASE + MIN * s: capacity - int(r) for s, r in enumerate(room) if r < capacity}
    c = lists_from(values)
    p = plan(c, 0, capacity, booked, BASE, BASE + MIN * (len(room) - 1))
    assert p.optimal
    assert float(p.value.astype(np.float64).sum()) == pytest.approx(optimum(values, room), abs=1e-6)


CHAIN = np.array(
    # minutes: 0       1       2
    [
        [0.6116, 0.8527, 0.0650],  # A: best 1, then 0 (regret 0.24)
        [0.3193, 0.5689, 0.9099],  # B: best 2, keeps it
        [0.0777, 0.6449, 0.4571],  # C: best 1, then 2 (regret 0.19, but 2 is B's)
    ],
    np.float32,
)


def test_one_step_regret_alone_is_not_optimal_the_polish_is() -> None:
    """Deferred acceptance alone (budget=0) gives minute 1 to A, whose regret (0.24) beats
    C's (0.19, measured to minute 2, which B then keeps), so C ends at minute 0 and loses
    0.57. Cancelling the negative cycle of moves (A to 0, C to 1) restores the optimum."""
    c = lists_from(CHAIN)
    last = BASE + 2 * MIN
    alone = plan(c, 0, 1, {}, BASE, last, budget=0)
    polished = plan(c, 0, 1, {}, BASE, last)
    best = optimum(CHAIN, np.array([1, 1, 1]))
    assert ((alone.target - BASE) // MIN).tolist() == [1, 2, 0]
    assert float(alone.value.astype(np.float64).sum()) < best - 0.1
    assert not alone.optimal
    assert polished.optimal
    assert ((polished.target - BASE) // MIN).tolist() == [0, 2, 1]
    assert float(polished.value.astype(np.float64).sum()) == pytest.approx(best)


def test_the_one_who_loses_least_is_moved() -> None:
    """Two people share a best minute with room for one: the flat curve moves, not the
    steep one; the same with look-ahead when the next minute is full already."""
    values = np.array([[0.2, 1.0, 0.3], [0.85, 0.9, 0.8]], np.float32)  # steep, flat
    p = plan(lists_from(values), 0, 1, {}, BASE, BASE + 120)
    assert p.target.tolist() == [BASE + 60, BASE]
    assert p.moved.tolist() == [False, True]
    assert p.total_loss == pytest.approx(0.05, abs=1e-6)
    # minute 0 is booked elsewhere: the flat person's next free candidate is minute 2
    booked = {BASE: 1}
    p = plan(lists_from(values), 0, 1, booked, BASE, BASE + 120)
    assert p.target.tolist() == [BASE + 60, BASE + 120]
    # a steeper second person now keeps the minute
    values = np.array([[0.2, 1.0, 0.9], [0.1, 0.9, 0.1]], np.float32)
    p = plan(lists_from(values), 0, 1, {}, BASE, BASE + 120)
    assert p.target.tolist() == [BASE + 120, BASE + 60]
    assert p.total_loss == pytest.approx(0.1, abs=1e-6)


# ------------------------------------------------------------------------ plan: fallback


def test_people_past_their_k_candidates_take_the_nearest_free_minutes() -> None:
    values = np.tile(np.array([0.1, 0.5, 0.9, 1.0, 0.9, 0.5, 0.1], np.float32), (8, 1))
    c = lists_from(values, k=2)  # minutes 3 then 2 (tie with 4 goes earlier)
    p = plan(c, 0, 2, {}, BASE, BASE + 6 * MIN)
    check_plan(p, c, 0, 2, {}, BASE, BASE + 6 * MIN)
    slots = sorted(((p.target - BASE) // MIN).tolist())
    assert slots == [1, 1, 2, 2, 3, 3, 4, 4]  # 4 nearest (tie earlier), then 1 (tie vs 5)
    assert p.approximate.sum() == 4
    assert np.all(p.value[p.approximate] == np.float32(0.9))  # their 2nd (last) value


def test_candidates_outside_the_window_are_skipped() -> None:
    values = np.array([[1.0, 0.9, 0.8, 0.1]], np.float32)
    c = lists_from(values)
    p = plan(c, 0, 1, {}, BASE + MIN, BASE + 3 * MIN)  # minute 0 is not in the window
    assert p.preferred.tolist() == [BASE + MIN]
    assert p.target.tolist() == [BASE + MIN]
    assert p.preferred_value.tolist() == [pytest.approx(0.9)]
    with pytest.raises(ValueError, match="no candidate minute in the window"):
        plan(lists_from(values, k=1), 0, 1, {}, BASE + MIN, BASE + 3 * MIN)


def test_plan_refuses_malformed_lists() -> None:
    bad = Candidates(np.array([[BASE, BASE + MIN]]), np.array([[0.1, 0.9]], np.float32))
    with pytest.raises(ValueError, match="sorted best first"):
        plan(bad, 0, 1, {}, BASE, BASE + MIN)
    with pytest.raises(ValueError, match="capacity"):
        plan(lists_from(np.ones((1, 2), np.float32)), 0, 0, {}, BASE, BASE + MIN)
    odd = Candidates(np.array([[BASE + 30]]), np.array([[0.1]], np.float32))
    with pytest.raises(ValueError, match="whole minutes"):
        plan(odd, 0, 1, {}, BASE, BASE + MIN)


def test_an_empty_audience_is_an_empty_plan() -> None:
    p = plan(concat([]), 60, 10, {}, BASE, BASE + MIN)
    assert len(p.target) == 0
    assert p.load() == {}
    assert p.total_loss == 0
    assert p.optimal


# ------------------------------------------------------------------------ capacity error


def test_capacity_error_names_the_numbers() -> None:
    c = lists_from(np.ones((1000, 3), np.float32))
    booked = {BASE: 100}
    with pytest.raises(CapacityError) as info:
        plan(c, 0, 300, booked, BASE, BASE + 2 * MIN)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "1000 people" in msg  # audience
    assert "300 triggers a minute" in msg  # capacity per minute
    assert "room for 800" in msg  # free capacity in the window (3 x 300 - 100)
    assert "3 minutes" in msg  # the window now
    assert "at least 4 minutes" in msg  # what it would need


# ------------------------------------------------------------------------ latency


def test_trigger_minutes_are_target_minus_latency_floored() -> None:
    target = np.array([BASE, BASE + MIN])
    assert trigger_minute(target, 90).tolist() == [BASE - 120, BASE - 60]
    assert trigger_minute(target, 60).tolist() == [BASE - 60, BASE]
    assert trigger_minute(target, 0).tolist() == [BASE, BASE + MIN]


def test_booked_counts_apply_to_trigger_minutes() -> None:
    # everyone prefers minute 1, then 0, then 2
    values = np.tile(np.array([0.9, 1.0, 0.5], np.float32), (3, 1))
    c = lists_from(values)
    last = BASE + 2 * MIN
    # latency 90 s: target BASE + 60 triggers at BASE - 30, in the trigger minute BASE - 60
    p = plan(c, 90, 2, {BASE - 60: 2}, BASE, last)
    assert sorted(p.target.tolist()) == [BASE, BASE, BASE + 120]
    assert p.load() == {BASE - 120: 2, BASE: 1}
    check_plan(p, c, 90, 2, {BASE - 60: 2}, BASE, last)
    # without latency that trigger minute is before the window: minute 1 is free
    p = plan(c, 0, 2, {BASE - 60: 2}, BASE, last)
    assert sorted(p.target.tolist()) == [BASE, BASE + 60, BASE + 60]
    # latency 60 s: minute 1 triggers in BASE, where one is booked already
    p = plan(c, 60, 2, {BASE: 1}, BASE, last)
    assert sorted(p.target.tolist()) == [BASE, BASE, BASE + 60]
    assert p.load() == {BASE - 60: 2, BASE: 1}
    check_plan(p, c, 60, 2, {BASE: 1}, BASE, last)


# ------------------------------------------------------------------------ scale


@pytest.mark.slow
def test_a_million_people_on_one_best_minute() -> None:
    n, capacity = 1_000_000, 142_500
    rng = np.random.default_rng(11)
    peak = BASE + 600 * MIN
    offsets = np.array([0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5, -6, 6, -7, 7, -8])
    width = rng.uniform(3, 60, n).astype(np.float32)[:, None]
    skew = rng.uniform(0.5, 2, n).astype(np.float32)[:, None]
    scale = np.where(offsets > 0, skew, np.float32(1))
    values = (0.5 * np.exp(-np.abs(offsets).astype(np.float32) * scale / width)).astype(np.float32)
    order = np.argsort(-values, axis=1, kind="stable")
    c = Candidates(
        np.take_along_axis(peak + MIN * offsets[None, :], order, 1).astype(np.int64),
        np.take_along_axis(values, order, 1),
    )
    del values, order
    start = time.perf_counter()
    p = plan(c, 120, capacity, {}, BASE, BASE + 1439 * MIN)
    elapsed = time.perf_counter() - start
    load = p.load()
    assert max(load.values()) <= capacity
    assert sum(load.values()) == n
    assert not p.approximate.any()
    minutes = np.unique(p.target)
    assert len(minutes) == 8  # ceil(1,000,000 / 142,500)
    assert np.all(np.abs(minutes - peak) <= 4 * MIN)
    assert p.max_shift_seconds <= 4 * MIN
    assert p.moved_count == n - capacity
    assert elapsed < 30  # a few seconds on one core; generous for a shared machine
