"""Embedded bus: runs the pipeline synchronously, so accepted means stored."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from sendflowr.bus.base import Bus
from sendflowr.events import CanonicalEvent
from sendflowr.pipeline import IngestResult, Pipeline
from sendflowr.storage.health import BackendHealth


class InlineBus(Bus):
    backend = "inline"

    def __init__(self, pipeline: Pipeline, *, keep_decisions: int = 0) -> None:
        self.pipeline = pipeline
        # Feature updates read-modify-write; one batch at a time keeps them exact.
        self._lock = threading.Lock()
        # Nobody downstream to tell; with keep_decisions > 0 the last ones are kept (tests).
        self.decisions: deque[tuple[str, Mapping[str, Any]]] = deque(maxlen=keep_decisions)

    @property
    def publishes_decisions(self) -> bool:
        return bool(self.decisions.maxlen)

    def keep_decisions(self, count: int) -> None:
        """Keep the last `count` published decisions in `self.decisions` (0: none)."""
        self.decisions = deque(self.decisions, maxlen=count)

    def publish_decisions(self, tenant: str, decisions: Sequence[Mapping[str, Any]]) -> None:
        if self.decisions.maxlen:
            self.decisions.extend((tenant, d) for d in decisions)

    def publish(self, events: Sequence[CanonicalEvent], source: str) -> IngestResult:
        with self._lock:
            return self.pipeline.process(events, source)

    def publish_payloads(self, payloads: Sequence[Mapping[str, Any]], source: str) -> IngestResult:
        with self._lock:
            return self.pipeline.process_payloads(source, payloads)

    def health(self) -> BackendHealth:
        return BackendHealth("bus", self.backend, "ok")
