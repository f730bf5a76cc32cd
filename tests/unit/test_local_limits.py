"""api/local_limits.py answers as `limits`' moving window over its memory storage."""

from __future__ import annotations

import random
import time

import pytest
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from sendflowr.api.local_limits import LocalMovingWindow


@pytest.mark.parametrize("limit", ["3/10 seconds", "5/minute", "1/second"])
def test_same_answers_as_limits_memory_storage(monkeypatch: pytest.MonkeyPatch, limit: str) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    item = parse(limit)
    ours = LocalMovingWindow()
    storage = MemoryStorage()
    # Its sweeper thread (every 10 ms, on the patched clock) drops entries exactly one window
    # old, which a hit still counts: at the exact edges this test steps onto, `limits`' answer
    # would depend on whether the sweep ran first (a CI failure under load). Without it,
    # `limits` answers by its hit rule alone, as ours does.
    storage.timer.cancel()
    monkeypatch.setattr(storage, "_MemoryStorage__schedule_expiry", lambda: None)
    theirs = MovingWindowRateLimiter(storage)
    rng = random.Random(7)
    refused = 0
    for _ in range(2_000):
        clock[0] += rng.choice([0.0, 0.25, 0.5, 1.0, 3.0, 9.75, 10.0, 30.0])
        key = rng.choice(["a", "b"])
        got = ours.hit(item, "sendflowr-key", key)
        assert got == theirs.hit(item, "sendflowr-key", key)
        if not got:
            refused += 1
            mine = ours.get_window_stats(item, "sendflowr-key", key)
            ref = theirs.get_window_stats(item, "sendflowr-key", key)
            assert mine.remaining == ref.remaining
            # (a refusal by a hit exactly one window old leaves none inside the window: then
            # `limits` reports its oldest entry, which its sweeper would have dropped)
            if ref.remaining < item.amount:
                assert mine.reset_time == ref.reset_time
    assert refused > 100  # the limit was reached often, not only allowed


def test_cost_grows_with_nothing_but_the_hits_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    ours = LocalMovingWindow()
    item = parse("100/minute")
    for _ in range(1_000):
        clock[0] += 1.0
        assert ours.hit(item, "k")
    assert len(ours._hits[item.key_for("k")]) == 61  # the last minute's hits only
