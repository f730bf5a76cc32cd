"""Batch decisions (`decide_many`, the path of POST /timing/decide/batch) read people's features
from the feature cache: misses are rebuilt from the store in one query and put back, a profile
kept in another zone is rebuilt, strangers and people without history get the audience and the
prior. On chDB + SQLite with the memory cache.

What must hold: the decisions, their explanations' evidence and machine opens are exactly what
the engine gives on profiles folded from every stored event at the decision's instant (the
batch path before the cache: the tenant's history read and folded per batch), cold cache or
warm, and the cached profiles are the single-decision path's (`features_for`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from sendflowr import decisions
from sendflowr.decisions import (
    AUDIENCE_DAYS,
    HISTORY_TYPES,
    batch_features,
    decide_many,
    fold_history,
)
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.identifiers import EMAIL, Identifier
from sendflowr.people import features_for
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.features.memory import MemoryFeatureCache
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing import engine
from sendflowr.timing.activity import ActivityTable, summed
from sendflowr.timing.engine import BatchDecisions, choose, score_batch
from sendflowr.timing.features import ProfileFeatures, zone_tag
from sendflowr.timing.window import Window
from tests.conftest import open_runtime
from tests.contract.test_feature_cache import _same
from tests.factories import email_hash

ZONE = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 3, 20, 9, 30, tzinfo=UTC)
PEOPLE = 24  # with history; person PEOPLE is known (an identifier) but never engaged


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    with open_runtime(settings.model_copy(update={"executor": False})) as runtime:
        runtime.metadata.ensure_tenant(Tenant("acme", "Acme", ZONE.key))
        runtime.timing.clock = lambda: NOW
        yield runtime


def _event(n: int, person: int, kind: EventType, at: datetime, machine: bool = False) -> Any:
    return CanonicalEvent(
        tenant="acme",
        esp="klaviyo",
        esp_event_id=f"evt-{n}",
        event_type=kind,
        occurred_at=at,
        identifiers=Identifiers(email_hash=email_hash(person)),
        is_machine_open=machine,
    )


def _load(rt: Runtime) -> list[str]:
    """People with deliveries, opens (some machine), clicks and orders around a habitual hour
    over the last 50 days, every event at its own second; one person with a bounce only."""
    rng = np.random.default_rng(7)
    kinds = [EventType.RECEIVED, EventType.OPENED, EventType.CLICKED, EventType.ORDERED]
    events, n = [], 0
    for p in range(PEOPLE):
        hour = int(rng.integers(6, 22))
        for i in range(int(rng.integers(4, 30))):
            day = int(rng.integers(1, 50))
            at = NOW - timedelta(days=day) + timedelta(hours=hour - 9, seconds=n)
            kind = kinds[i % 4] if p % 3 else kinds[1 + i % 3]  # a third have no deliveries
            events.append(_event(n, p, kind, at, machine=kind == EventType.OPENED and i % 5 == 1))
            n += 1
    events.append(_event(n, PEOPLE, EventType.BOUNCED, NOW - timedelta(days=3)))
    rt.pipeline.process(events)
    uids = []
    for p in range(PEOPLE + 1):
        uid = rt.identity.owner("acme", Identifier(EMAIL, email_hash(p)))
        assert uid is not None
        uids.append(uid)
    return uids


def _window() -> Window:
    start = NOW + timedelta(hours=2, seconds=17)
    return Window(start, start + timedelta(hours=30))


def _reference(
    rt: Runtime, uids: list[str], known: list[bool]
) -> tuple[BatchDecisions, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The batch path before the feature cache: the tenant's history since AUDIENCE_DAYS read
    in one query and folded at the decision's instant."""
    now = int(NOW.timestamp())
    since = NOW - timedelta(days=AUDIENCE_DAYS)
    h_uids, h_utc, h_types, h_machine = rt.events.engagement_history("acme", HISTORY_TYPES, since)
    index_of = {u: i for i, (u, k) in enumerate(zip(uids, known, strict=True)) if k}
    rows = np.array([index_of.get(u, -1) for u in h_uids], np.int64)
    keep = np.flatnonzero(rows >= 0)
    people = ActivityTable.empty(len(uids))
    fold_history(
        people,
        rows[keep],
        np.asarray(h_utc, np.int64)[keep],
        [h_types[i] for i in keep.tolist()],
        np.asarray(h_machine, np.bool_)[keep],
        ZONE,
        now,
        rt.timing.params.activity,
    )
    arg = np.where(people.evidence > 0, np.arange(len(uids)), -1)
    w = _window()
    scores = score_batch(
        people,
        arg,
        rt.timing.audience("acme", ZONE, now),
        rt.timing._prior,
        int(w.start.timestamp()),
        int(w.end.timestamp()),
        ZONE,
        now,
        rt.timing.params,
    )
    return choose(scores, 300, rt.timing.params), people.machine_opens, people.evidence


def _assert_same(a: BatchDecisions, b: BatchDecisions) -> None:
    for name in ("target", "trigger", "confidence", "alternatives", "level", "weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.alternative_scores, b.alternative_scores)


def _recipients(uids: list[str]) -> tuple[list[str], list[bool]]:
    strangers = [f"sf_stranger{i}" for i in range(5)]
    every = [strangers[0], *uids[:10], strangers[1], *uids[10:], *strangers[2:]]
    return every, [not u.startswith("sf_stranger") for u in every]


def test_cold_and_warm_cache_decide_as_the_history_fold(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small blocks and chunks: several chunks, on threads, each scored in several blocks
    monkeypatch.setattr(engine, "SCORE_BLOCK", 4)
    monkeypatch.setattr(decisions, "SCORE_BLOCK", 4)
    monkeypatch.setattr(decisions, "DECIDE_CHUNK", 8)
    uids = _load(rt)
    every, known = _recipients(uids)
    assert rt.features.get_many("acme", uids) == {}
    expected, machine, evidence = _reference(rt, every, known)
    assert (evidence > 0).sum() == PEOPLE  # the data exercise history ...
    assert machine.sum() > 0  # ... and machine opens
    cold = decide_many(rt.timing, "acme", every, known, ZONE, _window(), 300)
    _assert_same(cold.decisions, expected)
    # the misses were rebuilt in one query and put back: the single path's profiles
    cached = rt.features.get_many("acme", uids)
    assert set(cached) == set(uids)
    now = int(NOW.timestamp())
    for uid in uids:
        truth = features_for("acme", uid, rt.events, MemoryFeatureCache(), rt.identity, ZONE, now)
        _same(cached[uid], truth)
    warm = decide_many(rt.timing, "acme", every, known, ZONE, _window(), 300)
    _assert_same(warm.decisions, expected)
    feats = batch_features(rt.timing, "acme", every, known, ZONE, now)
    np.testing.assert_array_equal(feats.machine_opens, machine)
    np.testing.assert_array_equal(feats.evidence, evidence)
    # the explanation rows hold the same evidence and machine opens
    for i in (1, 5, 11, len(every) - 1):
        e = rt.events.get_explanation("acme", warm.explanation_refs[i])
        assert e is not None
        assert e.evidence == {"evidence": float(evidence[i]), "known_person": known[i]}
        assert e.machine_opens_excluded == machine[i]
        assert e.target_minute_utc == datetime.fromtimestamp(int(expected.target[i]), UTC)


def test_a_profile_kept_in_another_zone_is_rebuilt_not_misread(rt: Runtime) -> None:
    uids = _load(rt)
    every, known = _recipients(uids)
    expected, _, _ = _reference(rt, every, known)
    wrong = ProfileFeatures(zone_tag=zone_tag(ZoneInfo("UTC")))
    rt.features.put_many("acme", {uids[3]: wrong})
    got = decide_many(rt.timing, "acme", every, known, ZONE, _window(), 300)
    _assert_same(got.decisions, expected)
    assert rt.features.get_many("acme", [uids[3]])[uids[3]].zone_tag == zone_tag(ZONE)


def test_strangers_and_people_without_history_get_the_audience_row(rt: Runtime) -> None:
    uids = _load(rt)
    every, known = _recipients(uids)
    now = int(NOW.timestamp())
    feats = batch_features(rt.timing, "acme", every, known, ZONE, now)
    no_history = np.array([not k for k in known]) | (np.array(every) == uids[PEOPLE])
    assert (feats.rows[no_history] == -1).all()
    assert (feats.rows[~no_history] >= 0).all()
    assert len(set(feats.rows[~no_history].tolist())) == PEOPLE
    assert (feats.evidence[no_history] == 0).all()
    # the known person without engagement was rebuilt (a bounce counted) and cached
    assert rt.features.get_many("acme", [uids[PEOPLE]])[uids[PEOPLE]].count("bounced") == 1
    record = decide_many(rt.timing, "acme", every, known, ZONE, _window(), 300)
    levels = record.decisions.level[no_history]
    assert (levels == levels[0]).all()
    assert levels[0] != 0  # audience or global, never personal


def test_the_audience_is_the_sum_of_the_history_fold(rt: Runtime) -> None:
    """The tenant's audience (one columnar read folded as the bulk rebuild folds) is the sum
    of every stored id's history folded at the decision's instant, deliveries and machine
    opens included: what the row read and `fold_history` gave before it."""
    _load(rt)
    now = int(NOW.timestamp())
    since = NOW - timedelta(days=AUDIENCE_DAYS)
    h_uids, h_utc, h_types, h_machine = rt.events.engagement_history("acme", HISTORY_TYPES, since)
    codes, rows = np.unique(np.asarray(h_uids), return_inverse=True)
    people = ActivityTable.empty(len(codes))
    fold_history(
        people,
        rows.astype(np.int64).ravel(),
        np.asarray(h_utc, np.int64),
        h_types,
        np.asarray(h_machine, np.bool_),
        ZONE,
        now,
        rt.timing.params.activity,
    )
    want = summed(people, now, rt.timing.params.activity.half_life_s)
    got = rt.timing.audience("acme", ZONE, now)
    assert want.evidence[0] > 0
    assert want.exposure.max() > 0  # deliveries were folded
    for name in ("bins", "evidence", "active_days", "prompted", "exposure", "lag"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6, err_msg=name
        )
    for name in ("machine_opens", "last_engagement", "last_update"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
