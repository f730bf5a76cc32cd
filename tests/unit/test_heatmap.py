"""The explorer's engagement grid: local days and hours (daylight saving included), Monday
first, machine engagements counted apart and never in the grid."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from sendflowr.timing.heatmap import DAYS, engagement_grid

PARIS = ZoneInfo("Europe/Paris")
UTC_ZONE = ZoneInfo("UTC")


def _s(y: int, mo: int, d: int, h: int, mi: int, sec: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, sec, tzinfo=UTC).timestamp())


def _cells(counts: list[list[int]]) -> dict[tuple[str, int], int]:
    return {(DAYS[d], h): c for d, row in enumerate(counts) for h, c in enumerate(row) if c}


def test_the_grid_is_seven_days_of_24_hours_monday_first() -> None:
    # 2026-03-02 is a Monday, 2026-03-08 a Sunday
    g = engagement_grid(
        [_s(2026, 3, 2, 0, 5), _s(2026, 3, 8, 23, 59)], ["opened", "clicked"], [False] * 2, UTC_ZONE
    )
    assert len(g.counts) == 7
    assert all(len(row) == 24 for row in g.counts)
    assert _cells(g.counts) == {("Monday", 0): 1, ("Sunday", 23): 1}
    assert g.by_type == {"clicked": 1, "opened": 1}
    assert g.total == 2
    assert g.first_utc == _s(2026, 3, 2, 0, 5)
    assert g.last_utc == _s(2026, 3, 8, 23, 59)


def test_local_time_crosses_midnight_into_the_next_day() -> None:
    # Saturday 23:30 UTC is Sunday 00:30 in Paris (CET, +1)
    g = engagement_grid([_s(2026, 3, 28, 23, 30)], ["clicked"], [False], PARIS)
    assert _cells(g.counts) == {("Sunday", 0): 1}


def test_spring_forward_uses_each_events_own_offset() -> None:
    # 2026-03-29 (Sunday): Paris goes from +1 to +2 at 01:00 UTC
    events = [_s(2026, 3, 29, 0, 30), _s(2026, 3, 29, 1, 30)]
    g = engagement_grid(events, ["opened", "opened"], [False] * 2, PARIS)
    assert _cells(g.counts) == {("Sunday", 1): 1, ("Sunday", 3): 1}  # no 02:00 that night


def test_fall_back_puts_both_0230s_in_one_hour() -> None:
    # 2026-10-25 (Sunday): Paris goes from +2 to +1 at 01:00 UTC, so 02:30 happens twice
    events = [_s(2026, 10, 25, 0, 30), _s(2026, 10, 25, 1, 30)]
    g = engagement_grid(events, ["clicked", "opened"], [False] * 2, PARIS)
    assert _cells(g.counts) == {("Sunday", 2): 2}


def test_summer_and_winter_events_at_the_same_utc_hour_land_an_hour_apart() -> None:
    events = [_s(2026, 1, 14, 8, 0), _s(2026, 7, 15, 8, 0)]  # both Wednesdays
    g = engagement_grid(events, ["opened", "opened"], [False] * 2, PARIS)
    assert _cells(g.counts) == {("Wednesday", 9): 1, ("Wednesday", 10): 1}


def test_machine_engagements_are_counted_apart_never_in_the_grid() -> None:
    sent = _s(2026, 3, 3, 9, 0, 0)
    events = [sent, sent + 2, sent + 3, sent + 600, sent + 900]
    types = ["received", "opened", "clicked", "opened", "opened"]
    flags = [False, False, False, False, True]  # the last: the connector's machine flag
    g = engagement_grid(events, types, flags, UTC_ZONE)
    assert g.machine == 3  # two within 5 s of the delivery, one flagged
    assert g.deliveries == 1
    assert g.by_type == {"clicked": 0, "opened": 1}
    assert _cells(g.counts) == {("Tuesday", 9): 1}
    assert g.first_utc == g.last_utc == sent + 600


def test_an_open_in_the_same_second_as_its_delivery_is_a_machine_open() -> None:
    sent = _s(2026, 3, 3, 9, 0)
    g = engagement_grid([sent, sent], ["opened", "received"], [False, False], UTC_ZONE)
    assert g.machine == 1
    assert g.total == 0


def test_without_a_delivery_before_it_an_engagement_is_human() -> None:
    t = _s(2026, 3, 3, 9, 0)
    g = engagement_grid([t, t + 2], ["opened", "received"], [False, False], UTC_ZONE)
    assert g.machine == 0
    assert g.total == 1


def test_other_types_are_ignored_and_order_does_not_matter() -> None:
    a, b = _s(2026, 3, 4, 18, 0), _s(2026, 3, 2, 7, 0)
    g = engagement_grid([a, b, a], ["clicked", "opened", "ordered"], [False] * 3, UTC_ZONE)
    assert _cells(g.counts) == {("Wednesday", 18): 1, ("Monday", 7): 1}
    assert g.first_utc == b
    assert g.last_utc == a


def test_no_events_gives_an_empty_grid() -> None:
    g = engagement_grid([], [], [], PARIS)
    assert g.total == 0
    assert g.machine == 0
    assert g.first_utc is None
    assert sum(map(sum, g.counts)) == 0


def test_mismatched_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="same length"):
        engagement_grid([1], [], [], UTC_ZONE)
