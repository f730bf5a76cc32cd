"""The bus interface."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

from sendflowr.events import CanonicalEvent
from sendflowr.pipeline import IngestResult
from sendflowr.storage.health import BackendHealth


class Bus(abc.ABC):
    backend: str = "?"

    @abc.abstractmethod
    def publish(self, events: Sequence[CanonicalEvent], source: str) -> IngestResult:
        """Hand validated events on; returns once they are durable (stored, or acknowledged by
        the broker)."""

    @abc.abstractmethod
    def publish_payloads(self, payloads: Sequence[Mapping[str, Any]], source: str) -> IngestResult:
        """Hand on canonical-event payloads still to be validated; bad ones are dead-lettered."""

    def publish_decisions(self, tenant: str, decisions: Sequence[Mapping[str, Any]]) -> None:
        """Hand timing decisions on to downstream consumers (the Kafka bus's timing-decisions
        topic); never fails or delays a decision. The inline bus has no one to tell."""
        return None

    @abc.abstractmethod
    def health(self) -> BackendHealth: ...

    def close(self) -> None:
        return None
