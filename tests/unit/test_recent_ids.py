"""The pipeline's bounded memory of recent event ids (no double counting of replays)."""

from __future__ import annotations

import random

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


def test_agrees_with_a_set_over_batches_with_repeats() -> None:
    """Repeats within a batch (the first counts, wherever it is) and across batches, in any
    order, over enough batches to merge the sorted chunks: the same answers as a set."""
    rng = random.Random(7)
    r = RecentEventIds(capacity=100_000)
    seen: set[str] = set()
    for _ in range(40):
        batch = [f"e{rng.randrange(3_000)}" for _ in range(rng.randrange(1, 300))]
        expected = []
        for event_id in batch:
            expected.append(event_id not in seen)
            seen.add(event_id)
        assert r.first_seen(batch).tolist() == expected
