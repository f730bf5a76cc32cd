"""The threads the signed webhook receivers run on, apart from the API's worker threads.

A webhook delivery is answered only once its events are durable: its thread normalises the
items, then waits for the group write that stores them with the deliveries arriving meanwhile
(sendflowr.intake, up to a linger plus the write). While the webhook receivers shared the
API's worker threads (`api_worker_threads`, 8), deliveries waiting for their write could hold
most of them, and decisions queued behind waits that use no CPU. Deliveries now take their
threads from their own allowance (`api_delivery_threads`, per event loop, set at start-up).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from sendflowr.settings import Settings

T = TypeVar("T")

_LIMITER: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar(
    "sendflowr_delivery_threads"
)


def set_delivery_threads(n: int) -> None:
    """Call from the event loop (the app's lifespan): the deliveries' allowance for it."""
    delivery_limiter().total_tokens = n


def delivery_limiter() -> anyio.CapacityLimiter:
    """This event loop's allowance for webhook deliveries (created on first use)."""
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(Settings.model_fields["api_delivery_threads"].default)
        _LIMITER.set(limiter)
        return limiter


async def run_delivery(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` on a worker thread from the deliveries' allowance."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=delivery_limiter())
