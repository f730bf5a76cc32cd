"""Choose the bus backend from its URL."""

from __future__ import annotations

from sendflowr.bus.base import Bus
from sendflowr.pipeline import Pipeline
from sendflowr.settings import BusURL


def open_bus(url: BusURL, pipeline: Pipeline) -> Bus:
    match url.kind:
        case "inline":
            from sendflowr.bus.inline import InlineBus

            return InlineBus(pipeline)
        case "kafka":
            raise NotImplementedError(
                "SENDFLOWR_BUS_URL: the kafka:// bus is not implemented yet (use 'inline')"
            )
