"""The feature-cache contract, run over every backend: memory (in-process numpy rows) and Redis
(the server on 127.0.0.1:6379, shared: each test uses its own key prefix and deletes only its
own keys, never FLUSHDB).

Through the port directly (round trip, misses, fold, invalidate, clear, put_table, concurrent
folds) and through the code above it (the pipeline's fold and merge invalidation, the bulk
rebuild, the timing service's miss path, erasure)."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.erasure import erase_person
from sendflowr.identity.identifiers import EMAIL, ESP_PREFIX, Identifier
from sendflowr.people import features_for
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.features.base import FeatureCache
from sendflowr.storage.features.memory import MemoryFeatureCache
from sendflowr.storage.features.rebuild import rebuild_tenant
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing.activity import ActivityParams, ActivityProfile
from sendflowr.timing.features import FeatureTable, ProfileFeatures, apply_batch, zone_tag
from tests.factories import T0, email_hash, make_event
from tests.integration.test_features_rebuild import BERLIN, NOW, _load, _uid
from tests.unit.test_features import NEW_YORK, _assert_same, _at, _batch, _ctx, _fold

REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class Backend:
    runtime: Runtime
    # Another handle on the same cache, as a second process would have (memory: the same one).
    other_handle: Callable[[], FeatureCache]

    @property
    def cache(self) -> FeatureCache:
        return self.runtime.features


def _sweep(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i : i + 1000])
    finally:
        client.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Backend]:
    prefix = f"sf:test:{uuid.uuid4().hex[:12]}:"
    if request.param == "redis":
        settings = settings.model_copy(
            update={"feature_cache_url": REDIS_URL, "feature_cache_prefix": prefix}
        )
    rt = Runtime.open(settings)
    rt.metadata.ensure_tenant(Tenant("acme", "Acme", "Europe/Berlin"))
    rt.metadata.ensure_tenant(Tenant("other", "Other", "UTC"))
    handles: list[FeatureCache] = []

    def other_handle() -> FeatureCache:
        if request.param == "memory":
            return rt.features
        from sendflowr.storage.features.redis import RedisFeatureCache

        handles.append(RedisFeatureCache(REDIS_URL, prefix=prefix))
        return handles[-1]

    try:
        yield Backend(rt, other_handle)
    finally:
        for h in handles:
            h.close()
        rt.events.drop_database()  # type: ignore[attr-defined]
        rt.close()
        if request.param == "redis":
            _sweep(prefix)


def _aged(f: ProfileFeatures, at: int) -> ActivityProfile:
    t = f.activity.table()
    factor = t.aged(at, ActivityParams().half_life_s)
    t.bins *= factor[:, None].astype(np.float32)
    t.evidence *= factor
    return t.row(0)


def _same(a: ProfileFeatures, b: ProfileFeatures) -> None:
    """Equal up to the serialised form's quantisation (a backend that stores bytes rounds the
    curve to 1/65,535 of its peak at each write; a few writes may add up)."""
    np.testing.assert_array_equal(a.counts, b.counts)
    assert (a.first_seen_ms, a.zone_tag, a.engagements) == (
        b.first_seen_ms,
        b.zone_tag,
        b.engagements,
    )
    assert (a.activity.last_engagement, a.activity.machine_opens) == (
        b.activity.last_engagement,
        b.activity.machine_opens,
    )
    at = max(a.activity.last_update, b.activity.last_update)
    x, y = _aged(a, at), _aged(b, at)
    np.testing.assert_allclose(x.bins, y.bins, rtol=0, atol=4 * float(y.bins.max()) / 65_535)
    assert x.evidence == pytest.approx(y.evidence, rel=1e-5)


def _profile(n: int) -> ProfileFeatures:
    return _fold([("p", "opened", _at(10 + n), False), ("p", "clicked", _at(11 + n), False)])["p"]


# --- the port ------------------------------------------------------------------------------------


def test_round_trip_and_missing_ids_are_absent(backend: Backend) -> None:
    cache = backend.cache
    a, b = _profile(0), _profile(5)
    cache.put_many("acme", {"a": a, "b": b})
    got = cache.get_many("acme", ["a", "b", "nobody", "a"])
    assert set(got) == {"a", "b"}
    assert got["a"].to_bytes() == a.to_bytes()
    assert got["b"].to_bytes() == b.to_bytes()
    assert cache.get_many("acme", []) == {}
    assert cache.get_many("other", ["a"]) == {}  # tenants never see each other's profiles
    assert cache.get_many("nobody", ["a"]) == {}
    assert cache.health().state == "ok"
    assert not cache.degraded()


def test_fold_updates_only_cached_profiles_and_drops_late_ones(backend: Backend) -> None:
    cache = backend.cache
    first = _fold([("p", "opened", _at(10), False), ("q", "opened", _at(10), False)])
    cache.put_many("acme", {"p": first["p"], "q": first["q"]})
    batch = _batch(
        [
            ("p", "clicked", _at(11), False),  # in order: folded
            ("q", "clicked", _at(9), False),  # older than q's last engagement: dropped
            ("r", "opened", _at(12), False),  # not cached: stays absent
        ]
    )
    assert cache.fold("acme", batch, _ctx()) == 1
    got = cache.get_many("acme", ["p", "q", "r"])
    assert set(got) == {"p"}
    assert got["p"].count("clicked") == 1
    _assert_same(
        got["p"], _fold([("p", "opened", _at(10), False), ("p", "clicked", _at(11), False)])["p"]
    )
    assert cache.fold("other", batch, _ctx()) == 0
    assert cache.get_many("other", ["p", "q", "r"]) == {}


def test_invalidate(backend: Backend) -> None:
    cache = backend.cache
    cache.put_many("acme", {u: _profile(i) for i, u in enumerate("abc")})
    cache.put_many("other", {"a": _profile(0)})
    cache.invalidate("acme", ["a", "c", "never-cached"])
    cache.invalidate("acme", [])
    assert set(cache.get_many("acme", ["a", "b", "c"])) == {"b"}
    assert set(cache.get_many("other", ["a"])) == {"a"}


def test_clear_tenant_clears_only_that_tenant(backend: Backend) -> None:
    cache = backend.cache
    cache.put_many("acme", {u: _profile(i) for i, u in enumerate("abc")})
    cache.put_many("other", {u: _profile(i) for i, u in enumerate("ab")})
    cache.clear_tenant("acme")
    assert cache.get_many("acme", ["a", "b", "c"]) == {}
    assert set(cache.get_many("other", ["a", "b"])) == {"a", "b"}
    cache.put_many("acme", {"a": _profile(1)})  # usable again after a clear
    assert set(cache.get_many("acme", ["a", "b"])) == {"a"}
    cache.clear_tenant("nobody")


def test_get_table_gathers_cached_rows_and_leaves_misses_empty(backend: Backend) -> None:
    cache = backend.cache
    cache.put_many("acme", {"u1": _profile(1), "u3": _profile(3)})
    cache.put_many("other", {"u2": _profile(2)})
    present, table = cache.get_table("acme", ["u3", "u2", "u1", "nobody"])
    assert present.tolist() == [True, False, True, False]
    found = cache.get_many("acme", ["u1", "u3"])
    _same(table.row(0), found["u3"])
    _same(table.row(2), found["u1"])
    for empty in (1, 3):
        assert table.row(empty).engagements == 0
        assert table.activity.evidence[empty] == 0
    none, _ = cache.get_table("nobody-tenant", ["u1"])
    assert none.tolist() == [False]


def test_put_many_one_by_one_past_any_initial_capacity(backend: Backend) -> None:
    """Profiles written a few at a time (as decisions fill misses) keep going past whatever a
    backend allocates up front (the memory backend grows its table: once wrote into the old one)."""
    cache = backend.cache
    one, two = _profile(1), _profile(2)
    ids = [f"u{i}" for i in range(3_000)]
    for i, uid in enumerate(ids):
        cache.put_many("acme", {uid: one if i % 2 else two})
    got = cache.get_many("acme", ids)
    assert len(got) == len(ids)
    assert got[ids[-1]].to_bytes() == one.to_bytes()
    assert got[ids[0]].to_bytes() == two.to_bytes()


def test_a_rebuild_writes_one_by_one_past_any_initial_capacity(backend: Backend) -> None:
    """The rebuild guard's writes (a single decision filling a miss) also go past whatever a
    backend allocates up front (the memory rebuild once wrote its 1,025th row into the table it
    had just outgrown: an IndexError on a tenant's 1,025th decided person)."""
    cache = backend.cache
    one, two = _profile(1), _profile(2)
    ids = [f"r{i}" for i in range(3_000)]
    for i, uid in enumerate(ids):
        with cache.rebuilding("acme") as rebuild:
            assert rebuild.put_many({uid: one if i % 2 else two}) == 1
    got = cache.get_many("acme", ids)
    assert len(got) == len(ids)
    assert got[ids[-1]].to_bytes() == one.to_bytes()
    assert got[ids[0]].to_bytes() == two.to_bytes()


def test_put_table_then_get_many_round_trips(backend: Backend) -> None:
    cache = backend.cache
    n = 2_500  # more than one chunk of a pipelined backend
    table = FeatureTable.empty(n, zone_tag(NEW_YORK))
    updated, _ = apply_batch(
        {}, _batch([("a", "opened", _at(1), False), ("c", "clicked", _at(2), False)]),
        _ctx(NEW_YORK),
    )  # fmt: skip
    table.set_row(0, updated["a"])
    table.set_row(2, updated["c"])
    cache.put_many("acme", {"x": updated["a"]})
    ids = ["a", "b", "c"] + [f"z{i}" for i in range(n - 3)]
    cache.put_table("acme", ids, table)
    got = cache.get_many("acme", [*ids, "x"])
    assert len(got) == n + 1
    assert got["a"].to_bytes() == updated["a"].to_bytes()
    assert got["c"].to_bytes() == updated["c"].to_bytes()
    assert got["b"].to_bytes() == ProfileFeatures(zone_tag=zone_tag(NEW_YORK)).to_bytes()
    assert got[ids[-1]].to_bytes() == got["b"].to_bytes()


def test_concurrent_folds_never_lose_an_update(backend: Backend) -> None:
    """Two writers (a second process's handle for Redis) fold disjoint clicks into the same
    profiles: each profile ends with every click counted, or absent (dropped on a conflict, to
    be rebuilt from the event store) - never present with a click missing."""
    people = [f"p{i}" for i in range(20)]
    start = _fold([(p, "opened", _at(0), False) for p in people])
    backend.cache.put_many("acme", start)
    caches = [backend.cache, backend.other_handle()]
    rounds = 15

    def work(w: int) -> None:
        for r in range(rounds):
            hour = 1 + 2 * r + w  # each writer's clicks are its own, in time order overall
            rows = [(p, "clicked", _at(hour), False) for p in people]
            caches[w].fold("acme", _batch(rows), _ctx())

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    got = backend.cache.get_many("acme", people)
    for p, f in got.items():
        clicks = f.count("clicked")
        # a present profile has a gapless prefix of the clicks: nothing lost in between
        assert f.count("opened") == 1, p
        assert f.activity.last_engagement == int(_at(clicks).timestamp()), (p, clicks)


# --- through the code above the port ---------------------------------------------------------


def test_bulk_rebuild_equals_per_person_rebuilds_and_the_incremental_fold(
    backend: Backend,
) -> None:
    runtime = backend.runtime
    _load(runtime)
    people = [_uid(runtime, p) for p in range(5)]
    # incremental: cache the people, then fold more events through the pipeline
    for uid in people:
        features_for("acme", uid, runtime.events, runtime.features, runtime.identity, BERLIN, NOW)
    later = [
        make_event(
            200 + i, person=i % 5, event_type=EventType.CLICKED, at=T0 + timedelta(days=20, hours=i)
        )
        for i in range(10)
    ]
    assert runtime.pipeline.process(later).profiles_updated == 5
    incremental = runtime.features.get_many("acme", people)
    assert set(incremental) == set(people)

    result = rebuild_tenant(runtime.events, runtime.features, runtime.identity, "acme", BERLIN, NOW)
    assert (result.events, result.profiles) == (70, 5)
    bulk = runtime.features.get_many("acme", people)
    for uid in people:
        alone = features_for(
            "acme", uid, runtime.events, MemoryFeatureCache(), runtime.identity, BERLIN, NOW
        )
        _same(bulk[uid], alone)
        _same(bulk[uid], incremental[uid])
        assert bulk[uid].zone_tag == zone_tag(BERLIN)
        assert bulk[uid].count("clicked") == alone.count("clicked") >= 2
    assert runtime.features.get_many("other", [_uid(runtime, 1, "other")]) == {}


def test_timing_service_reads_the_cache_and_fills_it_on_a_miss(backend: Backend) -> None:
    runtime = backend.runtime
    _load(runtime)
    uid = _uid(runtime, 3)
    assert runtime.timing.features is runtime.features
    assert runtime.features.get_many("acme", [uid]) == {}
    first = runtime.timing.person_profile("acme", uid, BERLIN, NOW)
    cached = runtime.features.get_many("acme", [uid])[uid]
    assert cached.to_bytes() == first.to_bytes()
    assert first.engagements > 0
    assert first.activity.evidence > 0
    # from the cache now: a marker count proves the store was not read again
    cached.counts[0] = 999
    runtime.features.put_many("acme", {uid: cached})
    assert runtime.timing.person_profile("acme", uid, BERLIN, NOW).count("received") == 999
    # a profile kept in another zone is rebuilt, not misread
    utc = runtime.timing.person_profile("acme", uid, ZoneInfo("UTC"), NOW)
    assert utc.zone_tag == zone_tag(ZoneInfo("UTC"))
    assert utc.count("received") == first.count("received")


def _event(n: int, at: datetime, **ids: str) -> CanonicalEvent:
    return CanonicalEvent(
        tenant="acme",
        esp="klaviyo",
        esp_event_id=f"fc-{n}",
        event_type=EventType.OPENED,
        occurred_at=at,
        identifiers=Identifiers(**ids),  # type: ignore[arg-type]
    )


def test_an_identity_merge_through_the_pipeline_invalidates_both_people(
    backend: Backend,
) -> None:
    rt = backend.runtime
    at = datetime.now(UTC) - timedelta(days=2)
    rt.pipeline.process([_event(1, at, email_hash=email_hash(1))])
    rt.pipeline.process([_event(2, at + timedelta(hours=1), esp_profile_id="K9")])
    by_email = rt.identity.owner("acme", Identifier(EMAIL, email_hash(1)))
    by_esp = rt.identity.owner("acme", Identifier(ESP_PREFIX + "klaviyo", "K9"))
    assert by_email
    assert by_esp
    assert by_email != by_esp
    for uid in (by_email, by_esp):
        assert rt.timing.person_profile("acme", uid, BERLIN, NOW).count("opened") == 1
    assert set(rt.features.get_many("acme", [by_email, by_esp])) == {by_email, by_esp}
    # one event with both identifiers: the two people are one now
    rt.pipeline.process([_event(3, at + timedelta(hours=2), email_hash=email_hash(1),
                                esp_profile_id="K9")])  # fmt: skip
    assert rt.features.get_many("acme", [by_email, by_esp]) == {}
    root = rt.identity.root("acme", by_email) or by_email
    assert rt.timing.person_profile("acme", root, BERLIN, NOW).count("opened") == 3


def test_erasure_removes_the_cached_features(backend: Backend) -> None:
    rt = backend.runtime
    at = datetime.now(UTC) - timedelta(days=1)
    rt.pipeline.process([_event(1, at, email_hash=email_hash(1)),
                         _event(2, at, email_hash=email_hash(2))])  # fmt: skip
    ann = rt.identity.owner("acme", Identifier(EMAIL, email_hash(1)))
    bob = rt.identity.owner("acme", Identifier(EMAIL, email_hash(2)))
    assert ann
    assert bob
    for uid in (ann, bob):
        rt.timing.person_profile("acme", uid, BERLIN, NOW)
    done = erase_person(
        "acme", ann, "test", identity=rt.identity, events=rt.events, features=rt.features,
        triggers=rt.triggers, metadata=rt.metadata, hash_key=rt.hash_key,
    )  # fmt: skip
    assert done.removed["features"] == 1
    assert set(rt.features.get_many("acme", [ann, bob])) == {bob}


def test_the_pipeline_folds_into_the_cache(backend: Backend) -> None:
    rt = backend.runtime
    at = datetime.now(UTC) - timedelta(days=1)
    rt.pipeline.process([_event(1, at, email_hash=email_hash(1))])
    uid = rt.identity.owner("acme", Identifier(EMAIL, email_hash(1)))
    assert uid
    zone = ZoneInfo("Europe/Berlin")  # the tenant's: the pipeline folds in it
    now = int(datetime.now(UTC).timestamp())
    assert rt.timing.person_profile("acme", uid, zone, now).count("opened") == 1
    result = rt.pipeline.process([_event(2, at + timedelta(hours=1), email_hash=email_hash(1))])
    assert result.profiles_updated == 1
    cached = rt.features.get_many("acme", [uid])[uid]
    assert cached.count("opened") == 2
    assert np.isclose(cached.activity.evidence, rt.timing.person_profile(
        "acme", uid, zone, now).activity.evidence)  # fmt: skip


# --- Redis only: what the generation key and an outage mean ------------------------------------


@pytest.mark.redis
def test_redis_entries_without_their_generation_are_misses() -> None:
    """A lost generation key (evicted, deleted) empties the tenant; it never brings back
    entries hidden by an earlier generation."""
    import redis

    from sendflowr.storage.features.redis import RedisFeatureCache

    prefix = f"sf:test:{uuid.uuid4().hex[:12]}:"
    cache = RedisFeatureCache(REDIS_URL, prefix=prefix)
    raw = redis.Redis.from_url(REDIS_URL)
    try:
        cache.put_many("acme", {"a": _profile(1)})
        hidden = raw.get(f"{prefix}acme:g")
        cache.put_many("acme", {"b": _profile(2)})
        assert set(cache.get_many("acme", ["a", "b"])) == {"a", "b"}
        raw.delete(f"{prefix}acme:g")  # lost
        assert cache.get_many("acme", ["a", "b"]) == {}
        cache.put_many("acme", {"c": _profile(3)})
        assert raw.get(f"{prefix}acme:g") not in (None, hidden)  # a fresh token, never reused
        assert set(cache.get_many("acme", ["a", "b", "c"])) == {"c"}
    finally:
        cache.close()
        raw.close()
        _sweep(prefix)


@pytest.mark.redis
def test_redis_down_is_misses_skipped_writes_and_degraded_health() -> None:
    """Nothing listens on the port: reads are misses, writes are skipped, nothing raises."""
    from sendflowr.storage.features.redis import RedisFeatureCache

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = RedisFeatureCache(f"redis://127.0.0.1:{port}/0", retry_seconds=30)
    try:
        assert not cache.degraded()
        assert cache.get_many("acme", ["a"]) == {}
        assert cache.degraded()
        cache.put_many("acme", {"a": _profile(0)})
        cache.put_table("acme", ["a"], FeatureTable.empty(1))
        assert cache.fold("acme", _batch([("a", "opened", _at(1), False)]), _ctx()) == 0
        cache.invalidate("acme", ["a"])
        cache.clear_tenant("other")
        health = cache.health()
        assert (health.port, health.state) == ("feature_cache", "degraded")
        assert "unreachable" in health.detail
        assert cache.degraded()
    finally:
        cache.close()
