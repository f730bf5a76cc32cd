"""Klaviyo's rate limits: per (credential, operation), a burst per second and a steady rate
per minute, both sliding windows; over either, 429 with Retry-After."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sendflowr.connectors.klaviyo.constants import RateLimit

Operation = tuple[str, str]  # (method, path template)
BURST_WINDOW = 1.0
STEADY_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # of the window closest to its limit
    remaining: int
    reset_seconds: int  # until that window frees a slot
    retry_after: int | None  # set when refused

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if self.retry_after is not None:
            out["Retry-After"] = str(self.retry_after)
        return out


def _scaled(limit: int, scale: float) -> int:
    return max(1, round(limit * scale))


class _Windows:
    __slots__ = ("burst", "steady")

    def __init__(self) -> None:
        self.burst: deque[float] = deque()
        self.steady: deque[float] = deque()


class RateLimiter:
    """`scale` multiplies every limit (at least 1 a window); `enabled=False` never refuses but
    still reports the limits in headers."""

    def __init__(
        self,
        limits: Mapping[Operation, RateLimit],
        clock: Callable[[], float],
        enabled: bool = True,
        scale: float = 1.0,
    ) -> None:
        self._limits = {
            op: (_scaled(lim.burst_per_second, scale), _scaled(lim.steady_per_minute, scale))
            for op, lim in limits.items()
        }
        self._clock = clock
        self.enabled = enabled
        self._windows: dict[tuple[str, Operation], _Windows] = {}

    def limits(self, op: Operation) -> tuple[int, int] | None:
        """(burst per second, steady per minute) after scaling; None if unlimited."""
        return self._limits.get(op)

    def hit(self, credential: str, op: Operation) -> Decision | None:
        """Count one request; None for an operation without a published limit."""
        limits = self._limits.get(op)
        if limits is None:
            return None
        burst, steady = limits
        if not self.enabled:
            return Decision(True, steady, steady, 0, None)
        now = self._clock()
        w = self._windows.get((credential, op))
        if w is None:
            w = self._windows[(credential, op)] = _Windows()
        while w.burst and w.burst[0] <= now - BURST_WINDOW:
            w.burst.popleft()
        while w.steady and w.steady[0] <= now - STEADY_WINDOW:
            w.steady.popleft()
        burst_full = len(w.burst) >= burst
        steady_full = len(w.steady) >= steady
        if burst_full or steady_full:
            waits = []
            if burst_full:
                waits.append(w.burst[0] + BURST_WINDOW - now)
            if steady_full:
                waits.append(w.steady[0] + STEADY_WINDOW - now)
            retry = max(1, math.ceil(max(waits)))
            limit = burst if burst_full and not steady_full else steady
            return Decision(False, limit, 0, retry, retry)
        w.burst.append(now)
        w.steady.append(now)
        burst_left, steady_left = burst - len(w.burst), steady - len(w.steady)
        if burst_left < steady_left:
            reset = math.ceil(w.burst[0] + BURST_WINDOW - now)
            return Decision(True, burst, burst_left, max(0, reset), None)
        reset = math.ceil(w.steady[0] + STEADY_WINDOW - now)
        return Decision(True, steady, steady_left, max(0, reset), None)
