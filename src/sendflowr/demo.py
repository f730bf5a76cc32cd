"""The demo brand's start date, and simulated events for the mock endpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

from sendflowr.events import CanonicalEvent
from sendflowr.pipeline import IngestResult
from sendflowr.runtime import Runtime
from sendflowr.simulate import config_for_event_count, simulate

BATCH = 10_000
Progress = Callable[[int, int], None]


def recent_start(now: datetime, days: int) -> datetime:
    """A Monday 00:00 UTC such that `days` of history end before `now` (events are never in
    the future, which the pipeline would rightly refuse)."""
    start = (now - timedelta(days=days + 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return start - timedelta(days=start.weekday())


def chunks(
    events: Sequence[CanonicalEvent], size: int = BATCH
) -> Iterator[Sequence[CanonicalEvent]]:
    for i in range(0, len(events), size):
        yield events[i : i + size]


def ingest(
    runtime: Runtime,
    events: Sequence[CanonicalEvent],
    source: str,
    progress: Progress | None = None,
) -> IngestResult:
    total = IngestResult()
    for chunk in chunks(events):
        total.merge(runtime.bus.publish(chunk, source=source))
        if progress is not None:
            progress(total.received, len(events))
    return total


def generate_events(
    runtime: Runtime, tenant: str, count: int, seed: int, now: datetime | None = None
) -> tuple[list[CanonicalEvent], int]:
    """`count` simulated events for `tenant` ending before now, and the number of profiles."""
    base = config_for_event_count(count, tenant=tenant, seed=seed)
    cfg = dataclasses.replace(
        base, start=recent_start(now or datetime.now(UTC), base.days), hash_key=runtime.hash_key
    )
    sim = simulate(cfg)
    return sim.events[:count], len(sim.profiles)
