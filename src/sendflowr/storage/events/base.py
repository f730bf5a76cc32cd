"""The event-store interface and the SQL both ClickHouse backends share."""

from __future__ import annotations

import abc
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa

from sendflowr.storage.events.data_views import ORDER_COLUMNS, DataViews, order_row
from sendflowr.storage.events.explanation_buffer import ExplanationBuffer
from sendflowr.storage.events.migrations import MIGRATIONS, STATUS_TABLE, Migration
from sendflowr.storage.events.millis import from_ms, to_ms
from sendflowr.storage.events.rows import (
    EMAIL_EVENT_SCHEMA,
    EXPLANATION_SCHEMA,
    explanations_to_arrow,
)
from sendflowr.storage.health import BackendHealth
from sendflowr.timing.explanation import Explanation

_EVENT_COLUMNS = (
    "tenant", "universal_id", "occurred_at", "event_id", "esp", "esp_event_id", "event_type",
    "email_hash", "esp_profile_id", "phone", "external_ids", "anonymous_id", "campaign_id",
    "flow_id", "message_id", "is_machine_open", "properties", "schema_version",
)  # fmt: skip


log = logging.getLogger(__name__)

# the TTL set_explanation_retention writes, as system.tables.engine_full spells it back
_EXPLANATION_TTL = re.compile(r"TTL toDateTime\(created_at\) \+ toIntervalDay\((\d+)\)")


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
class EngagementArrays:
    """A tenant's events as columns (one entry an event, in no particular order); ids and
    types dictionary-encoded: `universal_ids[uid_code[i]]` is event i's person."""

    universal_ids: list[str]
    uid_code: npt.NDArray[np.int64]
    utc_ms: npt.NDArray[np.int64]
    event_types: list[str]
    type_code: npt.NDArray[np.int64]
    is_machine_open: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.utc_ms)

    def in_order(self) -> EngagementArrays:
        """The same events whatever order the store returned them in: ids and types sorted,
        events by person, time, type and flag. A fold of it (float sums, same-second ties)
        is then the same in every process and every read."""
        ids, id_rank = _sorted_dictionary(self.universal_ids)
        types, type_rank = _sorted_dictionary(self.event_types)
        uid = id_rank[self.uid_code]
        kind = type_rank[self.type_code]
        order = np.lexsort((self.is_machine_open, kind, self.utc_ms, uid))
        return EngagementArrays(
            ids, uid[order], self.utc_ms[order], types, kind[order], self.is_machine_open[order]
        )


@dataclass(frozen=True, slots=True)
class DecisionConfidences:
    """Past decisions as columns: `universal_ids[uid_code[i]]` is decision i's person."""

    universal_ids: list[str]
    uid_code: npt.NDArray[np.int64]
    trigger_ms: npt.NDArray[np.int64]
    target_ms: npt.NDArray[np.int64]
    model_confidence: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.target_ms)


def _sorted_dictionary(values: list[str]) -> tuple[list[str], npt.NDArray[np.int64]]:
    """(values sorted, the new code of each old code)."""
    order = np.argsort(np.asarray(values, dtype=object), kind="stable")
    rank = np.empty(len(values), np.int64)
    rank[order] = np.arange(len(values), dtype=np.int64)
    return [values[i] for i in order.tolist()], rank


def _dictionary(column: pa.ChunkedArray) -> tuple[list[str], npt.NDArray[np.int64]]:
    """(distinct values, per-row code) of a string or dictionary column."""
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    column = column.unify_dictionaries()
    if column.num_chunks == 0:
        return [], np.zeros(0, np.int64)
    values: list[str] = column.chunk(0).dictionary.to_pylist()
    codes = np.concatenate(
        [c.indices.to_numpy(zero_copy_only=False) for c in column.chunks]
    ).astype(np.int64)
    # a LowCardinality dictionary also holds values no row uses (its default '', at least)
    used = np.bincount(codes, minlength=len(values)) > 0
    if not used.all():
        remap = np.cumsum(used) - 1
        values = [v for v, u in zip(values, used.tolist(), strict=True) if u]
        codes = remap[codes]
    return values, codes


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    id: str
    applied_at: datetime


class EventStore(DataViews):
    """Canonical events and timing explanations, in ClickHouse SQL.

    Backends implement the three primitives (`_rows`, `_command`, `_insert_arrow`); every query
    is written once here so chDB and ClickHouse server run the same SQL. Queries dedup with FINAL:
    inserting an event twice leaves one row in every answer, whatever the background merges did.
    """

    backend: str = "?"

    def __init__(self, database: str) -> None:
        self.database = database
        self._migrate_lock = threading.Lock()
        # single decisions' explanation rows, written in small batches (explanation_buffer.py)
        self._explanations = ExplanationBuffer(self.insert_explanations)

    # -- primitives -------------------------------------------------------------------------
    @abc.abstractmethod
    def _rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]: ...

    @abc.abstractmethod
    def _command(self, sql: str, params: Mapping[str, Any] | None = None) -> None: ...

    @abc.abstractmethod
    def _insert_arrow(self, table: str, data: pa.Table) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def _arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """A query's result as Arrow; backends that can should answer in Arrow directly."""
        raise NotImplementedError(f"{self.backend}: no Arrow results")

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

    # -- retention --------------------------------------------------------------------------
    def explanation_retention(self) -> int:
        """Days after which explanation rows are deleted (the table's TTL); 0: kept for ever."""
        rows = self._rows(
            "SELECT engine_full FROM system.tables "
            "WHERE database = {db:String} AND name = 'timing_explanations'",
            {"db": self.database},
        )
        found = _EXPLANATION_TTL.search(str(rows[0][0])) if rows else None
        return int(found.group(1)) if found else 0

    def set_explanation_retention(self, days: int) -> bool:
        """Delete explanation rows `days` after they were made (0: keep them for ever), by a
        TTL that ClickHouse applies as it merges the table's parts. Altered only when it
        differs from the table's (a change rewrites the parts once, to drop what is already
        older). Returns whether it changed."""
        if days < 0:
            raise ValueError(f"explanation retention: {days} days is negative")
        if self.explanation_retention() == days:
            return False
        table = f"`{self.database}`.timing_explanations"
        if days == 0:
            self._command(f"ALTER TABLE {table} REMOVE TTL")
        else:
            self._command(
                f"ALTER TABLE {table} MODIFY TTL toDateTime(created_at) + INTERVAL {int(days)} DAY"
            )
        return True

    def applied_migrations(self) -> list[AppliedMigration]:
        try:
            rows = self._rows(
                f"SELECT id, toUnixTimestamp64Milli(applied_at) FROM "
                f"`{self.database}`.schema_migrations FINAL ORDER BY id"
            )
        except EventStoreError:
            return []
        return [AppliedMigration(r[0], from_ms(r[1])) for r in rows]

    def pending_migrations(self) -> list[str]:
        done = {m.id for m in self.applied_migrations()}
        return [m.id for m in MIGRATIONS if m.id not in done]

    # -- events -----------------------------------------------------------------------------
    def insert_events(self, rows: pa.Table) -> int:
        """Write rows built by `rows.events_to_arrow`; durable when this returns."""
        if rows.num_rows:
            _conform("email_events", rows, EMAIL_EVENT_SCHEMA)
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
            params["since"] = to_ms(since)
        if until is not None:
            cond += " AND occurred_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')"
            params["until"] = to_ms(until)
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
                occurred_at=from_ms(r[3]),
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

    def event_ids(self, tenant: str, universal_ids: Sequence[str], limit: int) -> list[str]:
        """The ids (`event_id`) of the events stored under these universal ids, at most
        `limit` of them: what data-subject erasure looks for in the raw archive."""
        rows = self._rows(
            f"SELECT DISTINCT toString(event_id) FROM `{self.database}`.email_events "
            "WHERE tenant = {tenant:String} AND universal_id IN {uids:Array(String)} "
            "LIMIT {limit:UInt32}",
            {"tenant": tenant, "uids": list(universal_ids), "limit": limit},
        )
        return [r[0] for r in rows]

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
        self,
        tenant: str,
        types: Sequence[str],
        since: datetime,
        limit: int = 2_000_000,
        universal_ids: Sequence[str] | None = None,
    ) -> tuple[list[str], list[int], list[str], list[bool]]:
        """A tenant's engagement events since `since`, in one query (person, then time):
        universal ids, UTC seconds, event types, machine-open flags. `universal_ids` narrows
        it to those stored ids (a small batch need not scan the whole tenant)."""
        params: dict[str, Any] = {
            "tenant": tenant,
            "types": list(types),
            "since": to_ms(since),
            "limit": limit,
        }
        cond = ""
        if universal_ids is not None:
            cond = " AND universal_id IN {uids:Array(String)}"
            params["uids"] = list(universal_ids)
        rows = self._rows(
            "SELECT universal_id, toUnixTimestamp(occurred_at), event_type, is_machine_open "
            f"FROM `{self.database}`.email_events FINAL "
            "WHERE tenant = {tenant:String} AND event_type IN {types:Array(String)} "
            f"AND occurred_at >= fromUnixTimestamp64Milli({{since:Int64}}, 'UTC'){cond} "
            "ORDER BY universal_id, occurred_at LIMIT {limit:UInt32}",
            params,
        )
        return (
            [r[0] for r in rows],
            [int(r[1]) for r in rows],
            [r[2] for r in rows],
            [bool(r[3]) for r in rows],
        )

    def engagement_arrays(
        self,
        tenant: str,
        types: Sequence[str] | None = None,
        since: datetime | None = None,
        universal_ids: Sequence[str] | None = None,
    ) -> EngagementArrays:
        """A tenant's events (of `types`, default all; since `since`; stored under
        `universal_ids`, default everyone's) as numpy columns, in ONE columnar query: what the
        bulk feature rebuild folds. Deduplicated like every read."""
        params: dict[str, Any] = {"tenant": tenant}
        cond = ""
        if universal_ids is not None:
            cond += " AND universal_id IN {uids:Array(String)}"
            params["uids"] = list(universal_ids)
        if types is not None:
            cond += " AND event_type IN {types:Array(String)}"
            params["types"] = list(types)
        if since is not None:
            cond += " AND occurred_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
            params["since"] = to_ms(since)
        # Copies of an event share its key (and so its month partition): FINAL need not merge
        # across partitions, which lets it work partition by partition in parallel. The ids
        # come as plain strings and are dictionary-encoded by Arrow: toLowCardinality() in the
        # query cost three times the whole read.
        table = self._arrow(
            "SELECT universal_id AS uid, "
            "toUnixTimestamp64Milli(occurred_at) AS ms, event_type, is_machine_open "
            f"FROM `{self.database}`.email_events FINAL "
            f"WHERE tenant = {{tenant:String}}{cond} "
            "SETTINGS output_format_arrow_low_cardinality_as_dictionary = 1, "
            "do_not_merge_across_partitions_select_final = 1",
            params,
        )
        uids, uid_code = _dictionary(table.column("uid"))
        types_seen, type_code = _dictionary(table.column("event_type"))
        return EngagementArrays(
            uids,
            uid_code,
            table.column("ms").to_numpy().astype(np.int64),
            types_seen,
            type_code,
            table.column("is_machine_open").to_numpy().astype(np.bool_),
        )

    # -- timing explanations ---------------------------------------------------------------
    def decision_confidences(
        self, tenant: str, since: datetime, until: datetime, limit: int
    ) -> DecisionConfidences:
        """The tenant's decisions targeted in [since, until): the most recent `limit`, as
        columns (person, trigger and target in UTC ms, the engine's confidence before any
        calibration), in a fixed order. What a calibration map is fitted on."""
        table = self._arrow(
            "SELECT universal_id AS uid, toUnixTimestamp64Milli(trigger_timestamp_utc) AS trig, "
            "toUnixTimestamp64Milli(target_minute_utc) AS target, model_confidence "
            f"FROM `{self.database}`.timing_explanations FINAL "
            "WHERE tenant = {tenant:String} "
            "AND target_minute_utc >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
            "AND target_minute_utc < fromUnixTimestamp64Milli({until:Int64}, 'UTC') "
            "ORDER BY target_minute_utc DESC, decision_id LIMIT {limit:UInt32}",
            {"tenant": tenant, "since": to_ms(since), "until": to_ms(until), "limit": limit},
        )
        uids, uid_code = _dictionary(table.column("uid"))
        return DecisionConfidences(
            uids,
            uid_code,
            table.column("trig").to_numpy().astype(np.int64),
            table.column("target").to_numpy().astype(np.int64),
            table.column("model_confidence").to_numpy().astype(np.float64),
        )

    def insert_explanations(self, rows: Sequence[Explanation]) -> int:
        if not rows:
            return 0
        self._insert_arrow("timing_explanations", explanations_to_arrow(rows))
        return len(rows)

    def insert_explanation_table(self, table: pa.Table) -> int:
        """Explanations already in columns (EXPLANATION_SCHEMA): the bulk path of schedules."""
        if table.num_rows:
            _conform("timing_explanations", table, EXPLANATION_SCHEMA)
            self._insert_arrow("timing_explanations", table)
        return int(table.num_rows)

    def events_by_person(
        self, tenant: str, types: Sequence[str]
    ) -> Mapping[str, list[tuple[int, str]]] | None:
        """Every event of these (rare) types of the tenant, per stored universal id, as (UTC
        seconds, type) in time order - kept in memory for as long as no event of those types
        was written or any event deleted. None: this backend cannot know when they change
        (another process may write them), so the caller queries instead."""
        return None

    def buffer_explanations(self, rows: Sequence[Explanation]) -> None:
        """Queue rows for a batched write within a few tens of milliseconds. Every read of
        explanations, erasure, tenant deletion and close() writes pending rows first."""
        self._explanations.add(rows)

    def flush_explanations(self) -> int:
        """Write the buffered explanation rows now; returns how many."""
        return self._explanations.flush()

    def _close_explanations(self) -> None:
        """Backends call this first in close(): a clean shutdown loses no buffered row."""
        try:
            self._explanations.close()
        except Exception as exc:
            log.error("buffered explanation rows lost at close: %s", _short(exc))

    def get_explanation(self, tenant: str, explanation_ref: str) -> Explanation | None:
        self.flush_explanations()  # a ref a response named is always found
        rows = self._rows(
            "SELECT tenant, explanation_ref, decision_id, universal_id, intent_id, "
            "toUnixTimestamp64Milli(created_at), model_version, "
            "toUnixTimestamp64Milli(target_minute_utc), "
            "toUnixTimestamp64Milli(trigger_timestamp_utc), confidence_score, fallback_level, "
            "weight_personal, weight_audience, weight_global, machine_opens_excluded, policies, "
            "exploration, evidence, details, model_confidence "
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
            created_at=from_ms(r[5]),
            model_version=r[6],
            target_minute_utc=from_ms(r[7]),
            trigger_timestamp_utc=from_ms(r[8]),
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
            model_confidence=float(r[19]),
        )

    def delete_tenant(self, tenant: str) -> None:
        """Remove every event and explanation of a tenant (the tenant is being deleted)."""
        self.flush_explanations()
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
            f"SELECT {ORDER_COLUMNS} FROM `{self.database}`.email_events FINAL WHERE {where} "
            "ORDER BY occurred_at DESC, esp_event_id LIMIT {limit:UInt32} OFFSET {offset:UInt64}",
            params,
        )
        out = [order_row(r) for r in rows]
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

    # -- data-subject erasure ------------------------------------------------------------------
    def erase_people(
        self, tenant: str, universal_ids: Sequence[str], *, ingested_before: datetime | None = None
    ) -> dict[str, int]:
        """Delete every event and timing explanation stored under these ids (one person's alias
        set) with lightweight DELETEs; returns the rows removed per table. `ingested_before`
        limits it to rows written before that instant (a sweep after the identity is gone
        must not touch a person re-created since). A table with nothing to delete costs one
        count, no mutation."""
        if not universal_ids:
            return {"events": 0, "explanations": 0}
        self.flush_explanations()  # a pending row must not land after the erasure
        params: dict[str, Any] = {"tenant": tenant, "uids": list(universal_ids)}
        out: dict[str, int] = {}
        for key, table, stamp in (
            ("events", "email_events", "ingested_at"),
            ("explanations", "timing_explanations", "created_at"),
        ):
            where = "tenant = {tenant:String} AND universal_id IN {uids:Array(String)}"
            if ingested_before is not None:
                where += f" AND {stamp} < fromUnixTimestamp64Milli({{before:Int64}}, 'UTC')"
                params["before"] = to_ms(ingested_before)
            found = self._rows(
                f"SELECT count() FROM `{self.database}`.{table} FINAL WHERE {where}", params
            )
            n = int(found[0][0]) if found else 0
            if n:
                self._command(f"DELETE FROM `{self.database}`.{table} WHERE {where}", params)
            out[key] = n
        return out


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _conform(table: str, data: pa.Table, schema: pa.Schema) -> None:
    """Refuse rows whose columns are not exactly the table's (names, order and types): a
    backend may convert a wrong type silently (chDB's Python() table function reads a string
    into a DateTime64 column as 1970-01-01)."""
    if data.schema.equals(schema, check_metadata=False):
        return
    have = {f.name: f.type for f in data.schema}
    wrong = [
        f"{f.name} is {have[f.name]}, not {f.type}" if f.name in have else f"{f.name} is missing"
        for f in schema
        if have.get(f.name) != f.type
    ]
    wrong += [f"{n} is not a column of {table}" for n in have if schema.get_field_index(n) < 0]
    raise EventStoreError(
        f"rows for {table} do not match its columns: {'; '.join(wrong) or 'in another order'}"
    )
