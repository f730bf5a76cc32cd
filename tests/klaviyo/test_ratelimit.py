"""Client-side rate limiting: per-operation burst and steady limits, and server feedback."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from sendflowr.connectors.klaviyo.constants import RATE_LIMITS, RateLimit
from sendflowr.connectors.klaviyo.ratelimit import (
    DEFAULT_429_PAUSE_SECONDS,
    DEFAULT_LIMIT,
    MAX_PAUSE_SECONDS,
    RateLimiter,
    parse_retry_after,
    path_template,
)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/api/events", "/api/events"),
        ("/api/events/", "/api/events"),
        ("/api/events/4vRpBT", "/api/events/{id}"),
        ("/api/events?page%5Bcursor%5D=x", "/api/events"),
        ("/api/lists/Y6nRLr/profiles", "/api/lists/{id}/profiles"),
        ("/api/segments/abc/profiles", "/api/segments/{id}/profiles"),
        ("/api/webhooks/01HF7AYTK76RHR4F17G6DGTRGF", "/api/webhooks/{id}"),
        ("/api/webhook-topics", "/api/webhook-topics"),
        ("/api/event-bulk-create-jobs", "/api/event-bulk-create-jobs"),
        ("/api/templates/T1", "/api/templates/{id}"),  # unknown: id segment generalised
        ("/api/templates", "/api/templates"),
    ],
)
def test_path_template(path: str, template: str) -> None:
    assert path_template(path) == template


def test_limits_come_from_the_published_table_with_a_conservative_default() -> None:
    limiter = RateLimiter()
    assert limiter.limit_for("get", "/api/events") == RATE_LIMITS[("GET", "/api/events")]
    assert limiter.limit_for("GET", "/api/events/abc") == RateLimit(10, 150)
    assert limiter.limit_for("DELETE", "/api/webhooks/x") == RateLimit(1, 15)
    assert limiter.limit_for("GET", "/api/templates") == DEFAULT_LIMIT == RateLimit(1, 15)
    with pytest.raises(ValueError, match="scale"):
        RateLimiter(scale=0)


def test_burst_limit_spaces_requests() -> None:
    async def scenario() -> float:
        # 2/s burst, scaled x20: 2 per 50 ms, refilling one every 25 ms
        limiter = RateLimiter({("GET", "/x"): RateLimit(2, 10_000)}, scale=20)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(6):
            await limiter.acquire("GET", "/x")
        return loop.time() - t0

    elapsed = run(scenario())
    assert 0.08 <= elapsed < 1.0  # 4 beyond the burst x 25 ms


def test_steady_limit_applies_after_the_burst() -> None:
    async def scenario() -> float:
        # 3/min steady, scaled x600: 3 per 100 ms
        limiter = RateLimiter({("GET", "/x"): RateLimit(1000, 3)}, scale=600)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(5):
            await limiter.acquire("GET", "/x")
        return loop.time() - t0

    elapsed = run(scenario())
    assert 0.05 <= elapsed < 1.0  # 2 beyond the first 3 x 33 ms


def test_operations_do_not_share_limits() -> None:
    async def scenario() -> float:
        limiter = RateLimiter({("GET", "/a"): RateLimit(1, 1), ("GET", "/b"): RateLimit(1, 1)})
        t0 = time.monotonic()
        await limiter.acquire("GET", "/a")
        await limiter.acquire("GET", "/b")
        await limiter.acquire("POST", "/a")  # another operation (default limit)
        return time.monotonic() - t0

    assert run(scenario()) < 0.5


def test_a_429_pauses_the_whole_operation_for_every_caller() -> None:
    ft = FakeTime()

    async def scenario() -> list[float]:
        limiter = RateLimiter(scale=1000, clock=ft.clock, sleep=ft.sleep)
        assert limiter.observe("GET", "/api/events", 429, {"Retry-After": "4"}) == 4.0
        released: list[float] = []

        async def caller() -> None:
            await limiter.acquire("GET", "/api/events")
            released.append(ft.now)

        await asyncio.gather(*(caller() for _ in range(5)))
        # another operation is not paused
        assert limiter.paused_for("GET", "/api/metrics") == 0.0
        return released

    released = run(scenario())
    assert len(released) == 5
    assert all(t >= 4.0 for t in released)


def test_pauses_only_grow_and_are_capped() -> None:
    ft = FakeTime()
    limiter = RateLimiter(clock=ft.clock, sleep=ft.sleep)
    limiter.pause("GET", "/api/events", 10)
    limiter.pause("GET", "/api/events/x", 99)  # another operation
    limiter.pause("GET", "/api/events", 2)  # shorter: the longer pause stays
    assert limiter.paused_for("GET", "/api/events") == 10
    limiter.pause("GET", "/api/events", 10**9)
    assert limiter.paused_for("GET", "/api/events") == MAX_PAUSE_SECONDS
    ft.now = MAX_PAUSE_SECONDS + 1
    assert limiter.paused_for("GET", "/api/events") == 0


def test_ratelimit_headers_pause_when_nothing_remains() -> None:
    ft = FakeTime()
    limiter = RateLimiter(clock=ft.clock, sleep=ft.sleep)
    assert (
        limiter.observe(
            "GET", "/api/events", 200, {"RateLimit-Remaining": "3", "RateLimit-Reset": "9"}
        )
        is None
    )
    assert limiter.paused_for("GET", "/api/events") == 0
    limiter.observe("GET", "/api/events", 200, {"ratelimit-remaining": "0", "ratelimit-reset": "9"})
    assert limiter.paused_for("GET", "/api/events") == 9
    # list-valued (IETF draft) forms read their first number; garbage is ignored
    limiter.observe(
        "GET", "/api/flows", 200, {"RateLimit-Remaining": "0, 0;w=1", "RateLimit-Reset": "12;w=60"}
    )
    assert limiter.paused_for("GET", "/api/flows") == 12
    limiter.observe(
        "GET", "/api/metrics", 200, {"RateLimit-Remaining": "zero", "RateLimit-Reset": "x"}
    )
    assert limiter.paused_for("GET", "/api/metrics") == 0


def test_a_429_without_retry_after_still_pauses_briefly() -> None:
    ft = FakeTime()
    limiter = RateLimiter(clock=ft.clock, sleep=ft.sleep)
    assert limiter.observe("POST", "/api/events", 429, {}) is None
    assert limiter.paused_for("POST", "/api/events") == DEFAULT_429_PAUSE_SECONDS


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("1e9") == MAX_PAUSE_SECONDS
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1)


def test_sliding_windows_never_admit_more_than_the_limit_in_any_window() -> None:
    """A leaky bucket of a minute's requests admits nearly twice the limit in its first
    sliding minute; the client's windows must match the server's (with a margin)."""
    ft = FakeTime()

    async def scenario() -> list[float]:
        limiter = RateLimiter({("GET", "/x"): RateLimit(4, 10)}, clock=ft.clock, sleep=ft.sleep)
        sent: list[float] = []

        async def caller() -> None:
            for _ in range(10):
                await limiter.acquire("GET", "/x")
                sent.append(ft.now)

        await asyncio.gather(*(caller() for _ in range(3)))
        return sent

    sent = run(scenario())
    assert len(sent) == 30
    for t in sent:
        assert sum(1 for u in sent if t <= u < t + 60.0) <= 10  # the steady window
        assert sum(1 for u in sent if t <= u < t + 1.0) <= 4  # the burst window
    # The burst is used at the start, then the steady window's slots as they free.
    assert sent[:4] == [0.0] * 4
    assert max(sent[:10]) < 3.5
    assert 60.0 < sent[10] < 62.0
