"""The identity port: a batch of events -> one universal id per event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sendflowr.events import CanonicalEvent
from sendflowr.identity.store import BatchResolution


class IdentityResolver(Protocol):
    def resolve_events(self, tenant: str, events: Sequence[CanonicalEvent]) -> BatchResolution:
        """One universal id per event, in order, plus the merges the batch caused."""
        ...

    def aliases(self, tenant: str, universal_id: str) -> list[str]:
        """The universal ids whose stored events belong to this person (itself first)."""
        ...
