"""The event-store port: canonical events and timing explanations (ClickHouse SQL)."""

from sendflowr.storage.events.base import EventStore, EventStoreError, StoredEvent
from sendflowr.storage.events.factory import open_event_store

__all__ = ["EventStore", "EventStoreError", "StoredEvent", "open_event_store"]
