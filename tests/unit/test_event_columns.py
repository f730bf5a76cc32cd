"""event_columns: struct fields as columns, reused only for the very same structs."""

from __future__ import annotations

import msgspec
import pytest

from sendflowr.event_columns import columns, forget, remember
from sendflowr.events import Identifiers
from tests.factories import make_event


class _Point(msgspec.Struct, frozen=True):
    x: int
    y: str | None = None


class _Other(msgspec.Struct, frozen=True):
    y: str | None
    x: int


def test_columns_are_the_fields_in_order() -> None:
    forget()
    points = [_Point(1, "a"), _Point(2), _Point(3, "c")]
    assert columns(points) == {"x": (1, 2, 3), "y": ("a", None, "c")}
    events = [make_event(n, person=n % 2) for n in range(4)]
    cols = columns(events)
    assert cols["esp_event_id"] == tuple(e.esp_event_id for e in events)
    assert columns(cols["identifiers"])["email_hash"] == tuple(
        e.identifiers.email_hash for e in events
    )
    assert columns([]) == {}


def test_remembered_columns_are_reused_for_the_same_structs_only() -> None:
    forget()
    points = [_Point(1, "a"), _Point(2, "b")]
    marked = {"x": (10, 20), "y": ("p", "q")}  # not the fields: shows where an answer came from
    remember(points, marked)
    assert columns(points) is marked
    assert columns(list(points)) is marked  # another list of the same objects, in order
    assert columns([*points, _Point(3)]) == {"x": (1, 2, 3), "y": ("a", "b", None)}
    assert columns([points[1], points[0]]) == {"x": (2, 1), "y": ("b", "a")}
    assert columns([_Point(1, "a"), _Point(2, "b")]) == {"x": (1, 2), "y": ("a", "b")}
    points[1] = _Point(5, "e")  # the list changed after it was remembered
    assert columns(points) == {"x": (1, 5), "y": ("a", "e")}
    forget()
    assert columns([*points]) == {"x": (1, 5), "y": ("a", "e")}


def test_mixed_field_layouts_are_refused() -> None:
    forget()
    with pytest.raises(TypeError, match="layouts"):
        columns([_Point(1), _Other(None, 2)])
    assert columns([Identifiers(phone="+48123456789")])["phone"] == ("+48123456789",)
