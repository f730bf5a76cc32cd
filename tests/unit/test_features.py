"""Per-person timing features (the feature cache's content: fold, local time, serialisation,
incremental == bulk) and email hashing. The cache backends' contract is
tests/contract/test_feature_cache.py."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from sendflowr.identity.hashing import hash_email, normalise_email
from sendflowr.storage.events.base import EngagementArrays
from sendflowr.storage.features.rebuild import fold_arrays, resolve_aliases
from sendflowr.timing.activity import (
    BIN_MINUTES,
    BINS,
    NEVER,
    ActivityParams,
    ActivityProfile,
    ActivityTable,
)
from sendflowr.timing.activity import (
    SERIALISED_BYTES as ACTIVITY_BYTES,
)
from sendflowr.timing.features import (
    COUNTED_TYPES,
    SERIALISED_BYTES,
    BatchColumns,
    FoldContext,
    ProfileFeatures,
    apply_batch,
    features_from_events,
    type_codes,
    type_indexes,
    utc_offsets,
    zone_tag,
)

KEY = b"test-hash-key-0123456789abcdef"
MONDAY = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
UTC_ZONE = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")
NOW = int((MONDAY + timedelta(days=400)).timestamp())


def _ms(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _batch(rows: list[tuple[str, str, datetime, bool]]) -> BatchColumns:
    """rows: (profile, event type, occurred at, is machine open)."""
    profiles = sorted({r[0] for r in rows})
    index = {p: i for i, p in enumerate(profiles)}
    return BatchColumns(
        profile_index=np.array([index[r[0]] for r in rows], np.int64),
        profiles=profiles,
        type_index=type_indexes([r[1] for r in rows]),
        occurred_ms=np.array([_ms(r[2]) for r in rows], np.int64),
        is_machine_open=np.array([r[3] for r in rows], np.bool_),
    )


def _at(hours: float) -> datetime:
    return MONDAY + timedelta(hours=hours)


def _ctx(zone: ZoneInfo = UTC_ZONE, now: int = NOW) -> FoldContext:
    return FoldContext(zone, now, ActivityParams())


def _fold(
    rows: list[tuple[str, str, datetime, bool]], zone: ZoneInfo = UTC_ZONE
) -> dict[str, ProfileFeatures]:
    updated, dropped = apply_batch({}, _batch(rows), _ctx(zone))
    assert dropped == []
    return updated


def _aged(p: ProfileFeatures, now: int) -> ActivityProfile:
    """The profile's decayed values as of `now` (what the engine reads)."""
    t = p.activity.table()
    factor = t.aged(now, ActivityParams().half_life_s)
    t.bins *= factor[:, None].astype(np.float32)
    t.evidence *= factor
    t.active_days *= factor
    t.last_update[:] = now
    return t.row(0)


def _assert_same(a: ProfileFeatures, b: ProfileFeatures, rtol: float = 1e-5) -> None:
    np.testing.assert_array_equal(a.counts, b.counts)
    assert (a.first_seen_ms, a.zone_tag) == (b.first_seen_ms, b.zone_tag)
    x, y = _aged(a, NOW), _aged(b, NOW)
    np.testing.assert_allclose(x.bins, y.bins, rtol=rtol, atol=1e-6 * max(float(x.bins.max()), 1))
    assert x.evidence == pytest.approx(y.evidence, rel=rtol)
    assert x.active_days == pytest.approx(y.active_days, rel=rtol)
    assert (x.last_engagement, x.last_day, x.machine_opens) == (
        y.last_engagement,
        y.last_day,
        y.machine_opens,
    )


# --- UTC offsets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone", ["America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "UTC", "Europe/Dublin"]
)
def test_utc_offsets_match_zoneinfo_across_dst(zone: str) -> None:
    tz = ZoneInfo(zone)
    rng = np.random.default_rng(3)
    start = int(datetime(2023, 1, 1, tzinfo=UTC).timestamp())
    utc = rng.integers(start, start + 2 * 365 * 86_400, 3_000)
    # and every minute around this zone's transitions, where the quarter-hour probing matters
    days = np.arange(start, start + 2 * 365 * 86_400, 86_400)
    offs = np.array([datetime.fromtimestamp(int(d), tz).utcoffset() for d in days])
    for i in np.flatnonzero(offs[1:] != offs[:-1]):
        utc = np.concatenate([utc, days[i] + 60 * np.arange(1_440)])
    expected = [datetime.fromtimestamp(int(t), tz).utcoffset() for t in utc]
    got = utc_offsets(utc.astype(np.int64), tz)
    assert [timedelta(seconds=int(x)) for x in got] == expected


def test_utc_offsets_of_nothing_and_of_centuries() -> None:
    assert utc_offsets(np.zeros(0, np.int64), NEW_YORK).tolist() == []
    far = np.array([0, 4_000_000_000 * 2], np.int64)  # 1970 and 2223: the slow exact path
    expected = [datetime.fromtimestamp(int(t), NEW_YORK).utcoffset() for t in far]
    assert [timedelta(seconds=int(x)) for x in utc_offsets(far, NEW_YORK)] == expected


# --- the fold -----------------------------------------------------------------------------------


def test_counts_by_type_and_engagements() -> None:
    rows = [
        ("a", "received", _at(1), False),
        ("a", "opened", _at(2), False),
        ("a", "opened", _at(3), False),
        ("a", "clicked", _at(3), False),
        ("a", "bounced", _at(4), False),
        ("b", "ordered", _at(5), False),
        ("b", "unsubscribed", _at(6), False),
        ("b", "spam_complaint", _at(7), False),
        ("b", "site_visit", _at(8), False),
        ("b", "product_view", _at(9), False),
    ]
    out = _fold(rows)
    a, b = out["a"], out["b"]
    assert {t: a.count(t) for t in COUNTED_TYPES if a.count(t)} == {
        "received": 1,
        "opened": 2,
        "clicked": 1,
        "bounced": 1,
    }
    assert {t: b.count(t) for t in COUNTED_TYPES if b.count(t)} == {
        "ordered": 1,
        "unsubscribed": 1,
        "spam_complaint": 1,
        "site_visit": 1,
        "product_view": 1,
    }
    assert a.counts.dtype == np.uint32
    assert (a.engagements, b.engagements) == (3, 3)
    assert a.first_seen_ms == _ms(_at(1))
    assert a.last_engagement_ms == _ms(_at(3))


def test_machine_opens_are_counted_and_excluded_from_the_curve() -> None:
    rows = [
        ("p", "opened", _at(20), True),
        ("p", "opened", _at(20.1), True),
        ("p", "opened", _at(30), False),
        ("p", "clicked", _at(5), False),
    ]
    f = _fold(rows)["p"]
    assert f.count("opened") == 3
    assert f.machine_opens_excluded == 2
    assert f.engagements == 2
    bins = f.activity.bins
    assert bins[20 * 4] == 0.0  # Monday 20:00 has only the machine opens
    assert bins[30 * 4] > 0.0
    assert bins[5 * 4] > bins[30 * 4]  # a click weighs more than an open
    assert np.count_nonzero(bins) == 2
    assert f.last_engagement_ms == _ms(_at(30))  # the machine opens are not engagement


def test_only_non_engagement_leaves_the_curve_empty() -> None:
    f = _fold([("p", "received", _at(1), False)])["p"]
    assert f.last_engagement_ms == 0
    assert f.activity.last_engagement == NEVER
    assert f.first_seen_ms == _ms(_at(1))
    assert float(f.activity.bins.sum()) == 0.0
    assert f.engagements == 0


def test_the_curve_is_in_the_tenants_local_time() -> None:
    # Monday 2024-07-01 13:00 UTC is 09:00 in New York (EDT, UTC-4); in January (EST) 14:00 UTC
    summer = datetime(2024, 7, 1, 13, 0, tzinfo=UTC)
    winter = datetime(2024, 1, 8, 14, 0, tzinfo=UTC)
    for at in (summer, winter):
        f = _fold([("p", "opened", at, False)], NEW_YORK)["p"]
        assert np.flatnonzero(f.activity.bins).tolist() == [9 * 60 // BIN_MINUTES]
        assert f.zone_tag == zone_tag(NEW_YORK)
    utc = _fold([("p", "opened", summer, False)])["p"]
    assert np.flatnonzero(utc.activity.bins).tolist() == [13 * 60 // BIN_MINUTES]


def test_incremental_batches_equal_one_bulk_fold() -> None:
    rng = np.random.default_rng(11)
    people = [f"p{i}" for i in range(40)]
    kinds = ["opened", "clicked", "received", "ordered", "site_visit", "bounced"]
    rows = [
        (
            people[int(rng.integers(40))],
            kinds[int(rng.integers(len(kinds)))],
            _at(float(h)),
            bool(rng.random() < 0.2),
        )
        for h in np.sort(rng.uniform(0, 24 * 300, 3_000))
    ]
    bulk = _fold(rows, NEW_YORK)
    cache: dict[str, ProfileFeatures] = {}
    for lo in range(0, len(rows), 250):  # in time order, as a stream delivers them
        chunk = rows[lo : lo + 250]
        now = int(chunk[-1][2].timestamp())
        updated, dropped = apply_batch(cache, _batch(chunk), _ctx(NEW_YORK, now))
        assert dropped == []
        cache.update(updated)
    assert set(cache) == set(bulk)
    for uid in bulk:
        _assert_same(cache[uid], bulk[uid])


def test_an_out_of_order_engagement_drops_the_profile_for_a_rebuild() -> None:
    first, _ = apply_batch({}, _batch([("p", "opened", _at(10), False)]), _ctx())
    late = _batch([("p", "clicked", _at(5), False), ("q", "opened", _at(1), False)])
    updated, dropped = apply_batch(first, late, _ctx())
    assert dropped == ["p"]
    assert set(updated) == {"q"}
    # a delivery too (the exposure state machine is ordered); a machine open or a bounce may
    # come late: nothing depends on their order
    _, dropped = apply_batch(first, _batch([("p", "received", _at(5), False)]), _ctx())
    assert dropped == ["p"]
    batch = _batch([("p", "bounced", _at(5), False), ("p", "opened", _at(6), True)])
    ok, none = apply_batch(first, batch, _ctx())
    assert none == []
    assert (ok["p"].count("bounced"), ok["p"].machine_opens_excluded) == (1, 1)


def test_a_profile_kept_in_another_zone_is_dropped() -> None:
    first, _ = apply_batch({}, _batch([("p", "opened", _at(10), False)]), _ctx(NEW_YORK))
    _, dropped = apply_batch(first, _batch([("p", "opened", _at(20), False)]), _ctx())
    assert dropped == ["p"]


def test_features_from_events_sorts_and_matches_the_batch_fold() -> None:
    rows = [("p", "opened", _at(h), h % 3 == 0) for h in (9, 3, 40, 1, 27)]
    direct = features_from_events(
        [r[1] for r in rows], [_ms(r[2]) for r in rows], [r[3] for r in rows], _ctx()
    )
    _assert_same(direct, _fold(sorted(rows, key=lambda r: r[2]))["p"], rtol=1e-12)


def test_type_indexes() -> None:
    assert type_indexes(["received", "clicked", "product_view"]).tolist() == [0, 2, 8]
    assert type_indexes([]).tolist() == []
    with pytest.raises(KeyError):
        type_indexes(["delivered"])
    assert type_codes(["clicked", "delivered"]).tolist() == [2, -1]


# --- serialisation ----------------------------------------------------------------------------


def _busy_features() -> ProfileFeatures:
    rows = [
        ("p", t, _at(h + 0.25 * q), False)
        for h in range(24 * 21)
        for q in range(4)
        for t in ("clicked", "opened")
    ]
    rows += [("p", "opened", _at(3), True), ("p", "product_view", _at(7.5), False)]
    return _fold(rows, NEW_YORK)["p"]


def test_serialised_size_is_under_2kb() -> None:
    f = _busy_features()
    assert np.count_nonzero(f.activity.bins) == BINS  # every bin in use
    raw = f.to_bytes()
    assert len(raw) == SERIALISED_BYTES == 16 + 9 * 4 + ACTIVITY_BYTES
    assert len(raw) <= 2_048
    assert len(ProfileFeatures().to_bytes()) == len(raw)


def test_round_trip_within_quantisation() -> None:
    f = _busy_features()
    back = ProfileFeatures.from_bytes(f.to_bytes())
    assert back.counts.dtype == np.uint32
    np.testing.assert_array_equal(back.counts, f.counts)
    assert (back.first_seen_ms, back.zone_tag) == (f.first_seen_ms, f.zone_tag)
    assert back.machine_opens_excluded == f.machine_opens_excluded == 1
    assert back.last_engagement_ms == f.last_engagement_ms
    assert back.engagements == f.engagements
    a, b = back.activity, f.activity
    top = float(b.bins.max())
    assert np.abs(a.bins - b.bins).max() <= top / 65_535  # half a step, plus float32 rounding
    assert a.last_update == b.last_update
    assert a.evidence == pytest.approx(b.evidence, rel=1e-6)  # stored as float32
    assert a.active_days == pytest.approx(b.active_days, rel=1e-6)
    assert int(np.argmax(a.bins)) == int(np.argmax(b.bins))


def test_deserialised_features_can_be_updated() -> None:
    back = ProfileFeatures.from_bytes(_busy_features().to_bytes())
    later = _at(24 * 22)
    updated, dropped = apply_batch(
        {"p": back}, _batch([("p", "clicked", later, False)]), _ctx(NEW_YORK)
    )
    assert dropped == []
    assert updated["p"].count("clicked") == back.count("clicked") + 1
    assert updated["p"].last_engagement_ms == _ms(later)


def test_from_bytes_rejects_another_format_or_size() -> None:
    raw = bytearray(ProfileFeatures().to_bytes())
    raw[0] = 1
    with pytest.raises(ValueError, match="feature format version 1 is not 2"):
        ProfileFeatures.from_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"bytes, not {SERIALISED_BYTES}"):
        ProfileFeatures.from_bytes(ProfileFeatures().to_bytes()[:-2])


# --- the bulk fold (the cache port's contract: tests/contract/test_feature_cache.py) ---


def test_fold_arrays_follows_merges_and_equals_per_person_rebuilds() -> None:
    # "old" was merged into "mid", which was merged into "root": all three are one person
    aliases = {"old": "mid", "mid": "root"}
    assert resolve_aliases(aliases, "old") == "root"
    rows = [
        ("old", "opened", _at(1), False),
        ("root", "clicked", _at(2), False),
        ("mid", "opened", _at(3), True),
        ("solo", "delivered", _at(4), False),
        ("solo", "opened", _at(5), False),
    ]
    uids = ["old", "root", "mid", "solo"]
    types = ["opened", "clicked", "delivered"]
    arrays = EngagementArrays(
        uids,
        np.array([uids.index(r[0]) for r in rows], np.int64),
        np.array([_ms(r[2]) for r in rows], np.int64),
        types,
        np.array([types.index(r[1]) for r in rows], np.int64),
        np.array([r[3] for r in rows], np.bool_),
    )
    profiles, table = fold_arrays(arrays, aliases, _ctx(NEW_YORK))
    assert sorted(profiles) == ["root", "solo"]
    person = table.row(profiles.index("root"))
    assert (person.count("opened"), person.count("clicked"), person.engagements) == (2, 1, 2)
    alone = features_from_events(
        ["opened", "clicked", "opened"],
        [_ms(_at(1)), _ms(_at(2)), _ms(_at(3))],
        [False, False, True],
        _ctx(NEW_YORK),
    )
    assert person.to_bytes() == alone.to_bytes()
    assert table.row(profiles.index("solo")).count("opened") == 1  # "delivered" is not counted


def test_activity_table_rows_are_what_the_engine_reads() -> None:
    f = _fold([("p", "opened", _at(9), False)])["p"]
    t: ActivityTable = f.activity.table()
    assert t.evidence[0] == f.activity.evidence > 0


# --- identity: hashing ------------------------------------------------------------------------


def test_hash_email_normalises() -> None:
    expected = hmac.new(KEY, b"alice@example.com", hashlib.sha256).hexdigest()
    assert hash_email(KEY, "alice@example.com") == expected
    assert hash_email(KEY, "  Alice@Example.COM\t\n") == expected
    assert normalise_email(" Alice@Example.COM ") == "alice@example.com"
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
    assert hash_email(b"another-key", "alice@example.com") != expected
    assert hash_email(KEY, "bob@example.com") != expected


@pytest.mark.parametrize(
    "email",
    [
        "",
        "   ",
        "alice",
        "@example.com",
        "alice@",
        "alice@localhost",
        "al ice@example.com",
        "alice@exa mple.com",
    ],
)
def test_hash_email_rejects_non_addresses(email: str) -> None:
    with pytest.raises(ValueError, match="not an email address: "):
        hash_email(KEY, email)


def test_hash_email_rejects_over_long_addresses() -> None:
    with pytest.raises(ValueError, match="at most 254 characters"):
        hash_email(KEY, "a" * 243 + "@example.com")  # 255 characters
    assert len(hash_email(KEY, "a" * 242 + "@example.com")) == 64  # 254 is fine


def test_an_unflagged_open_within_seconds_of_delivery_is_a_machine_open() -> None:
    rows = [
        ("p", "received", _at(20), False),
        ("p", "opened", _at(20) + timedelta(seconds=2), False),  # fetched on arrival
        ("p", "received", _at(44), False),
        ("p", "opened", _at(44) + timedelta(seconds=30), False),  # a person, quick
        ("p", "opened", _at(50), False),
    ]
    f = _fold(rows)["p"]
    assert f.machine_opens_excluded == 1
    assert f.engagements == 2
    assert f.activity.bins[20 * 4] == 0.0
    assert f.activity.bins[44 * 4] > 0.0
    assert f.activity.bins[50 * 4] > 0.0


def test_an_open_seconds_after_a_delivery_of_the_previous_batch_is_a_machine_open() -> None:
    ctx = _ctx()
    first, dropped = apply_batch({}, _batch([("p", "received", _at(20), False)]), ctx)
    assert dropped == []
    later = _batch([("p", "opened", _at(20) + timedelta(seconds=1), False)])
    second, dropped = apply_batch(first, later, ctx)
    assert dropped == []
    assert second["p"].machine_opens_excluded == 1
    assert second["p"].engagements == 0
    assert not second["p"].activity.bins.any()


def test_engagement_arrays_in_order_are_the_same_whatever_order_they_came_in() -> None:
    """Two reads of the same events (dictionaries and rows in any order) put in order are
    equal: ids and types sorted, events by person, time, type and flag."""
    rng = np.random.default_rng(3)
    ids, types = ["sf_b", "sf_a", "sf_c"], ["opened", "clicked", "received"]
    n = 200
    uid = rng.integers(0, 3, n)
    kind = rng.integers(0, 3, n)
    ms = rng.integers(0, 20, n) * 1_000  # many same-second ties
    machine = rng.random(n) < 0.3
    a = EngagementArrays(ids, uid, ms, types, kind, machine)
    # the same events, both dictionaries re-coded and the rows shuffled
    id_perm, type_perm, rows = np.array([2, 0, 1]), np.array([1, 2, 0]), rng.permutation(n)
    b = EngagementArrays(
        [ids[i] for i in np.argsort(id_perm)],
        id_perm[uid][rows],
        ms[rows],
        [types[i] for i in np.argsort(type_perm)],
        type_perm[kind][rows],
        machine[rows],
    )
    x, y = a.in_order(), b.in_order()
    assert x.universal_ids == y.universal_ids == ["sf_a", "sf_b", "sf_c"]
    assert x.event_types == y.event_types == ["clicked", "opened", "received"]
    for name in ("uid_code", "utc_ms", "type_code", "is_machine_open"):
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)
    # the same events as before, person by person
    got = sorted(
        zip(
            [x.universal_ids[c] for c in x.uid_code],
            x.utc_ms.tolist(),
            [x.event_types[c] for c in x.type_code],
            x.is_machine_open.tolist(),
            strict=True,
        )
    )
    want = sorted(
        zip(
            [ids[c] for c in uid],
            ms.tolist(),
            [types[c] for c in kind],
            machine.tolist(),
            strict=True,
        )
    )
    assert got == want
    keys = list(zip(x.uid_code.tolist(), x.utc_ms.tolist(), strict=True))
    assert keys == sorted(keys)
