"""Warming the in-process feature cache from the event store while ingest goes on
(`Runtime.warm_features`, `warm_tenant`, `FeatureCache.rebuilding` / `ingesting`), on chDB +
SQLite with the memory cache.

What must hold: a warmed profile equals the person's rebuild from the store, and no event is
counted twice or lost whatever a batch of the pipeline does while the warm-up (or a single
person's rebuild after a miss) reads the store: such people are left out and rebuilt on their
next read."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from sendflowr.events import CanonicalEvent, EventType
from sendflowr.people import features_for
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.events.rows import events_to_arrow
from sendflowr.storage.features.memory import MemoryFeatureCache
from sendflowr.storage.features.rebuild import WarmResult, fold_arrays, warm_tenant
from sendflowr.timing.activity import ActivityParams
from sendflowr.timing.features import FoldContext, ProfileFeatures
from tests.conftest import open_runtime
from tests.contract.test_feature_cache import _same
from tests.factories import T0, make_event
from tests.integration.test_features_rebuild import BERLIN, NOW, _load, _uid


def _truth(rt: Runtime, uid: str) -> ProfileFeatures:
    """The person's features rebuilt from the store alone (a cache of its own)."""
    return features_for("acme", uid, rt.events, MemoryFeatureCache(), rt.identity, BERLIN, NOW)


def _click(n: int, person: int, hours: int = 0) -> CanonicalEvent:
    return make_event(
        n, person=person, event_type=EventType.CLICKED, at=T0 + timedelta(days=25, hours=hours)
    )


def test_warm_up_fills_the_cache_with_each_persons_rebuild(settings: Settings) -> None:
    with open_runtime(settings) as rt:
        _load(rt)
        people = [_uid(rt, p) for p in range(5)]
        assert rt.features.get_many("acme", people) == {}
        results = {r.tenant: r for r in rt.warm_features()}
        assert results["acme"].profiles == results["acme"].cached == 5
        assert results["acme"].events == 60
        cached = rt.features.get_many("acme", people)
        assert set(cached) == set(people)
        for uid in people:
            _same(cached[uid], _truth(rt, uid))
        # a second warm-up writes nothing: every person is cached already
        again = {r.tenant: r for r in rt.warm_features()}
        assert (again["acme"].profiles, again["acme"].cached) == (5, 0)


def test_a_batch_stored_before_the_read_and_folded_after_it_is_not_counted_twice(
    settings: Settings,
) -> None:
    """The pipeline stores a batch, the warm-up reads the store (the batch included), and only
    then does the batch's fold run: without the ingest tracking the fold would add the batch
    to a profile that already holds it."""
    with open_runtime(settings) as rt:
        _load(rt)
        uid0, uid1 = _uid(rt, 0), _uid(rt, 1)
        clicks_before = _truth(rt, uid0).count("clicked")
        event = _click(500, person=0)
        resolution = rt.identity.resolve_events("acme", [event])
        table = events_to_arrow([event], resolution.universal_ids)
        with rt.features.ingesting("acme", resolution.universal_ids):
            rt.events.insert_events(table)
            result = warm_tenant(rt.events, rt.features, rt.identity, "acme", BERLIN, NOW)
            assert (result.profiles, result.cached) == (5, 4)  # person 0 is left out
            rt.pipeline._update_features("acme", table)  # the batch's fold, after the read
        assert uid0 not in rt.features.get_many("acme", [uid0])
        truth = _truth(rt, uid0)
        assert truth.count("clicked") == clicks_before + 1
        # its next read rebuilds it from the store: the click counts once
        _same(rt.timing.person_profile("acme", uid0, BERLIN, NOW), truth)
        _same(rt.features.get_many("acme", [uid1])[uid1], _truth(rt, uid1))


def test_a_batch_stored_after_the_read_is_not_lost(settings: Settings) -> None:
    """The warm-up reads, then a whole batch is stored and folded (the person is not cached
    yet, so the fold skips it), then the warm-up writes: the person must not be cached without
    the batch."""
    with open_runtime(settings) as rt:
        _load(rt)
        uid2 = _uid(rt, 2)
        ctx = FoldContext(BERLIN, NOW, ActivityParams())
        with rt.features.rebuilding("acme") as rebuild:
            arrays = rt.events.engagement_arrays("acme")
            rt.pipeline.process([_click(600, person=2)])  # stored and folded meanwhile
            profiles, table = fold_arrays(arrays, rt.identity.alias_map("acme"), ctx)
            assert rebuild.put_table(profiles, table) == 4
        assert rt.features.get_many("acme", [uid2]) == {}
        rebuilt = rt.timing.person_profile("acme", uid2, BERLIN, NOW)
        _same(rebuilt, _truth(rt, uid2))
        assert rebuilt.count("clicked") == _truth(rt, uid2).count("clicked")


def test_invalidated_cleared_or_cached_meanwhile_is_not_overwritten(settings: Settings) -> None:
    with open_runtime(settings) as rt:
        _load(rt)
        people = [_uid(rt, p) for p in range(5)]
        fresh = {uid: _truth(rt, uid) for uid in people}
        marker = _truth(rt, people[1])
        marker.counts[0] = 999  # a value cached by someone else while the rebuild read
        with rt.features.rebuilding("acme") as rebuild:
            rt.features.invalidate("acme", [people[0]])  # e.g. an identity merge
            rt.features.put_many("acme", {people[1]: marker})
            assert rebuild.put_many(fresh) == 3
        cached = rt.features.get_many("acme", people)
        assert set(cached) == set(people[1:])
        assert cached[people[1]].counts[0] == 999
        rt.features.clear_tenant("acme")
        with rt.features.rebuilding("acme") as rebuild:
            rt.features.clear_tenant("acme")  # e.g. an erasure or a tenant deletion
            assert rebuild.put_many(fresh) == 0
        assert rt.features.get_many("acme", people) == {}
        # once no rebuild runs, nothing is tracked any more
        with rt.features.rebuilding("acme") as rebuild:
            assert rebuild.put_many(fresh) == 5
        assert isinstance(rt.features, MemoryFeatureCache)
        assert rt.features._watches == {}
        assert rt.features._in_flight == {}


def test_warm_up_racing_the_pipeline_never_miscounts(settings: Settings) -> None:
    """Many warm-ups from an empty cache while another thread ingests clicks: every profile
    the cache holds at the end equals the person's rebuild from the store."""
    with open_runtime(settings) as rt:
        _load(rt)
        people = [_uid(rt, p) for p in range(5)]
        stop = threading.Event()
        errors: list[BaseException] = []

        def ingest() -> None:
            try:
                n = 1_000
                while not stop.is_set() and n < 1_200:
                    rt.pipeline.process([_click(n, person=n % 5, hours=(n - 1_000) // 5)])
                    n += 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        worker = threading.Thread(target=ingest)
        worker.start()
        try:
            for _ in range(15):
                rt.features.clear_tenant("acme")
                warm_tenant(rt.events, rt.features, rt.identity, "acme", BERLIN, NOW)
        finally:
            stop.set()
            worker.join()
        assert errors == []
        cached = rt.features.get_many("acme", people)
        assert cached  # the last warm-up cached the people no batch touched after its read
        for uid, features in cached.items():
            _same(features, _truth(rt, uid))


@pytest.mark.redis
def test_a_shared_cache_is_not_warmed_by_a_process(settings: Settings) -> None:
    """Redis keeps its entries across restarts and other processes fold into it: a starting
    server leaves it alone (the bulk rebuild is `sendflowr features rebuild`)."""
    shared = settings.model_copy(
        update={"feature_cache_url": "redis://127.0.0.1:6379/0", "feature_cache_prefix": "sf:w:"}
    )
    with open_runtime(shared) as rt:
        assert rt.features.in_process is False
        assert rt.warm_features() == []


def test_overlapping_rebuilds_end_independently(settings: Settings) -> None:
    """Rebuilds of one tenant that overlap (decisions for several people at once) and end in
    any order: each keeps tracking until it ends itself, whatever the others hold."""
    with open_runtime(settings) as rt:
        _load(rt)
        cache = rt.features
        assert isinstance(cache, MemoryFeatureCache)
        uid = _uid(rt, 3)
        features = _truth(rt, uid)
        first, second = cache.rebuilding("acme"), cache.rebuilding("acme")
        rebuild = first.__enter__()
        second.__enter__()  # both track nothing yet: equal content, still two rebuilds
        second.__exit__(None, None, None)  # the later one ends first
        with cache.ingesting("acme", [uid]):
            pass  # a batch of the person, after the first rebuild's read
        assert rebuild.put_many({uid: features}) == 0
        first.__exit__(None, None, None)
        assert cache._watches == {}
        assert cache.get_many("acme", [uid]) == {}


def test_sendflowr_run_warms_in_a_background_thread(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from sendflowr.cli import _warm_in_background

    with open_runtime(settings) as rt:
        _load(rt)
        uid = _uid(rt, 4)
        with caplog.at_level("INFO", logger="sendflowr"):
            _warm_in_background(rt)
            warming = [t for t in threading.enumerate() if t.name == "feature-warmup"]
            assert warming
            assert all(t.daemon for t in warming)
            for t in warming:
                t.join(60)
        _same(rt.features.get_many("acme", [uid])[uid], _truth(rt, uid))
        assert "feature cache warmed for tenant acme: 5 of 5 people from 60 events" in caplog.text

        def broken() -> list[WarmResult]:
            raise RuntimeError("store gone")

        rt.warm_features = broken  # type: ignore[method-assign]
        with caplog.at_level("ERROR", logger="sendflowr"):
            _warm_in_background(rt)
            for t in [t for t in threading.enumerate() if t.name == "feature-warmup"]:
                t.join(60)
        assert "feature cache warm-up failed" in caplog.text
