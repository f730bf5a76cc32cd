"""Per-person features (apply_batch, hour of week, serialisation) and email hashing."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from sendflowr.identity.hashing import hash_email, normalise_email
from sendflowr.timing.features import (
    COUNTED_TYPES,
    HOURS_PER_WEEK,
    BatchColumns,
    ProfileFeatures,
    apply_batch,
    hour_of_week_utc,
    type_indexes,
)

KEY = b"test-hash-key-0123456789abcdef"
MONDAY = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday


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


# --- hour of week -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (MONDAY, 0),
        (MONDAY + timedelta(minutes=59, seconds=59, milliseconds=999), 0),
        (MONDAY + timedelta(hours=1), 1),
        (MONDAY + timedelta(days=2, hours=13, minutes=30), 61),  # Wednesday 13:30
        (datetime(2024, 1, 7, 23, 59, tzinfo=UTC), 167),  # Sunday
        (datetime(2024, 1, 8, tzinfo=UTC), 0),  # next Monday
        (datetime(1970, 1, 1, tzinfo=UTC), 72),  # a Thursday
        (datetime(1969, 12, 31, 23, 59, tzinfo=UTC), 71),
    ],
)
def test_hour_of_week_utc(at: datetime, expected: int) -> None:
    assert hour_of_week_utc(np.array([_ms(at)], np.int64)).tolist() == [expected]


def test_hour_of_week_matches_calendar() -> None:
    rng = np.random.default_rng(7)
    ms = rng.integers(
        _ms(datetime(2000, 1, 1, tzinfo=UTC)), _ms(datetime(2100, 1, 1, tzinfo=UTC)), 500
    )
    bins = hour_of_week_utc(ms)
    expected = []
    for value in ms.tolist():
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
        expected.append(at.weekday() * 24 + at.hour)
    assert bins.tolist() == expected
    assert bins.min() >= 0
    assert bins.max() < HOURS_PER_WEEK


# --- apply_batch ----------------------------------------------------------------------------


def test_counts_by_type() -> None:
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
    out = apply_batch({}, _batch(rows))
    assert set(out) == {"a", "b"}
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
    assert int(a.counts.sum()) == 5
    assert int(b.counts.sum()) == 5


def test_weights_by_type_in_the_histogram() -> None:
    rows = [
        ("p", "clicked", _at(10), False),
        ("p", "opened", _at(11), False),
        ("p", "ordered", _at(12), False),
        ("p", "site_visit", _at(13), False),
        ("p", "product_view", _at(14), False),
        ("p", "received", _at(15), False),
        ("p", "bounced", _at(16), False),
        ("p", "unsubscribed", _at(17), False),
        ("p", "spam_complaint", _at(18), False),
        ("p", "clicked", _at(10.5), False),  # same hour as the first click: adds up
    ]
    f = apply_batch({}, _batch(rows))["p"]
    expected = np.zeros(HOURS_PER_WEEK, np.float32)
    expected[10] = 4.0
    expected[11] = 1.0
    expected[12] = 2.0
    expected[13] = 0.5
    expected[14] = 0.5
    assert f.hour_of_week.dtype == np.float32
    np.testing.assert_array_equal(f.hour_of_week, expected)


def test_machine_opens_counted_but_not_in_histogram() -> None:
    rows = [
        ("p", "opened", _at(20), True),
        ("p", "opened", _at(20), True),
        ("p", "opened", _at(30), False),
        ("p", "clicked", _at(5), False),
    ]
    f = apply_batch({}, _batch(rows))["p"]
    assert f.count("opened") == 3
    assert f.machine_opens_excluded == 2
    assert f.hour_of_week[20] == 0.0
    assert f.hour_of_week[30] == 1.0
    assert f.hour_of_week[5] == 2.0
    assert float(f.hour_of_week.sum()) == 3.0
    # the latest event is a machine open: not engagement
    assert f.last_engagement_ms == _ms(_at(30))


def test_first_seen_and_last_engagement() -> None:
    rows = [
        ("p", "received", _at(1), False),
        ("p", "clicked", _at(5), False),
        ("p", "opened", _at(3), False),
        ("p", "received", _at(50), False),  # not engagement
        ("p", "opened", _at(60), True),  # machine open: not engagement
    ]
    f = apply_batch({}, _batch(rows))["p"]
    assert f.first_seen_ms == _ms(_at(1))
    assert f.last_engagement_ms == _ms(_at(5))


def test_only_non_engagement_leaves_last_engagement_unset() -> None:
    f = apply_batch({}, _batch([("p", "received", _at(1), False)]))["p"]
    assert f.last_engagement_ms == 0
    assert f.first_seen_ms == _ms(_at(1))
    assert float(f.hour_of_week.sum()) == 0.0


def test_batches_accumulate_into_current_features() -> None:
    first = apply_batch(
        {}, _batch([("p", "opened", _at(30), False), ("q", "clicked", _at(2), False)])
    )
    second = apply_batch(
        {"p": first["p"]},
        _batch([("p", "opened", _at(10), False), ("p", "opened", _at(40), True)]),
    )
    p = second["p"]
    assert set(second) == {"p"}
    assert p.count("opened") == 3
    assert p.machine_opens_excluded == 1
    assert p.hour_of_week[30] == 1.0
    assert p.hour_of_week[10] == 1.0
    assert p.first_seen_ms == _ms(_at(10))  # earlier than anything in the first batch
    assert p.last_engagement_ms == _ms(_at(30))  # the later open was a machine open


def test_type_indexes() -> None:
    assert type_indexes(["received", "clicked", "product_view"]).tolist() == [0, 2, 8]
    assert type_indexes([]).tolist() == []
    with pytest.raises(KeyError):
        type_indexes(["delivered"])


# --- serialisation ----------------------------------------------------------------------------


def _busy_features() -> ProfileFeatures:
    rows = [("p", t, _at(h), False) for h in range(HOURS_PER_WEEK) for t in ("clicked", "opened")]
    rows += [("p", "opened", _at(3), True), ("p", "product_view", _at(7.5), False)]
    return apply_batch({}, _batch(rows))["p"]


def test_serialised_size_is_under_2kb() -> None:
    raw = _busy_features().to_bytes()
    assert len(raw) < 2048
    assert len(ProfileFeatures().to_bytes()) == len(raw)


def test_round_trip_is_exact() -> None:
    f = _busy_features()
    f.hour_of_week[0] = np.float32(1 / 3)
    back = ProfileFeatures.from_bytes(f.to_bytes())
    assert back.counts.dtype == np.uint32
    assert back.hour_of_week.dtype == np.float32
    np.testing.assert_array_equal(back.counts, f.counts)
    np.testing.assert_array_equal(back.hour_of_week, f.hour_of_week)
    assert back.machine_opens_excluded == f.machine_opens_excluded == 1
    assert back.first_seen_ms == f.first_seen_ms == _ms(_at(0))
    assert back.last_engagement_ms == f.last_engagement_ms == _ms(_at(167))
    assert back.to_bytes() == f.to_bytes()


def test_deserialised_features_can_be_updated() -> None:
    back = ProfileFeatures.from_bytes(_busy_features().to_bytes())
    updated = apply_batch({"p": back}, _batch([("p", "clicked", _at(0), False)]))["p"]
    assert updated.count("clicked") == HOURS_PER_WEEK + 1
    assert updated.hour_of_week[0] == 5.0


def test_from_bytes_rejects_another_format_version() -> None:
    raw = bytearray(ProfileFeatures().to_bytes())
    raw[0] = 2
    with pytest.raises(ValueError, match="feature format version 2 is not 1"):
        ProfileFeatures.from_bytes(bytes(raw))


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
