"""The bus port: how accepted events reach the pipeline (inline, or Kafka at scale)."""

from sendflowr.bus.base import Bus
from sendflowr.bus.factory import open_bus

__all__ = ["Bus", "open_bus"]
