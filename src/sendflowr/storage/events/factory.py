"""Choose the event-store backend from its URL."""

from __future__ import annotations

from sendflowr.settings import EventStoreURL
from sendflowr.storage.events.base import EventStore


def open_event_store(url: EventStoreURL) -> EventStore:
    match url.kind:
        case "chdb":
            from sendflowr.storage.events.chdb_store import ChdbEventStore

            assert url.path is not None
            return ChdbEventStore(url.path, url.database)
        case "clickhouse":
            from sendflowr.storage.events.clickhouse_store import ClickHouseEventStore

            return ClickHouseEventStore(url)
