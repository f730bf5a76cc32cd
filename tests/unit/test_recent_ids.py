"""The pipeline's bounded memory of recent event ids (no double counting of replays)."""

from __future__ import annotations

from sendflowr.pipeline import RecentEventIds


def test_new_ids_are_fresh_and_repeats_are_not() -> None:
    r = RecentEventIds(capacity=1000)
    assert r.first_seen(["a", "b", "a", "c"]).tolist() == [True, True, False, True]
    assert r.first_seen(["c", "d"]).tolist() == [False, True]


def test_memory_is_bounded_to_two_generations() -> None:
    r = RecentEventIds(capacity=100)
    batches = [[f"id-{b}-{i}" for i in range(10)] for b in range(80)]
    for batch in batches:
        assert r.first_seen(batch).all()
    # The newest ids are remembered ...
    assert not r.first_seen(batches[-1]).any()
    # ... the oldest, beyond two generations, are forgotten (the bulk rebuild is exact).
    assert r.first_seen(batches[0]).all()
