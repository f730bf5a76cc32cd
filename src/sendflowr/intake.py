"""Keeping what an entry point accepted: its raw payloads in the archive, then its events
through the bus, both durable before the caller answers - with concurrent batches written
together (group commit, `sendflowr.grouping`).

Why: each write has a fixed cost that does not depend on its size - a chDB INSERT makes a new
part (about 15 ms of CPU for 100 events or 1,000), an archive file is a Parquet write and two
fsyncs, the identity graph takes a transaction. Webhook deliveries of 100 events each paid
them per delivery; under load the deliveries that arrive while one is being written now share
the next write, and (`SENDFLOWR_INTAKE_LINGER_MS`, 200) the next write waits until its oldest
delivery is that old, so a steady trickle is written a few deliveries at a time rather than
one by one. A lone delivery is written at once, as before.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sendflowr.archive.hook import keep_accepted
from sendflowr.events import CanonicalEvent
from sendflowr.grouping import GroupCommit

if TYPE_CHECKING:
    from sendflowr.runtime import Runtime

MAX_GROUP_EVENTS = 20_000  # events per group: bounds a group's memory and its write's latency


@dataclass(frozen=True, slots=True)
class Accepted:
    """One accepted batch of one tenant: its events and the raw payloads they came from
    (`payloads[i]` is the source of `events[i]`)."""

    tenant: str
    esp: str
    source: str  # metrics label and the bus's source
    kind: str  # the archive's kind of payload
    payloads: Sequence[str]
    events: Sequence[CanonicalEvent]
    received_at: datetime


class Intake:
    def __init__(self, runtime: Runtime, max_events: int = MAX_GROUP_EVENTS) -> None:
        self.runtime = runtime
        self.max_events = max_events
        self._groups: dict[str, GroupCommit[Accepted, None]] = {}
        self._lock = threading.Lock()

    def keep(self, batch: Accepted) -> None:
        """Archive the batch, then publish its events; returns once both are durable. Raises
        what the archive or the bus raised (the caller must not acknowledge the batch)."""
        if not batch.events:
            return
        with self._lock:
            group = self._groups.get(batch.source)
            if group is None:
                group = self._groups[batch.source] = GroupCommit(
                    self._write,
                    max_size=self.max_events,
                    size=lambda b: len(b.events),
                    linger_s=self.runtime.settings.intake_linger_ms / 1000,
                )
        group.submit(batch)

    def _write(self, batches: Sequence[Accepted]) -> list[None]:
        """One group, all of one source: one archive write per (tenant, esp, kind, day), then
        one publish of every event."""
        by_file: dict[tuple[str, str, str, str], list[Accepted]] = defaultdict(list)
        for b in batches:
            day = b.received_at.astimezone(UTC).date().isoformat()
            by_file[(b.tenant, b.esp, b.kind, day)].append(b)
        for (tenant, esp, kind, _day), members in by_file.items():
            keep_accepted(
                self.runtime,
                tenant=tenant,
                esp=esp,
                source=members[0].source,
                kind=kind,
                payloads=[p for b in members for p in b.payloads],
                event_ids=[e.event_id for b in members for e in b.events],
                received_at=[b.received_at for b in members for _ in b.payloads],
            )
        events = [e for b in batches for e in b.events]
        self.runtime.bus.publish(events, source=batches[0].source)
        return [None] * len(batches)
