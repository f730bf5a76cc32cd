"""EWH@60 replay: windows, cutoff, no peeking, baselines, bootstrap, calibration, loading."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from typer.testing import CliRunner

from sendflowr.cli import app
from sendflowr.evaluate import (
    ActivityEvents,
    Day,
    Decisions,
    GlobalHourPolicy,
    RandomPolicy,
    ReplaySetup,
    UserHourPolicy,
    Windows,
    baselines,
    brier_score,
    build_windows,
    evaluate_policy,
    reliability_table,
    run_evaluation,
)
from sendflowr.evaluate.data import load_events, parse_csv, parse_konect
from sendflowr.evaluate.replay import IntArray, ZoneClock, bootstrap_ci, successes
from sendflowr.evaluate.simulated import SimulatedSetup, oracle_shares
from sendflowr.simulate import SimConfig, simulate
from tests.factories import radoslaw_dir

WARSAW = "Europe/Warsaw"
H = 3600


def at(text: str, zone: str = WARSAW) -> int:
    """Unix seconds of a local wall time (fold=0: the first occurrence)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp())


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def events(pairs: list[tuple[int, int]], n_users: int | None = None) -> ActivityEvents:
    users = np.array([u for u, _ in pairs], np.int64)
    n = n_users if n_users is not None else int(users.max()) + 1
    ts = np.array([t for _, t in pairs], np.int64)
    return ActivityEvents(users, ts, tuple(str(i) for i in range(n)))


# --- zone arithmetic ---------------------------------------------------------------------------


def test_zone_clock_matches_zoneinfo_across_both_2010_changes() -> None:
    clock = ZoneClock(WARSAW, utc("2010-03-01 00:00"), utc("2010-11-30 00:00"))
    assert clock.transitions.tolist() == [utc("2010-03-28 01:00"), utc("2010-10-31 01:00")]
    probe = np.arange(utc("2010-03-27 20:00"), utc("2010-03-28 04:00"), 599, dtype=np.int64)
    probe = np.concatenate([probe, probe + (utc("2010-10-31 00:00") - utc("2010-03-28 00:00"))])
    tz = ZoneInfo(WARSAW)
    expected = [
        int(datetime.fromtimestamp(int(t), tz).replace(tzinfo=UTC).timestamp()) for t in probe
    ]
    assert clock.local_seconds(probe).tolist() == expected


def test_first_instant_of_a_missing_and_of_a_repeated_wall_time() -> None:
    clock = ZoneClock(WARSAW, utc("2010-03-01 00:00"), utc("2010-11-30 00:00"))
    walls = np.array([utc("2010-03-28 02:30"), utc("2010-10-31 02:30"), utc("2010-07-01 12:00")])
    # 02:30 on 28 March does not exist: clocks jump 02:00 -> 03:00 at 01:00 UTC.
    # 02:30 on 31 October happens twice: first at 00:30 UTC (CEST), again at 01:30 UTC (CET).
    assert clock.first_instant(walls).tolist() == [
        utc("2010-03-28 01:00"),
        utc("2010-10-31 00:30"),
        utc("2010-07-01 10:00"),
    ]


# --- windows and cutoff ------------------------------------------------------------------------


def window_list(w: Windows) -> list[tuple[str, int]]:
    return [(str(w.days[d].local_date), int(u)) for d, u in zip(w.day_index, w.users, strict=True)]


def day_on(w: Windows, local_date: str) -> Day:
    return next(d for d in w.days if str(d.local_date) == local_date)


def test_windows_on_dst_days_last_23_and_25_hours() -> None:
    pairs = [(0, at(f"2010-03-{d:02d} 10:00")) for d in range(1, 21)]
    pairs += [(0, at("2010-03-28 10:00")), (0, at("2010-10-31 10:00"))]
    pairs += [(1, at("2010-10-31 23:30")), (0, at("2010-11-02 00:30"))]
    pairs += [(1, at("2010-11-02 09:00"))]
    w = build_windows(events(pairs), WARSAW)
    assert w.cutoff == at("2010-03-28 10:00")  # index floor(0.8 * 25) = 20 of 25
    assert window_list(w) == [
        ("2010-03-28", 0),
        ("2010-10-31", 0),
        ("2010-10-31", 1),
        ("2010-11-02", 0),
        ("2010-11-02", 1),
    ]
    # policies are asked about every day of the span, for every user
    assert len(w.days) == (date(2010, 11, 2) - date(2010, 3, 28)).days + 1
    assert all(d.users.tolist() == [0, 1] for d in w.days)
    spring, fall = day_on(w, "2010-03-28"), day_on(w, "2010-10-31")
    assert (spring.start, spring.end) == (utc("2010-03-27 23:00"), utc("2010-03-28 22:00"))
    assert spring.end - spring.start == 23 * H
    assert (fall.start, fall.end) == (utc("2010-10-30 22:00"), utc("2010-10-31 23:00"))
    assert fall.end - fall.start == 25 * H
    assert day_on(w, "2010-11-02").end - day_on(w, "2010-11-02").start == 24 * H
    # the missing hour 02 starts when 03 does; the repeated hour 02 starts at its first occurrence
    assert spring.hour_starts[2] == spring.hour_starts[3] == utc("2010-03-28 01:00")
    assert fall.hour_starts[2] == utc("2010-10-31 00:00")
    assert fall.hour_starts[3] == utc("2010-10-31 02:00")


def test_cutoff_counts_distinct_events_and_ties_at_the_cutoff_make_windows() -> None:
    base = utc("2021-01-04 00:00")
    pairs = [(0, base + d * 86400 + 9 * H) for d in range(8)]
    pairs += [(0, pairs[0][1])] * 5  # duplicates: without dropping them the cutoff moves earlier
    pairs += [(1, base + 7 * 86400 + 9 * H), (1, base + 9 * 86400 + 9 * H)]
    w = build_windows(events(pairs), "UTC")
    assert len(w.events.unix_ts) == 10
    assert w.cutoff == base + 7 * 86400 + 9 * H  # distinct index 8 ties user 0's and 1's event
    assert window_list(w) == [("2021-01-11", 0), ("2021-01-11", 1), ("2021-01-13", 1)]


def test_local_day_not_utc_day_decides_the_window() -> None:
    pairs = [(0, utc(f"2021-01-{d:02d} 12:00")) for d in range(4, 12)]
    pairs += [(0, utc("2021-01-12 23:30")), (0, utc("2021-01-12 23:40"))]  # 00:30 next day local
    w = build_windows(events(pairs), WARSAW)
    assert window_list(w) == [("2021-01-13", 0)]


def test_per_user_zones_make_separate_days() -> None:
    pairs = [(0, utc(f"2021-01-{d:02d} 12:00")) for d in range(4, 12)]
    pairs += [(1, utc("2021-01-11 12:00")), (1, utc("2021-01-11 12:30"))]
    w = build_windows(events(pairs), ["Asia/Tokyo", "America/New_York"])
    assert [(d.users.tolist(), d.start) for d in w.days] == [
        ([0], utc("2021-01-10 15:00")),  # Tokyo's 2021-01-11 begins first
        ([1], utc("2021-01-11 05:00")),
    ]
    assert window_list(w) == [("2021-01-11", 0), ("2021-01-11", 1)]


# --- the policy protocol -----------------------------------------------------------------------


class Spy:
    """Records what the replay shows it, and answers each day's start."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.checks: list[tuple[int, int, int]] = []  # (day start, events seen, max seen)

    def begin(self, setup: ReplaySetup) -> None:
        self.seen = []

    def observe(self, users: IntArray, unix_ts: IntArray) -> None:
        assert users.base is None
        assert unix_ts.base is None
        self.seen.extend(unix_ts.tolist())

    def choose(self, day: Day) -> Decisions:
        self.checks.append((day.start, len(self.seen), max(self.seen, default=-1)))
        return Decisions(np.full(len(day.users), day.start, np.int64))


def test_history_is_exactly_the_events_before_each_day() -> None:
    # user 0's events fall exactly on its days' starts (UTC midnight): the boundary case
    hours = [(0, 0), (1, 23)]
    pairs = [(u, utc(f"2021-01-{d:02d} {h:02d}:00")) for d in range(4, 16) for u, h in hours]
    w = build_windows(events(pairs), ["UTC", "Asia/Tokyo"])
    spy = Spy()
    evaluate_policy(w, "spy", spy)
    all_ts = np.sort(w.events.unix_ts)
    assert [c[0] for c in spy.checks] == sorted(c[0] for c in spy.checks)
    for start, count, latest in spy.checks:
        assert latest < start
        assert count == int(np.sum(all_ts < start))  # and nothing before start is withheld


def test_a_time_outside_the_day_is_refused() -> None:
    class Late(Spy):
        def choose(self, day: Day) -> Decisions:
            return Decisions(np.full(len(day.users), day.end, np.int64))

    pairs = [(0, utc(f"2021-01-{d:02d} 09:00")) for d in range(4, 14)]
    w = build_windows(events(pairs), "UTC")
    with pytest.raises(ValueError, match="outside"):
        evaluate_policy(w, "late", Late())


def test_success_needs_an_event_in_the_hour_starting_at_t() -> None:
    pairs = [(0, utc(f"2021-01-{d:02d} 09:00")) for d in range(4, 14)]
    w = build_windows(events(pairs), "UTC")
    assert len(w) == 2
    nine = utc("2021-01-12 09:00")
    hits = successes(w, np.array([nine - H + 1, utc("2021-01-13 09:00") - H], np.int64))
    assert hits.tolist() == [True, False]  # [t, t + 3600) excludes t + 3600


# --- baselines ---------------------------------------------------------------------------------


def _day(d: int, h: int, m: int = 0) -> int:
    return utc(f"2021-01-{d:02d} {h:02d}:{m:02d}")


def test_baselines_on_a_hand_computed_example() -> None:
    history = [(0, _day(4, 9, 10)), (0, _day(4, 9, 20)), (1, _day(4, 14, 5))]
    history += [(0, _day(5, 9, 30)), (1, _day(5, 14, 30)), (1, _day(5, 15, 10))]
    test_day = [(0, _day(6, 9, 5)), (1, _day(6, 14, 59))]
    w = build_windows(events(history + test_day), "UTC")
    # 8 events: cutoff is index 6, the first event of the 6th; history hours: 9 x3, 14 x2, 15 x1
    assert w.cutoff == _day(6, 9, 5)
    assert len(w) == 2
    g = evaluate_policy(w, "global_hour", GlobalHourPolicy())
    u = evaluate_policy(w, "user_hour", UserHourPolicy())
    assert g.t.tolist() == [_day(6, 9), _day(6, 9)]
    assert (g.success.tolist(), g.ewh) == ([True, False], 0.5)
    assert u.t.tolist() == [_day(6, 9), _day(6, 14)]
    assert (u.success.tolist(), u.ewh) == ([True, True], 1.0)


def test_ties_go_to_the_earliest_hour_and_users_without_history_get_the_global_hour() -> None:
    history = [(0, _day(4, 16)), (0, _day(5, 8)), (1, _day(4, 14)), (1, _day(5, 11))]
    history += [(1, _day(6, 16)), (0, _day(7, 11)), (0, _day(8, 20))]
    test_day = [(0, _day(11, 10)), (1, _day(11, 10)), (2, _day(11, 10))]
    w = build_windows(events(history + test_day), "UTC")
    assert len(w) == 3
    assert w.users.tolist() == [0, 1, 2]
    # global: 11 and 16 tie with 2 each -> 11; user 0 ties 8/11/16/20 -> 8; user 1 ties -> 11
    g = evaluate_policy(w, "global_hour", GlobalHourPolicy())
    assert g.t.tolist() == [_day(11, 11)] * 3
    u = evaluate_policy(w, "user_hour", UserHourPolicy())
    assert u.t.tolist() == [_day(11, 8), _day(11, 11), _day(11, 11)]


def test_baseline_hours_are_local_and_land_on_dst_days() -> None:
    # every history event is at 09:15 Warsaw time, across the spring change (08:15 UTC six times
    # before, 07:15 UTC three times after): counted in UTC hours the choice would be 10:00 local
    history = [(0, at(f"2010-03-{d:02d} 09:15")) for d in range(22, 31)]
    test_day = [(0, at(f"2010-03-31 09:{m}")) for m in (30, 40, 50)]
    w = build_windows(events(history + test_day), WARSAW)
    assert [str(d.local_date) for d in w.days] == ["2010-03-31"]  # index floor(0.8 * 12) = 9
    for policy in (UserHourPolicy(), GlobalHourPolicy()):
        result = evaluate_policy(w, "p", policy)
        assert result.t.tolist() == [at("2010-03-31 09:00")]
        assert result.ewh == 1.0


def test_random_stays_in_the_day_and_depends_only_on_the_seed() -> None:
    pairs = [(u, _day(d, 9 + u)) for d in range(4, 30) for u in range(5)]
    a = evaluate_policy(build_windows(events(pairs), "UTC", seed=3), "r", RandomPolicy())
    b = evaluate_policy(build_windows(events(pairs), "UTC", seed=3), "r", RandomPolicy())
    c = evaluate_policy(build_windows(events(pairs), "UTC", seed=4), "r", RandomPolicy())
    assert a.t.tolist() == b.t.tolist() != c.t.tolist()
    w = build_windows(events(pairs), "UTC")
    starts = np.array([w.days[i].start for i in w.day_index])
    assert np.all((a.t >= starts) & (a.t < starts + 86400))


# --- bootstrap and report ----------------------------------------------------------------------


def test_bootstrap_is_deterministic_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    users = rng.integers(0, 40, 600)
    success = rng.random(600) < 0.3 + 0.01 * users
    point = success.mean()
    low, high = bootstrap_ci(users, success, seed=7)
    assert low < point < high
    assert high - low < 0.3
    assert (low, high) == bootstrap_ci(users, success, seed=7)
    assert (low, high) != bootstrap_ci(users, success, seed=8)
    assert bootstrap_ci(users, np.ones(600, bool), seed=7) == (1.0, 1.0)


def test_brier_and_reliability_on_known_inputs() -> None:
    conf = [0.05, 0.15, 0.15, 0.95, 1.0]
    out = [0, 1, 0, 1, 1]
    assert brier_score(conf, out) == pytest.approx((0.05**2 + 0.85**2 + 0.15**2 + 0.05**2) / 5)
    table = reliability_table(conf, out, bins=2)
    assert [r["count"] for r in table] == [3, 2]
    assert table[0]["mean_confidence"] == pytest.approx(0.35 / 3)
    assert table[0]["observed_rate"] == pytest.approx(1 / 3)
    assert table[1]["observed_rate"] == 1.0
    assert table[1]["bin_high"] == 1.0
    ten = reliability_table(conf, out)
    assert [r["count"] for r in ten] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert ten[5]["mean_confidence"] is None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([1.5], [1])


def test_report_carries_confidences_when_a_policy_states_them() -> None:
    class Sure(Spy):
        def choose(self, day: Day) -> Decisions:
            n = len(day.users)
            return Decisions(np.full(n, day.hour_starts[9], np.int64), np.full(n, 0.75))

    pairs = [(0, _day(d, 9, 30)) for d in range(4, 14)] + [(1, _day(13, 20))]
    report = run_evaluation(events(pairs), "UTC", {"sure": Sure(), **baselines()})
    assert report["windows"] == 3
    sure = report["policies"]["sure"]
    assert (sure["windows"], sure["successes"]) == (3, 2)
    assert sure["calibration"]["brier"] == pytest.approx((2 * 0.25**2 + 0.75**2) / 3)
    assert "calibration" not in report["policies"]["user_hour"]
    assert set(report["policies"]) == {"sure", "random", "global_hour", "user_hour"}


# --- loading -----------------------------------------------------------------------------------


def test_parse_konect_uses_the_sender_and_fourth_column() -> None:
    ev = parse_konect(["% asym positive", "% 3 3 3", "10 2 1 100", "2 10 1 50", "10 3 1 100"])
    assert ev.labels == ("2", "10")
    assert ev.users.tolist() == [1, 0, 1]
    assert ev.unix_ts.tolist() == [100, 50, 100]
    with pytest.raises(ValueError, match="line 2: expected"):
        parse_konect(["1 2 1 5", "1 2 1"])
    with pytest.raises(ValueError, match=r"line 1: unix_ts '5\.5'"):
        parse_konect(["1 2 1 5.5"])


def test_parse_csv_with_zones_and_its_errors() -> None:
    ev = parse_csv(["user_id,unix_ts,tz", "b,10,UTC", "a,20,Asia/Tokyo", "b,30,UTC"])
    assert ev.labels == ("a", "b")
    assert ev.zones == ("Asia/Tokyo", "UTC")
    assert ev.users.tolist() == [1, 0, 1]
    assert parse_csv(["unix_ts,user_id", "5,x"]).zones is None
    cases = [
        (["user,unix_ts"], "line 1: header lacks column.s. user_id"),
        (["user_id,unix_ts", "a,1", "b,x"], "line 3: unix_ts 'x'"),
        (["user_id,unix_ts", "a,1,2"], "line 2: 3 fields"),
        (["user_id,unix_ts,tz", "a,1,Mars/Base"], "line 2: unknown time zone"),
        (["user_id,unix_ts,tz", "a,1,UTC", "a,2,Asia/Tokyo"], "line 3: user 'a' has zone"),
    ]
    for lines, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_csv(lines)


def test_load_events_reads_a_konect_directory(tmp_path: Path) -> None:
    (tmp_path / "out.tiny").write_text("% sym\n1 2 1 100\n3 1 1 200\n")
    ev = load_events(tmp_path, "konect")
    assert ev.labels == ("1", "3")
    assert ev.unix_ts.tolist() == [100, 200]
    (tmp_path / "bad.csv").write_text("user_id,unix_ts\na,\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 2"):
        load_events(tmp_path / "bad.csv", "csv")


# --- the development data set ------------------------------------------------------------------


@pytest.mark.slow
def test_reference_figures_on_radoslaw_email() -> None:
    path = radoslaw_dir()
    if path is None:
        pytest.skip("../shared/data/radoslaw_email not found (set SENDFLOWR_SHARED_DIR)")
    report = run_evaluation(load_events(path, "konect"), WARSAW, baselines(), seed=0)
    assert report["windows"] == 2795
    figures = report["policies"]
    assert round(figures["global_hour"]["ewh"], 3) == 0.317
    assert round(figures["user_hour"]["ewh"], 3) == 0.398
    assert 0.09 <= figures["random"]["ewh"] <= 0.13
    for f in figures.values():
        assert f["ci_low"] <= f["ewh"] <= f["ci_high"]


def test_the_replay_calibrates_confidence_online_without_moving_a_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sendflowr policy fits the tenant map (timing/calibration.py) on its own past days:
    the same times, a lower Brier score than the model's confidence alone."""
    path = radoslaw_dir()
    if path is None:
        pytest.skip("../shared/data/radoslaw_email not found (set SENDFLOWR_SHARED_DIR)")
    from sendflowr.evaluate import sendflowr_policy
    from sendflowr.evaluate.replay import build_windows, evaluate_policy

    windows = build_windows(load_events(path, "konect"), WARSAW, 0)
    mapped = evaluate_policy(windows, "sendflowr", sendflowr_policy.SendflowrPolicy())
    monkeypatch.setattr(sendflowr_policy, "fit_calibration", lambda *a, **k: None)
    plain = evaluate_policy(windows, "sendflowr", sendflowr_policy.SendflowrPolicy())
    np.testing.assert_array_equal(mapped.t, plain.t)
    assert mapped.confidence is not None
    assert plain.confidence is not None
    assert not np.allclose(mapped.confidence, plain.confidence)
    assert (
        brier_score(mapped.confidence, mapped.success)
        < brier_score(plain.confidence, plain.success) - 0.004
    )


# --- section 2: oracle share in the simulator ---------------------------------------------------

SIM_ARGS = ["evaluate", "--simulated", "--profiles", "60", "--days", "21", "--windows", "2"]


def test_evaluate_simulated_cli_prints_and_writes_reproducible_shares(tmp_path: Path) -> None:
    runner = CliRunner()
    outs = []
    for name in ("a.json", "b.json"):
        result = runner.invoke(app, [*SIM_ARGS, "--seed", "3", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert "Oracle share" in result.output
        outs.append(json.loads((tmp_path / name).read_text()))
    assert outs[0] == outs[1]
    report = outs[0]
    assert list(report["runs"]) == ["machine_open_share=0.45", "machine_open_share=0"]
    with_mpp, without = report["runs"].values()
    assert with_mpp["machine_opens"] > 0
    assert without["machine_opens"] == 0
    for run in (with_mpp, without):
        shares = run["oracle_share"]
        assert set(shares) == {
            "random", "global_hour", "user_hour", "sendflowr", "sendflowr_uncorrected"
        }  # fmt: skip
        assert all(0.0 < v <= 1.0 for v in shares.values())
    # machine opens are excluded, so sendflowr's history is the same with and without them
    assert with_mpp["oracle_share"]["sendflowr"] == pytest.approx(
        without["oracle_share"]["sendflowr"]
    )


def test_evaluate_simulated_refuses_an_events_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*SIM_ARGS, "--events", str(tmp_path)])
    assert result.exit_code != 0
    assert "--events" in result.output
    missing = CliRunner().invoke(app, ["evaluate"])
    assert missing.exit_code != 0
    assert "--events" in missing.output


def test_oracle_share_is_one_for_the_oracle_and_ranks_the_baselines() -> None:
    sim = simulate(SimConfig(seed=2, profiles=150, days=42))
    report = oracle_shares(sim, SimulatedSetup(seed=2, profiles=150, days=42, windows=2))
    shares = report["oracle_share"]
    assert shares["random"] < shares["user_hour"] < shares["sendflowr"] <= 1.0
    assert shares["sendflowr_uncorrected"] < shares["sendflowr"]
