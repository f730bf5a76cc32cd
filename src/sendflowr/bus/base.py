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

    @property
    def publishes_decisions(self) -> bool:
        """Whether publish_decisions goes anywhere: callers skip building the rows if not."""
        return False

    def publish_decisions(self, tenant: str, decisions: Sequence[Mapping[str, Any]]) -> None:
        """Hand timing decisions (their JSON API form, one mapping each) on to downstream
        consumers: the Kafka bus's timing-decisions topic. Never fails or delays a decision:
        a decision is durable in the explanation store before this is called. The inline bus
        has no one to tell (it keeps the last few when asked to, for tests)."""
        return None

    @abc.abstractmethod
    def health(self) -> BackendHealth: ...

    def close(self) -> None:
        return None
