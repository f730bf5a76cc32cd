from __future__ import annotations

import uuid

import pytest

from sendflowr.ids import ordered_ids


def test_ids_are_valid_v7_uuids_in_creation_order() -> None:
    ids = ordered_ids(5000, now_ms=1_700_000_000_000)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(p.version == 7 and p.variant == uuid.RFC_4122 for p in parsed)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(int(p.hex[:12], 16) == 1_700_000_000_000 for p in parsed)
    later = ordered_ids(3, now_ms=1_700_000_000_001)
    assert max(ids) < min(later)


def test_two_batches_in_one_millisecond_do_not_collide() -> None:
    a = ordered_ids(2000, now_ms=5)
    b = ordered_ids(2000, now_ms=5)
    assert not set(a) & set(b)


def test_batch_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="at a time"):
        ordered_ids(-1)
