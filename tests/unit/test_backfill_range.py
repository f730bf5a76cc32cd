"""The time range of a backfill: the last N days or the last N calendar years."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sendflowr.connectors.klaviyo.backfill import plan_range


def test_days_back() -> None:
    now = datetime(2026, 11, 24, 7, 30, 15, 123456, tzinfo=UTC)
    assert plan_range(now, days_back=90) == (now - timedelta(days=90), now)


def test_years_back_are_calendar_years_across_leap_days() -> None:
    now = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    # the span holds 29 February 2024: two calendar years back is 731 days here, not 2 x 365
    assert plan_range(now, years_back=2) == (datetime(2024, 1, 15, 12, 0, tzinfo=UTC), now)
    assert now - plan_range(now, years_back=2)[0] == timedelta(days=731)


def test_years_back_from_29_february_land_on_the_28th() -> None:
    now = datetime(2028, 2, 29, 23, 59, tzinfo=UTC)
    assert plan_range(now, years_back=1)[0] == datetime(2027, 2, 28, 23, 59, tzinfo=UTC)
    assert plan_range(now, years_back=4)[0] == datetime(2024, 2, 29, 23, 59, tzinfo=UTC)


@pytest.mark.parametrize(("days", "years"), [(None, None), (30, 1)])
def test_exactly_one_of_days_and_years(days: int | None, years: int | None) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        plan_range(datetime(2026, 1, 1, tzinfo=UTC), days_back=days, years_back=years)
