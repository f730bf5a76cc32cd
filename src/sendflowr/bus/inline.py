"""Embedded bus: runs the pipeline synchronously, so accepted means stored."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sendflowr.bus.base import Bus
from sendflowr.events import CanonicalEvent
from sendflowr.pipeline import IngestResult, Pipeline
from sendflowr.storage.health import BackendHealth


class InlineBus(Bus):
    backend = "inline"

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        # Feature updates read-modify-write; one batch at a time keeps them exact.
        self._lock = threading.Lock()

    def publish(self, events: Sequence[CanonicalEvent], source: str) -> IngestResult:
        with self._lock:
            return self.pipeline.process(events, source)

    def publish_payloads(self, payloads: Sequence[Mapping[str, Any]], source: str) -> IngestResult:
        with self._lock:
            return self.pipeline.process_payloads(source, payloads)

    def health(self) -> BackendHealth:
        return BackendHealth("bus", self.backend, "ok")
