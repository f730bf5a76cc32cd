"""Decision windows: defaults, clipping to what is still ahead, and refusals naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sendflowr.timing.window import WindowError, check_window

NOW = datetime(2026, 3, 2, 9, 0, 30, tzinfo=UTC)


def test_defaults_start_now_plus_latency_and_span_a_day() -> None:
    w = check_window(None, None, 300, NOW)
    assert w.start == datetime(2026, 3, 2, 9, 6, tzinfo=UTC)  # 09:05:30 rounded up
    assert w.end - (NOW + timedelta(seconds=300)) == timedelta(hours=24)


def test_a_window_partly_past_is_clipped() -> None:
    w = check_window(NOW - timedelta(hours=2), NOW + timedelta(hours=2), 60, NOW)
    assert w.start == datetime(2026, 3, 2, 9, 2, tzinfo=UTC)
    assert w.end == NOW + timedelta(hours=2)


@pytest.mark.parametrize(
    ("after", "before", "latency", "field", "needle"),
    [
        (NOW + timedelta(hours=2), NOW + timedelta(hours=1), 0, "send_before", "after send_after"),
        (NOW, NOW, 0, "send_before", "after send_after"),
        (NOW, NOW + timedelta(days=15), 0, "send_before", "14 days"),
        (NOW - timedelta(days=2), NOW - timedelta(days=1), 0, "send_before", "past"),
        (NOW, NOW + timedelta(seconds=90), 60, "send_before", "less than a minute"),
        (NOW, NOW + timedelta(hours=1), -5, "latency_estimate_seconds", "negative"),
        (datetime(2026, 3, 3, 9, 0), None, 0, "send_after", "time zone"),
    ],
)
def test_refusals_name_the_field(
    after: datetime, before: datetime | None, latency: int, field: str, needle: str
) -> None:
    with pytest.raises(WindowError) as err:
        check_window(after, before, latency, NOW)
    assert err.value.field == field
    assert needle in err.value.reason
