"""Choose the bus backend from its URL."""

from __future__ import annotations

from sendflowr.bus.base import Bus
from sendflowr.pipeline import Pipeline
from sendflowr.settings import BusURL, Settings


def open_bus(url: BusURL, pipeline: Pipeline, settings: Settings | None = None) -> Bus:
    """`settings` gives the kafka_* options (defaults when None)."""
    match url.kind:
        case "inline":
            from sendflowr.bus.inline import InlineBus

            return InlineBus(pipeline)
        case "kafka":
            # The pipeline runs in `sendflowr consumer`, not here: this process only produces.
            from sendflowr.bus.kafka import KafkaBus, KafkaOptions

            options = (
                KafkaOptions.from_settings(settings)
                if settings is not None
                else KafkaOptions(bootstrap=url.bootstrap)
            )
            return KafkaBus(options)
