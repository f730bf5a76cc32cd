"""Retry policy for Klaviyo calls: jittered exponential backoff, bounded twice (tenacity).

What is retried is decided by the caller's `is_retryable` (the client retries 5xx, 429,
timeouts, connection errors and unreadable 2xx bodies; never another 4xx). A 429's Retry-After
replaces the backoff for that wait. Two bounds: `max_attempts` in all, and `max_total_wait`
seconds of sleeping: a wait that would cross it stops instead, so a call never hangs on a
server that keeps failing or asks for a Retry-After longer than the budget.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_random_exponential


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    max_total_wait: float = 120.0  # seconds of sleeping between attempts, at most
    initial_backoff: float = 0.5  # full-jitter exponential: uniform(0, initial * 2**n)
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_total_wait < 0 or self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("waits must not be negative")


class _StopAfterTotalWait(stop_base):
    """Stop when the next sleep would take the total slept past the budget."""

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return retry_state.idle_for + retry_state.upcoming_sleep > self.budget


class _WaitRetryAfterOrBackoff(wait_base):
    def __init__(
        self, policy: RetryPolicy, retry_after_of: Callable[[BaseException], float | None]
    ) -> None:
        self._backoff = wait_random_exponential(
            multiplier=policy.initial_backoff, max=policy.max_backoff
        )
        self._retry_after_of = retry_after_of

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        retry_after = self._retry_after_of(exc) if exc is not None else None
        if retry_after is not None:
            # A little jitter so callers released by the same pause do not arrive together.
            return retry_after + random.uniform(0, min(1.0, 0.1 * retry_after))
        return float(self._backoff(retry_state))


def retrying(
    policy: RetryPolicy,
    *,
    is_retryable: Callable[[BaseException], bool],
    retry_after_of: Callable[[BaseException], float | None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """An AsyncRetrying that re-raises the last error once the policy gives up."""
    return AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts) | _StopAfterTotalWait(policy.max_total_wait),
        wait=_WaitRetryAfterOrBackoff(policy, retry_after_of),
        retry=retry_if_exception(is_retryable),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
