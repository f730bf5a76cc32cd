"""The brand is the ground-truth simulation as Klaviyo would hold it."""

from __future__ import annotations

from collections import Counter

import orjson

from sendflowr.connectors.klaviyo.constants import EVENT_TYPE_METRICS
from sendflowr.events import EventType
from sendflowr.klaviyo_sim import Brand, build_brand
from sendflowr.klaviyo_sim.brand import short_id, topic_id
from sendflowr.simulate import simulate
from tests.klaviyo_sim.conftest import small_config


def test_every_canonical_event_is_one_klaviyo_event(brand: Brand) -> None:
    sim = simulate(brand.config)
    assert len(brand.events) == len(sim.events) == brand.history_events
    by_metric = Counter(EVENT_TYPE_METRICS[e.event_type] for e in sim.events)
    assert brand.summary()["events_by_metric"] == {
        m.name: by_metric.get(m.name, 0) for m in brand.metrics
    }
    assert brand.machine_opens == sum(e.is_machine_open for e in sim.events)
    for ev in sim.events[:: max(1, len(sim.events) // 300)]:
        ordinal = brand.events.by_id[ev.esp_event_id]
        doc = orjson.loads(brand.events.rendered[ordinal])
        attrs = doc["attributes"]
        assert attrs["timestamp"] == ev.occurred_at_ms // 1000
        assert attrs["uuid"] == ev.event_id
        assert doc["relationships"]["profile"]["data"]["id"] == ev.identifiers.esp_profile_id
        props = attrs["event_properties"]
        assert props["$event_id"] == ev.esp_event_id
        for key, value in ev.properties.items():
            assert props[key] == value
        if ev.message_id is not None:
            assert props["$message"] == ev.message_id
        if ev.flow_id is not None and ev.event_type is not EventType.ORDERED:
            assert props["$flow"] == ev.flow_id
        if ev.event_type is EventType.OPENED:
            assert props["machine_open"] is ev.is_machine_open
            assert props["Apple Privacy Open"] is ev.is_machine_open
        else:
            assert "machine_open" not in props
            assert "Apple Privacy Open" not in props


def test_profiles_campaigns_and_flows_come_from_the_simulation(brand: Brand) -> None:
    sim = simulate(brand.config)
    assert [(p.id, p.email, p.tz) for p in brand.profiles] == [
        (p.esp_profile_id, p.email, p.tz) for p in sim.profiles
    ]
    campaigns = [m for m in sim.messages if m.campaign_id is not None]
    assert [c.id for c in brand.campaigns] == [m.campaign_id for m in campaigns]
    assert {f.id for f in brand.flows} == {m.flow_id for m in sim.messages if m.flow_id}
    # Campaign send times are on the brand's schedule (10:00 New York, Tuesdays/Thursdays).
    first_sends: dict[int, int] = {}
    for row, msg in enumerate(sim.sends.message.tolist()):
        first_sends.setdefault(msg, int(sim.sends.send_ms[row]) // 1000)
    for i, c in enumerate(brand.campaigns):
        assert c.send_ts == first_sends[i]


def test_ids_are_stable_and_klaviyo_shaped(brand: Brand) -> None:
    again = build_brand(small_config().sim_config())
    assert [m.id for m in again.metrics] == [m.id for m in brand.metrics]
    assert again.events.ids == brand.events.ids
    assert (
        short_id("metric:Opened Email")
        == brand.metric_by_id[next(m.id for m in brand.metrics if m.name == "Opened Email")].id
    )
    assert topic_id("klaviyo", "Marked Email as Spam") == "event:klaviyo.marked_email_as_spam"


def test_summary_dates(brand: Brand) -> None:
    s = brand.summary()
    assert s["start"] <= s["first_datetime"] <= s["last_datetime"] < s["end"]
    assert s["list_members"] == s["profiles"] == 200
