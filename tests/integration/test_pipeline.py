"""The pipeline over a batch: identity -> store -> features, with dead letters for bad items."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest

from sendflowr.events import EventType
from sendflowr.identity.identifiers import EMAIL, Identifier
from sendflowr.people import features_for
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing.features import ProfileFeatures
from tests.factories import T0, email_hash, make_event, payload


def _tenant(runtime: Runtime, tenant: str = "acme") -> None:
    runtime.metadata.ensure_tenant(Tenant(tenant, tenant.title(), "UTC"))


def _uid(runtime: Runtime, tenant: str, person: int) -> str:
    uid = runtime.identity.owner(tenant, Identifier(EMAIL, email_hash(person)))
    assert uid is not None
    return uid


def _features(runtime: Runtime, tenant: str, uid: str, now: int | None = None) -> ProfileFeatures:
    return features_for(tenant, uid, runtime.events, runtime.features, runtime.identity, now=now)


def test_batch_is_stored_and_folded_into_features(runtime: Runtime) -> None:
    _tenant(runtime)
    events = [
        make_event(0, person=1, event_type=EventType.RECEIVED),
        make_event(1, person=1, machine=True),
        make_event(2, person=1),
        make_event(3, person=1, event_type=EventType.CLICKED),
        make_event(4, person=2),
    ]
    result = runtime.pipeline.process(events)
    assert (result.received, result.stored, result.rejected) == (5, 5, [])
    assert result.profiles_updated == 0  # nobody cached yet: rebuilt from the store on read
    assert runtime.events.count_by_type("acme") == {"clicked": 1, "opened": 3, "received": 1}

    uid = _uid(runtime, "acme", 1)
    assert uid.startswith("sf_")
    assert len(uid) == 19
    stored = runtime.events.profile_events("acme", uid)
    assert [s.esp_event_id for s in stored] == ["evt-0", "evt-1", "evt-2", "evt-3"]

    feats = _features(runtime, "acme", uid)
    assert feats.count("opened") == 2
    assert feats.count("clicked") == 1
    assert feats.machine_opens_excluded == 1
    assert feats.engagements == 2
    # Monday 09:00 local (the tenant is in UTC): the open and the click; the machine open at
    # 09:01 adds nothing, so only the 09:00 bin holds weight.
    assert np.flatnonzero(feats.activity.bins).tolist() == [36]
    assert feats.last_engagement_ms == int((T0 + timedelta(minutes=3)).timestamp() * 1000)

    # Now cached, the next batch is folded in incrementally, and agrees with a rebuild.
    later = runtime.pipeline.process([make_event(9, person=1, event_type=EventType.CLICKED)])
    assert later.profiles_updated == 1
    incremental = runtime.features.get_many("acme", [uid])[uid]
    assert incremental.count("clicked") == 2
    runtime.features.invalidate("acme", [uid])
    rebuilt = _features(runtime, "acme", uid, now=incremental.activity.last_update)
    np.testing.assert_array_equal(rebuilt.counts, incremental.counts)
    np.testing.assert_allclose(rebuilt.activity.bins, incremental.activity.bins, rtol=1e-6)
    assert rebuilt.activity.evidence == pytest.approx(incremental.activity.evidence, rel=1e-9)


def test_replayed_batch_changes_nothing(runtime: Runtime) -> None:
    _tenant(runtime)
    events = [make_event(i, person=3) for i in range(20)]
    runtime.pipeline.process(events)
    uid = _uid(runtime, "acme", 3)
    before = _features(runtime, "acme", uid).to_bytes()
    again = runtime.pipeline.process(events)
    assert again.profiles_updated == 0
    assert runtime.events.count_events("acme") == 20
    assert runtime.features.get_many("acme", [uid])[uid].to_bytes() == before


def test_bad_payloads_go_to_dead_letters_and_good_ones_are_stored(runtime: Runtime) -> None:
    _tenant(runtime)
    payloads = [
        payload(0),
        payload(1, event_type="teleported"),
        payload(2),
        payload(3, occurred_at="2026-03-02T09:00:00"),
        payload(4, occurred_at=(datetime.now(UTC) + timedelta(days=30)).isoformat()),
    ]
    result = runtime.pipeline.process_payloads("test", payloads)
    assert result.received == 5
    assert result.stored == 2
    assert [r.index for r in result.rejected] == [1, 3, 4]
    fields = [r.errors[0].loc for r in result.rejected]
    assert fields == [("event_type",), ("occurred_at",), ("occurred_at",)]
    letters = runtime.metadata.list_dead_letters()
    assert len(letters) == 3
    assert all(d.source == "test" for d in letters)
    assert any("future" in d.reason for d in letters)
    assert any("teleported" in d.payload for d in letters)
    assert runtime.events.count_events("acme") == 2


def test_one_batch_many_tenants(runtime: Runtime) -> None:
    _tenant(runtime, "alpha")
    _tenant(runtime, "beta")
    events = [make_event(i, tenant="alpha" if i % 3 else "beta", person=5) for i in range(9)]
    runtime.pipeline.process(events)
    assert runtime.events.count_events("alpha") == 6
    assert runtime.events.count_events("beta") == 3
    a = _uid(runtime, "alpha", 5)
    b = _uid(runtime, "beta", 5)
    assert a != b  # the same address at two brands is two people
    assert _features(runtime, "alpha", a).count("opened") == 6
    assert _features(runtime, "beta", b).count("opened") == 3


def test_bus_publish_is_durable_when_it_returns(runtime: Runtime) -> None:
    _tenant(runtime)
    result = runtime.bus.publish([make_event(i) for i in range(3)], source="test")
    assert result.stored == 3
    assert runtime.events.count_events("acme") == 3
    assert email_hash(0) != email_hash(1)


def test_json_documents_decode_validate_and_dead_letter(runtime: Runtime) -> None:
    import json

    _tenant(runtime)
    lines = [
        json.dumps(payload(0)).encode(),
        b"{not json",
        json.dumps(payload(2, esp_event_id="")).encode(),
        json.dumps(payload(3)).encode(),
    ]
    result = runtime.pipeline.process_json("kafka", lines)
    assert (result.received, result.stored) == (4, 2)
    assert [r.index for r in result.rejected] == [1, 2]
    assert result.rejected[1].errors[0].loc == ("esp_event_id",)
    letters = {d.payload: d for d in runtime.metadata.list_dead_letters()}
    assert "{not json" in letters
    assert "malformed JSON" in letters["{not json"].reason


def test_prepare_then_store_is_process_json_and_a_retried_store_counts_once(
    runtime: Runtime,
) -> None:
    """The consumer's two halves: prepare_json stores nothing (bad documents already go to
    the dead letters), store writes and folds; a store run again after a failure (the
    consumer's retry) counts its events once and duplicates nothing."""
    import json

    _tenant(runtime)
    _tenant(runtime, "beta")
    good = [make_event(i, person=i % 3, tenant="beta" if i == 4 else "acme") for i in range(6)]
    lines = [msgspec.json.encode(e) for e in good[:3]]
    lines += [b"{not json", *(msgspec.json.encode(e) for e in good[3:])]
    lines.append(json.dumps(payload(9, occurred_at="2099-01-01T00:00:00Z")).encode())
    prepared = runtime.pipeline.prepare_json("kafka", lines)
    assert runtime.events.count_events("acme") == 0
    assert [r.index for r in prepared.result.rejected] == [3, 7]
    assert len(runtime.metadata.list_dead_letters()) == 2
    first = runtime.pipeline.store(prepared)
    again = runtime.pipeline.store(prepared)
    assert (first.received, first.stored) == (8, 6)
    assert (again.received, again.stored) == (8, 6)
    assert runtime.events.count_events("acme") == 5
    assert runtime.events.count_events("beta") == 1
    uid = _uid(runtime, "acme", 0)
    assert _features(runtime, "acme", uid).count("opened") == 2  # events 0 and 3, once each
