"""The filter language, cursors and the event index, without HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from sendflowr.klaviyo_sim.errors import ApiError
from sendflowr.klaviyo_sim.eventstore import EventStore, Selection, key_of_time
from sendflowr.klaviyo_sim.filters import (
    NEXT,
    PREV,
    Bare,
    Condition,
    CursorCodec,
    fingerprint,
    parse_filter,
    seconds_bounds,
)


def test_parse_calls_quotes_lists_and_and() -> None:
    got = parse_filter(
        'and(equals(metric_id,"ab\\"c"),has(profile)),any(email,[\'a@x\', "b@y"]),'
        "greater-than(datetime,2026-01-05T00:00:00+00:00)"
    )
    assert got == [
        Condition("equals", "metric_id", ('ab"c',)),
        Condition("has", "profile", ()),
        Condition("any", "email", (("a@x", "b@y"),)),
        Condition("greater-than", "datetime", (Bare("2026-01-05T00:00:00+00:00"),)),
    ]
    assert parse_filter(None) == parse_filter("  ") == []


@pytest.mark.parametrize(
    "text", ["equals(", "equals(a,'b'", "equals(a,'b'))", "not(has(profile))", "equals(a,)", "(x)"]
)
def test_malformed_filters_are_400(text: str) -> None:
    with pytest.raises(ApiError) as excinfo:
        parse_filter(text)
    assert excinfo.value.status == 400
    assert excinfo.value.parameter == "filter"


def test_seconds_bounds() -> None:
    assert seconds_bounds("greater-or-equal", 10_500) == (11, None)
    assert seconds_bounds("greater-or-equal", 10_000) == (10, None)
    assert seconds_bounds("greater-than", 10_000) == (11, None)
    assert seconds_bounds("less-than", 10_000) == (None, 10)
    assert seconds_bounds("less-than", 10_500) == (None, 11)
    assert seconds_bounds("less-or-equal", 10_500) == (None, 11)


def test_cursor_round_trip_and_tampering() -> None:
    codec = CursorCodec(b"k" * 16)
    q1, q2 = fingerprint("a", 1), fingerprint("a", 2)
    token = codec.encode(q1, 123_456_789_012, PREV)
    assert codec.decode(token, q1) == (123_456_789_012, PREV)
    with pytest.raises(ApiError):
        codec.decode(token, q2)
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(ApiError):
        codec.decode(tampered, q1)
    with pytest.raises(ApiError):
        CursorCodec(b"x" * 16).decode(token, q1)
    with pytest.raises(ApiError):
        codec.decode("!!!", q1)
    assert codec.decode(codec.encode(q1, 0, NEXT), q1) == (0, NEXT)


def _store() -> EventStore:
    store = EventStore(2)
    ts = [100, 100, 101, 105, 105, 105, 110]
    store.extend(
        [f"e{i}" for i in range(7)], ts, [0, 1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 2, 2, 0],
        [b"{}"] * 7,
    )  # fmt: skip
    return store


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 10])
def test_pages_cover_every_event_once_both_ways(descending: bool, size: int) -> None:
    store = _store()
    seen: list[int] = []
    page = store.page(Selection(), size, descending)
    pages = [page]
    while page.has_next:
        page = store.page(Selection(), size, descending, after=page.last_key)
        pages.append(page)
    for p in pages:
        seen.extend(p.ordinals)
    expected = list(range(7))
    assert seen == (expected[::-1] if descending else expected)
    # prev from the last page walks back through the same pages.
    back = [pages[-1].ordinals]
    page = pages[-1]
    while page.has_prev:
        page = store.page(Selection(), size, descending, before=page.first_key)
        back.append(page.ordinals)
    assert back[::-1] == [p.ordinals for p in pages]


def test_selections_and_late_inserts() -> None:
    store = _store()
    assert store.count(Selection(metric=1)) == 3
    assert store.count(Selection(profile=2)) == 2
    assert store.count(Selection(metric=0, profile=0)) == 2
    assert store.count(Selection(lo=key_of_time(101), hi=key_of_time(106))) == 4
    assert store.count(Selection(metric=-1)) == 0
    # An event added later but dated earlier sorts into place.
    store.extend(["late"], [102], [1], [0], [b"{}"])
    keys = store.keys(Selection())
    assert np.all(np.diff(keys) > 0)
    assert store.page(Selection(metric=1, profile=0), 10).ordinals == [1, 7]
    with pytest.raises(ValueError):
        store.extend(["late"], [103], [1], [0], [b"{}"])
