"""Client-side rate limiting per Klaviyo operation, plus the server's own feedback.

Klaviyo publishes two limits per operation (method + path template): a burst per second and a
steady rate per minute (`constants.RATE_LIMITS`, checked against the spec), counted over sliding
windows. Each operation keeps the times of its recent requests and a request waits until both
windows have room, so the client sends exactly what the limits allow: a full burst at the start,
then as fast as requests leave the window (over a long run, the steady rate). A leaky bucket
(aiolimiter) does not fit here: its bucket of a minute's requests refills while it is spent, so
its first sliding minute admits up to twice the steady limit and the server answers 429 at each
window's edge. Each window is kept a little longer than the server's (`WINDOW_MARGIN`): a
request is counted from when it leaves the client, the server counts it from when it arrives,
and varying latency must not let a request slip into a window the server still sees as full.
An operation we have no published limit for gets `DEFAULT_LIMIT` (1/s, 15/m: Klaviyo's lowest
tier).

The server has the last word:
- a 429 with `Retry-After` pauses the whole operation until then: every caller of that
  operation waits, not only the one that got the 429, so N concurrent workers do not each
  fire another request into the limit (no retry storm);
- `RateLimit-Remaining: 0` with `RateLimit-Reset: <seconds>` pauses it the same way before
  Klaviyo has to say no.

`scale` speeds the limiters up (tests, a local simulator): scale=10 allows ten times the
published rates. Pauses from server feedback are never scaled: they are what the server said.
`clock` and `sleep` are injectable so tests of pauses run in no real time.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from sendflowr.connectors.klaviyo.constants import MAX_PAGE_SIZE, RATE_LIMITS, RateLimit

DEFAULT_LIMIT: Final = RateLimit(burst_per_second=1, steady_per_minute=15)
# No server pause is honoured for longer than this (a garbage header must not stall a worker
# for a day); the retry policy's total-wait budget usually gives up far earlier.
MAX_PAUSE_SECONDS: Final = 600.0
# A 429 without Retry-After still pauses the operation briefly.
DEFAULT_429_PAUSE_SECONDS: Final = 1.0
# The server's windows (seconds) and how much longer the client keeps each (a share of it):
# 1 s longer a minute (the steady rate at 98.4% of the limit), 100 ms longer a second.
BURST_WINDOW_SECONDS: Final = 1.0
STEADY_WINDOW_SECONDS: Final = 60.0
BURST_MARGIN: Final = 0.1
STEADY_MARGIN: Final = 1 / 60

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_KNOWN_TEMPLATES: Final = tuple(
    sorted({path for _, path in RATE_LIMITS} | set(MAX_PAGE_SIZE), key=lambda p: p.count("{"))
)
_FIRST_NUMBER: Final = re.compile(r"\s*(-?\d+(?:\.\d+)?)")


def _matches(template: str, parts: list[str]) -> bool:
    t_parts = template.strip("/").split("/")
    return len(t_parts) == len(parts) and all(
        t == p or (t.startswith("{") and t.endswith("}"))
        for t, p in zip(t_parts, parts, strict=True)
    )


def path_template(path: str) -> str:
    """The operation's path template for a concrete path: /api/events/abc -> /api/events/{id}.

    Known templates are matched first (literal segments beat placeholders); an unknown path
    under /api/ has its third segment (the resource id by Klaviyo's convention) replaced.
    """
    path = path.split("?", 1)[0]
    if len(path) > 1:
        path = path.rstrip("/")
    parts = path.strip("/").split("/")
    for template in _KNOWN_TEMPLATES:  # fewest placeholders first
        if _matches(template, parts):
            return template
    if len(parts) >= 3 and parts[0] == "api":
        parts[2] = "{id}"
    return "/" + "/".join(parts)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent/garbage."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_PAUSE_SECONDS)


def _first_number(value: str | None) -> float | None:
    """The first number of a RateLimit-* header ("0", "0, 0;w=1" or "9;w=60")."""
    if value is None:
        return None
    match = _FIRST_NUMBER.match(value)
    if not match:
        return None
    number = float(match.group(1))
    return number if math.isfinite(number) else None


class SlidingWindow:
    """At most `limit` requests in any `seconds`: the send times of the recent ones."""

    __slots__ = ("_sent", "limit", "seconds")

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = max(1, limit)
        self.seconds = seconds
        self._sent: deque[float] = deque()

    def wait_for(self, now: float) -> float:
        """Seconds until a request may be sent (0: now)."""
        sent = self._sent
        while sent and sent[0] <= now - self.seconds:
            sent.popleft()
        return 0.0 if len(sent) < self.limit else sent[0] + self.seconds - now

    def record(self, now: float) -> None:
        self._sent.append(now)


@dataclass(slots=True)
class _Operation:
    limit: RateLimit
    burst: SlidingWindow
    steady: SlidingWindow
    paused_until: float = field(default=-math.inf)


class RateLimiter:
    """Burst and steady limiters per (method, path template), paused by server feedback."""

    def __init__(
        self,
        limits: Mapping[tuple[str, str], RateLimit] = RATE_LIMITS,
        *,
        default: RateLimit = DEFAULT_LIMIT,
        scale: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        self._limits = dict(limits)
        self._default = default
        self._scale = scale
        self._clock = clock
        self._sleep = sleep
        self._operations: dict[tuple[str, str], _Operation] = {}

    @staticmethod
    def operation(method: str, path: str) -> tuple[str, str]:
        return method.upper(), path_template(path)

    def limit_for(self, method: str, path: str) -> RateLimit:
        return self._limits.get(self.operation(method, path), self._default)

    def _op(self, method: str, path: str) -> _Operation:
        key = self.operation(method, path)
        op = self._operations.get(key)
        if op is None:
            limit = self._limits.get(key, self._default)
            op = _Operation(
                limit,
                SlidingWindow(
                    limit.burst_per_second,
                    BURST_WINDOW_SECONDS * (1 + BURST_MARGIN) / self._scale,
                ),
                SlidingWindow(
                    limit.steady_per_minute,
                    STEADY_WINDOW_SECONDS * (1 + STEADY_MARGIN) / self._scale,
                ),
            )
            self._operations[key] = op
        return op

    def paused_for(self, method: str, path: str) -> float:
        """Seconds the operation is still paused for (0 when it is not)."""
        op = self._operations.get(self.operation(method, path))
        return 0.0 if op is None else max(0.0, op.paused_until - self._clock())

    def pause(self, method: str, path: str, seconds: float) -> None:
        """Hold every caller of the operation for `seconds` (an existing longer pause stays)."""
        seconds = min(max(seconds, 0.0), MAX_PAUSE_SECONDS)
        op = self._op(method, path)
        op.paused_until = max(op.paused_until, self._clock() + seconds)

    async def acquire(self, method: str, path: str) -> None:
        """Wait until the operation may send one request."""
        op = self._op(method, path)
        while True:
            now = self._clock()
            delay = max(op.paused_until - now, op.steady.wait_for(now), op.burst.wait_for(now))
            if delay <= 0:
                # Both windows count it at once: no await between the check and the record.
                op.steady.record(now)
                op.burst.record(now)
                return
            await self._sleep(delay)

    def observe(
        self, method: str, path: str, status: int, headers: Mapping[str, str]
    ) -> float | None:
        """Apply a response's rate-limit feedback; returns Retry-After for a 429, else None."""
        headers = {k.lower(): v for k, v in headers.items()}
        remaining = _first_number(headers.get("ratelimit-remaining"))
        if remaining is not None and remaining <= 0:
            reset = _first_number(headers.get("ratelimit-reset"))
            if reset is not None and reset > 0:
                self.pause(method, path, reset)
        if status != 429:
            return None
        retry_after = parse_retry_after(headers.get("retry-after"))
        wait = DEFAULT_429_PAUSE_SECONDS if retry_after is None else retry_after
        self.pause(method, path, wait)
        return retry_after
