"""Event store on a ClickHouse server (clickhouse-connect over HTTP): the same migrations and
SQL as the embedded chDB store, which only differs in how a query reaches the engine."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from sendflowr.settings import EventStoreURL
from sendflowr.storage.events.base import EventStore, EventStoreError, _short


class ClickHouseEventStore(EventStore):
    backend = "clickhouse"

    def __init__(self, url: EventStoreURL, *, connect_timeout: float = 10) -> None:
        super().__init__(url.database)
        self.url = url
        where = f"{url.host}:{url.port}"  # never the password
        try:
            # No session id: the client is then safe to share between threads (each query
            # takes its own pooled HTTP connection), like the chDB session.
            self._client: Client = clickhouse_connect.get_client(
                host=url.host,
                port=url.port,
                username=url.username,
                password=url.password,
                secure=url.secure,
                connect_timeout=connect_timeout,
                autogenerate_session_id=False,
            )
        except Exception as exc:
            raise EventStoreError(f"cannot reach ClickHouse at {where}: {_short(exc)}") from exc
        self._closed = False

    def _rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        self._check_open()
        try:
            result = self._client.query(sql, parameters=dict(params or {}))
        except (ClickHouseError, OSError) as exc:
            raise EventStoreError(_short(exc)) from exc
        return [list(r) for r in result.result_rows]

    def _arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        self._check_open()
        try:
            table = self._client.query_arrow(sql, parameters=dict(params or {}), use_strings=True)
        except (ClickHouseError, OSError) as exc:
            raise EventStoreError(_short(exc)) from exc
        if not isinstance(table, pa.Table):
            raise EventStoreError(f"ClickHouse answered {type(table).__name__}, not Arrow")
        return table

    def _command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._check_open()
        try:
            self._client.command(sql, parameters=dict(params or {}))
        except (ClickHouseError, OSError) as exc:
            raise EventStoreError(_short(exc)) from exc

    def _insert_arrow(self, table: str, data: pa.Table) -> None:
        self._check_open()
        try:
            self._client.insert_arrow(table, data, database=self.database)
        except (ClickHouseError, OSError) as exc:
            raise EventStoreError(f"insert into {table} failed: {_short(exc)}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise EventStoreError("the event store is closed")

    def close(self) -> None:
        if not self._closed:
            self._close_explanations()
            self._closed = True
            self._client.close()

    def drop_database(self) -> None:
        """Tests only."""
        self._command(f"DROP DATABASE IF EXISTS `{self.database}`")
