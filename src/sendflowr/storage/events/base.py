"""The event-store interface and the SQL both ClickHouse backends share."""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa

from sendflowr.storage.events.migrations import MIGRATIONS, STATUS_TABLE, Migration
from sendflowr.storage.events.rows import explanations_to_arrow
from sendflowr.storage.health import BackendHealth
from sendflowr.timing.explanation import Explanation

_EVENT_COLUMNS = (
    "tenant", "universal_id", "occurred_at", "event_id", "esp", "esp_event_id", "event_type",
    "email_hash", "esp_profile_id", "phone", "external_ids", "anonymous_id", "campaign_id",
    "flow_id", "message_id", "is_machine_open", "properties", "schema_version",
)  # fmt: skip


class EventStoreError(RuntimeError):
    """The store could not do what was asked (an infrastructure fault, not bad input)."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str
    universal_id: str
    event_type: str
    occurred_at: datetime
    esp: str
    esp_event_id: str
    campaign_id: str
    flow_id: str
    message_id: str
    is_machine_open: bool
    properties: dict[str, Any]
    email_hash: str = ""
    esp_profile_id: str = ""
    phone: str = ""
    external_ids: dict[str, str] | None = None
    anonymous_id: str = ""


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    id: str
    applied_at: datetime


class EventStore(abc.ABC):
    """Canonical events and timing explanations, in ClickHouse SQL.

    Backends implement the three primitives (`_rows`, `_command`, `_insert_arrow`); every query
    is written once here so chDB and ClickHouse server run the same SQL. Queries dedup with FINAL:
    inserting an event twice leaves one row in every answer, whatever the background merges did.
    """

    backend: str = "?"

    def __init__(self, database: str) -> None:
        self.database = database
        self._migrate_lock = threading.Lock()

    # -- primitives -------------------------------------------------------------------------
    @abc.abstractmethod
    def _rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]: ...

    @abc.abstractmethod
    def _command(self, sql: str, params: Mapping[str, Any] | None = None) -> None: ...

    @abc.abstractmethod
    def _insert_arrow(self, table: str, data: pa.Table) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- migrations -------------------------------------------------------------------------
    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
        """Apply what has not run yet; returns the ids applied now (empty when up to date)."""
        with self._migrate_lock:
            self._command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            self._command(STATUS_TABLE.sql(self.database))
            done = {m.id for m in self.applied_migrations()}
            applied: list[str] = []
            for migration in sorted(migrations, key=lambda m: m.number):
                if migration.id in done:
                    continue
                for op in migration.operations:
                    self._command(op.sql(self.database))
                self._command(
                    f"INSERT INTO `{self.database}`.schema_migrations (id) VALUES ({{id:String}})",
                    {"id": migration.id},
                )
                applied.append(migration.id)
            return applied

    def applied_migrations(self) -> list[AppliedMigration]:
        try:
            rows = self._rows(
                f"SELECT id, toUnixTimestamp64Milli(applied_at) FROM "
                f"`{self.database}`.schema_migrations FINAL ORDER BY id"
            )
        except EventStoreError:
            return []
        return [AppliedMigration(r[0], _from_ms(r[1])) for r in rows]

    def pending_migrations(self) -> list[str]:
        done = {m.id for m in self.applied_migrations()}
        return [m.id for m in MIGRATIONS if m.id not in done]

    # -- events -----------------------------------------------------------------------------
    def insert_events(self, rows: pa.Table) -> int:
        """Write rows built by `rows.events_to_arrow`; durable when this returns."""
        if rows.num_rows:
            self._insert_arrow("email_events", rows)
        return int(rows.num_rows)

    def count_by_type(self, tenant: str) -> dict[str, int]:
        rows = self._rows(
            f"SELECT event_type, count() FROM `{self.database}`.email_events FINAL "
            "WHERE tenant = {tenant:String} GROUP BY event_type ORDER BY event_type",
            {"tenant": tenant},
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def count_events(self, tenant: str | None = None) -> int:
        where = "WHERE tenant = {tenant:String}" if tenant is not None else ""
        rows = self._rows(
            f"SELECT count() FROM `{self.database}`.email_events FINAL {where}",
            {"tenant": tenant} if tenant is not None else None,
        )
        return int(rows[0][0])

    def profile_events(
        self,
        tenant: str,
        universal_ids: str | Sequence[str],
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 10_000,
    ) -> list[StoredEvent]:
        """One person's events in time order; `universal_ids` is the person's alias set
        (a merged person's events stay stored under the ids they arrived with)."""
        uids = [universal_ids] if isinstance(universal_ids, str) else list(universal_ids)
        params: dict[str, Any] = {"tenant": tenant, "uids": uids, "limit": limit}
        cond = ""
        if since is not None:
            cond += " AND occurred_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
            params["since"] = _to_ms(since)
        if until is not None:
            cond += " AND occurred_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')"
            params["until"] = _to_ms(until)
        rows = self._rows(
            "SELECT toString(event_id), universal_id, event_type, "
            "toUnixTimestamp64Milli(occurred_at), esp, esp_event_id, campaign_id, flow_id, "
            "message_id, is_machine_open, properties, email_hash, esp_profile_id, phone, "
            "external_ids, anonymous_id "
            f"FROM `{self.database}`.email_events FINAL "
            "WHERE tenant = {tenant:String} AND universal_id IN {uids:Array(String)}"
            f"{cond} ORDER BY occurred_at, event_id LIMIT {{limit:UInt32}}",
            params,
        )
        return [
            StoredEvent(
                event_id=r[0],
                universal_id=r[1],
                event_type=r[2],
                occurred_at=_from_ms(r[3]),
                esp=r[4],
                esp_event_id=r[5],
                campaign_id=r[6],
                flow_id=r[7],
                message_id=r[8],
                is_machine_open=bool(r[9]),
                properties=orjson.loads(r[10]) if r[10] else {},
                email_hash=r[11],
                esp_profile_id=r[12],
                phone=r[13],
                external_ids=dict(r[14]) if r[14] else {},
                anonymous_id=r[15],
            )
            for r in rows
        ]

    def reassign_events(
        self, tenant: str, from_uid: str, to_uid: str, event_ids: Sequence[str]
    ) -> int:
        """Move events to another person (after an identity split). The copy is written
        before the original is deleted, so a crash in between loses nothing."""
        if not event_ids:
            return 0
        cols = [c for c in _EVENT_COLUMNS if c != "universal_id"]
        params = {"tenant": tenant, "from": from_uid, "to": to_uid, "ids": list(event_ids)}
        where = (
            "e.tenant = {tenant:String} AND e.universal_id = {from:String} "
            "AND e.event_id IN {ids:Array(UUID)}"
        )
        self._command(
            f"INSERT INTO `{self.database}`.email_events (universal_id, {', '.join(cols)}) "
            f"SELECT {{to:String}}, {', '.join('e.' + c for c in cols)} "
            f"FROM `{self.database}`.email_events AS e FINAL WHERE {where}",
            params,
        )
        self._command(
            f"DELETE FROM `{self.database}`.email_events WHERE {where.replace('e.', '')}",
            params,
        )
        return len(event_ids)

    def engagement_history(
        self, tenant: str, types: Sequence[str], since: datetime, limit: int = 2_000_000
    ) -> tuple[list[str], list[int], list[str], list[bool]]:
        """A tenant's engagement events since `since`, in one query (person, then time):
        universal ids, UTC seconds, event types, machine-open flags."""
        rows = self._rows(
            "SELECT universal_id, toUnixTimestamp(occurred_at), event_type, is_machine_open "
            f"FROM `{self.database}`.email_events FINAL "
            "WHERE tenant = {tenant:String} AND event_type IN {types:Array(String)} "
            "AND occurred_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
            "ORDER BY universal_id, occurred_at LIMIT {limit:UInt32}",
            {"tenant": tenant, "types": list(types), "since": _to_ms(since), "limit": limit},
        )
        return (
            [r[0] for r in rows],
            [int(r[1]) for r in rows],
            [r[2] for r in rows],
            [bool(r[3]) for r in rows],
        )

    # -- timing explanations ---------------------------------------------------------------
    def insert_explanations(self, rows: Sequence[Explanation]) -> int:
        if not rows:
            return 0
        self._insert_arrow("timing_explanations", explanations_to_arrow(rows))
        return len(rows)

    def insert_explanation_table(self, table: pa.Table) -> int:
        """Explanations already in columns (EXPLANATION_SCHEMA): the bulk path of schedules."""
        if table.num_rows:
            self._insert_arrow("timing_explanations", table)
        return int(table.num_rows)

    def get_explanation(self, tenant: str, explanation_ref: str) -> Explanation | None:
        rows = self._rows(
            "SELECT tenant, explanation_ref, decision_id, universal_id, intent_id, "
            "toUnixTimestamp64Milli(created_at), model_version, "
            "toUnixTimestamp64Milli(target_minute_utc), "
            "toUnixTimestamp64Milli(trigger_timestamp_utc), confidence_score, fallback_level, "
            "weight_personal, weight_audience, weight_global, machine_opens_excluded, policies, "
            "exploration, evidence, details "
            f"FROM `{self.database}`.timing_explanations FINAL "
            "WHERE tenant = {tenant:String} AND explanation_ref = {ref:String} LIMIT 1",
            {"tenant": tenant, "ref": explanation_ref},
        )
        if not rows:
            return None
        r = rows[0]
        return Explanation(
            tenant=r[0],
            explanation_ref=r[1],
            decision_id=r[2],
            universal_id=r[3],
            intent_id=r[4],
            created_at=_from_ms(r[5]),
            model_version=r[6],
            target_minute_utc=_from_ms(r[7]),
            trigger_timestamp_utc=_from_ms(r[8]),
            confidence_score=float(r[9]),
            fallback_level=r[10],
            weight_personal=float(r[11]),
            weight_audience=float(r[12]),
            weight_global=float(r[13]),
            machine_opens_excluded=int(r[14]),
            policies=tuple(r[15]),
            exploration=bool(r[16]),
            evidence=orjson.loads(r[17]) if r[17] else {},
            details=orjson.loads(r[18]) if r[18] else {},
        )

    def delete_tenant(self, tenant: str) -> None:
        """Remove every event and explanation of a tenant (the tenant is being deleted)."""
        for table in ("email_events", "timing_explanations"):
            self._command(
                f"DELETE FROM `{self.database}`.{table} WHERE tenant = {{tenant:String}}",
                {"tenant": tenant},
            )

    # -- data summaries (the connector's data viewer) ------------------------------------------
    def daily_counts(self, tenant: str) -> list[tuple[str, str, int, int]]:
        """(UTC day, event type, events, machine opens) for every day with events."""
        rows = self._rows(
            "SELECT toString(toDate(occurred_at)) AS day, event_type, count(), "
            "countIf(is_machine_open) "
            f"FROM `{self.database}`.email_events FINAL WHERE tenant = {{tenant:String}} "
            "GROUP BY day, event_type ORDER BY day, event_type",
            {"tenant": tenant},
        )
        return [(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]

    def order_totals(self, tenant: str) -> list[tuple[str, int, float]]:
        """(currency, orders, revenue) over the tenant's orders."""
        rows = self._rows(
            "SELECT JSONExtractString(properties, 'Currency') AS currency, count(), "
            "sum(JSONExtractFloat(properties, '$value')) "
            f"FROM `{self.database}`.email_events FINAL "
            "WHERE tenant = {tenant:String} AND event_type = 'ordered' "
            "GROUP BY currency ORDER BY currency",
            {"tenant": tenant},
        )
        return [(str(r[0]), int(r[1]), float(r[2])) for r in rows]

    def orders(
        self, tenant: str, day: date | None, limit: int, offset: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """One page of the tenant's orders (newest first) and the total matching."""
        where = "tenant = {tenant:String} AND event_type = 'ordered'"
        params: dict[str, Any] = {"tenant": tenant, "limit": limit, "offset": offset}
        if day is not None:
            where += " AND toDate(occurred_at) = {day:Date}"
            params["day"] = day.isoformat()
        total = self._rows(
            f"SELECT count() FROM `{self.database}`.email_events FINAL WHERE {where}", params
        )
        rows = self._rows(
            "SELECT esp_event_id, toUnixTimestamp64Milli(occurred_at), universal_id, "
            "campaign_id, flow_id, message_id, properties "
            f"FROM `{self.database}`.email_events FINAL WHERE {where} "
            "ORDER BY occurred_at DESC, esp_event_id LIMIT {limit:UInt32} OFFSET {offset:UInt64}",
            params,
        )
        out = [
            {
                "esp_event_id": str(r[0]),
                "occurred_at": _from_ms(r[1]),
                "universal_id": str(r[2]),
                "campaign_id": str(r[3]) or None,
                "flow_id": str(r[4]) or None,
                "message_id": str(r[5]) or None,
                "properties": orjson.loads(r[6]) if r[6] else {},
            }
            for r in rows
        ]
        return int(total[0][0]) if total else 0, out

    def tenants(self) -> list[str]:
        rows = self._rows(
            f"SELECT DISTINCT tenant FROM `{self.database}`.email_events ORDER BY tenant"
        )
        return [str(r[0]) for r in rows]

    # -- health -----------------------------------------------------------------------------
    def health(self) -> BackendHealth:
        try:
            pending = self.pending_migrations()
            self._rows("SELECT 1")
        except Exception as exc:  # health must report, never raise
            return BackendHealth("event_store", self.backend, "down", _short(exc))
        if pending:
            return BackendHealth(
                "event_store", self.backend, "degraded", f"migrations pending: {pending}"
            )
        return BackendHealth("event_store", self.backend, "ok", info={"database": self.database})


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_ms(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("datetimes passed to the event store must be timezone-aware")
    return (at - _EPOCH) // timedelta(milliseconds=1)


def _from_ms(ms: int | str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
