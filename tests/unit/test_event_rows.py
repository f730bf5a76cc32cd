"""events_to_arrow (columns by transposing the structs) against the row-by-row meaning of
each column, for events as the API builds them and as the bus consumer decodes them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest

from sendflowr.event_batch import decode_events_json
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.storage.events.rows import EMAIL_EVENT_SCHEMA, events_to_arrow
from tests.factories import make_event, payload


def _reference(events: list[CanonicalEvent], uids: list[str]) -> dict[str, list[Any]]:
    """Each column as one event at a time defines it."""
    rows = []
    for e, uid in zip(events, uids, strict=True):
        i = e.identifiers
        rows.append(
            {
                "tenant": e.tenant,
                "universal_id": uid,
                "occurred_at": e.occurred_at,
                "event_id": e.event_id,
                "esp": e.esp,
                "esp_event_id": e.esp_event_id,
                "event_type": e.event_type.value,
                "email_hash": i.email_hash or "",
                "esp_profile_id": i.esp_profile_id or "",
                "phone": i.phone or "",
                "external_ids": list(i.external_ids.items()),
                "anonymous_id": i.anonymous_id or "",
                "campaign_id": e.campaign_id or "",
                "flow_id": e.flow_id or "",
                "message_id": e.message_id or "",
                "is_machine_open": e.is_machine_open,
                "properties": orjson.dumps(e.properties).decode(),
                "schema_version": e.schema_version,
            }
        )
    return {name: [r[name] for r in rows] for name in EMAIL_EVENT_SCHEMA.names}


def _mixed() -> list[CanonicalEvent]:
    return [
        make_event(0),
        make_event(1, person=2, event_type=EventType.CLICKED, campaign_id="c1", flow_id="f"),
        make_event(2, machine=True, message_id="m", properties={"n": 1, "s": "Ł", "l": [1]}),
        CanonicalEvent(
            tenant="other",
            esp="mailchimp",
            esp_event_id="x-9",
            event_type=EventType.ORDERED,
            occurred_at=datetime(2026, 3, 2, 9, 0, 0, 123000, tzinfo=UTC),
            identifiers=Identifiers(
                esp_profile_id="p1", phone="+48123456789", external_ids={"shop": "s1", "crm": "z"}
            ),
        ),
        make_event(4, properties={}),
        CanonicalEvent(
            tenant="acme",
            esp="klaviyo",
            esp_event_id="anon",
            event_type=EventType.SITE_VISIT,
            occurred_at=datetime(2030, 1, 1, tzinfo=UTC),
            identifiers=Identifiers(anonymous_id="cookie-1"),
        ),
    ]


@pytest.mark.parametrize("decoded", [False, True], ids=["built", "decoded-from-json"])
def test_columns_match_the_row_by_row_reference(decoded: bool) -> None:
    events = _mixed()
    if decoded:  # the consumer's struct subclasses, and a mix of both kinds
        # Without event_id, and a time normalised to UTC and the millisecond: the columns the
        # decoder passes on must be those of the normalised events.
        bodies = [payload(n) for n in range(5)]
        bodies[2] = payload(2, occurred_at="2026-03-02T10:00:00.123456+02:00")
        parsed = decode_events_json([orjson.dumps(b) for b in bodies])
        assert not parsed.rejected
        assert parsed.events[2].occurred_at == datetime(2026, 3, 2, 8, 0, 0, 123000, tzinfo=UTC)
        events = [*parsed.events, *events]
    uids = [f"sf_{n:04d}" for n in range(len(events))]
    table = events_to_arrow(events, uids)
    assert table.schema == EMAIL_EVENT_SCHEMA
    got = table.to_pydict()
    want = _reference(events, uids)
    for name in EMAIL_EVENT_SCHEMA.names:
        assert got[name] == want[name], name
    for name in ("email_hash", "phone", "campaign_id", "properties"):
        assert table.column(name).null_count == 0, name


def test_no_external_ids_anywhere_and_an_empty_batch() -> None:
    events = [make_event(n) for n in range(3)]
    table = events_to_arrow(events, ["sf_a", "sf_b", "sf_c"])
    assert table.column("external_ids").to_pylist() == [[], [], []]
    assert table.column("properties").to_pylist() == ["{}", "{}", "{}"]
    empty = events_to_arrow([], [])
    assert empty.num_rows == 0
    assert empty.schema == EMAIL_EVENT_SCHEMA


def test_one_universal_id_per_event() -> None:
    with pytest.raises(ValueError, match="one universal id per event"):
        events_to_arrow([make_event(0)], [])
    assert isinstance(events_to_arrow([make_event(0)], ["sf_x"]), pa.Table)


def test_the_decoders_columns_are_those_of_the_normalised_events() -> None:
    # The consumer's path: the decoder remembers its columns and the conversion reuses them.
    bodies = [payload(n) for n in range(4)]  # no event_id: filled in
    bodies[1] = payload(1, occurred_at="2026-03-02T10:00:00.123456+02:00")
    parsed = decode_events_json([orjson.dumps(b) for b in bodies])
    assert not parsed.rejected
    uids = [f"sf_{n}" for n in range(4)]
    got = events_to_arrow(parsed.events, uids).to_pydict()
    want = _reference(parsed.events, uids)
    assert got["occurred_at"][1] == datetime(2026, 3, 2, 8, 0, 0, 123000, tzinfo=UTC)
    assert got == want
