"""Read-only views the data viewer needs: top campaigns and flows, order and decision pages.

A mixin of EventStore (base.py): the SQL is written once here and runs unchanged on chDB and
on a ClickHouse server. Pages for exports are keyset pages (a cursor of the last row's sort
key), so rows written while an export streams neither repeat nor shift the rows after them.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import orjson

from sendflowr.storage.events.millis import from_ms, to_ms

SourceKind = Literal["campaign", "flow"]
_SOURCE_COLUMN: dict[str, str] = {"campaign": "campaign_id", "flow": "flow_id"}

# (sort timestamp in UTC milliseconds, tie-breaking id) of the last row of the previous page
Cursor = tuple[int, str]


@dataclass(frozen=True, slots=True)
class SourceStats:
    """One campaign's or flow's events. `revenue` is per currency ('' when the order named
    none); `order_value` sums every order's value whatever its currency (the sort key)."""

    source_id: str
    deliveries: int
    opens: int  # machine opens excluded
    clicks: int
    orders: int
    revenue: dict[str, float]
    order_value: float


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """The columns of one timing explanation a listing shows (no evidence or details)."""

    explanation_ref: str
    decision_id: str
    universal_id: str
    intent_id: str
    created_at: datetime
    model_version: str
    target_minute_utc: datetime
    trigger_timestamp_utc: datetime
    confidence_score: float
    fallback_level: str
    machine_opens_excluded: int
    policies: tuple[str, ...]
    exploration: bool
    suppressed: bool
    suppression_policy: str | None
    suppression_reason: str | None
    model_confidence: float  # before the tenant's calibration map (= confidence_score: none)

    @property
    def cursor(self) -> Cursor:
        return to_ms(self.created_at), self.explanation_ref


def order_cursor(row: Mapping[str, Any]) -> Cursor:
    """The cursor of an `order_row` (for `orders_page(after=...)`)."""
    return to_ms(row["occurred_at"]), str(row["esp_event_id"])


# The columns `order_row` reads, in its order.
ORDER_COLUMNS = (
    "esp_event_id, toUnixTimestamp64Milli(occurred_at), universal_id, "
    "campaign_id, flow_id, message_id, properties"
)


def order_row(r: list[Any]) -> dict[str, Any]:
    """(esp_event_id, ms, universal_id, campaign_id, flow_id, message_id, properties) as the
    dict `EventStore.orders` returns."""
    return {
        "esp_event_id": str(r[0]),
        "occurred_at": from_ms(r[1]),
        "universal_id": str(r[2]),
        "campaign_id": str(r[3]) or None,
        "flow_id": str(r[4]) or None,
        "message_id": str(r[5]) or None,
        "properties": orjson.loads(r[6]) if r[6] else {},
    }


class DataViews(abc.ABC):
    database: str

    @abc.abstractmethod
    def _rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]: ...

    @abc.abstractmethod
    def flush_explanations(self) -> int: ...

    # -- campaigns and flows ---------------------------------------------------------------
    def top_sources(self, tenant: str, kind: SourceKind, limit: int) -> list[SourceStats]:
        """The tenant's campaigns (or flows) by the events naming them, in one grouped query:
        highest order value first, then most clicks, then id."""
        column = _SOURCE_COLUMN[kind]
        rows = self._rows(
            f"SELECT {column} AS source, "
            "countIf(event_type = 'received') AS deliveries, "
            "countIf(event_type = 'opened' AND NOT is_machine_open) AS opens, "
            "countIf(event_type = 'clicked') AS clicks, "
            "countIf(event_type = 'ordered') AS orders, "
            "sumMapIf(map(JSONExtractString(properties, 'Currency'), "
            "JSONExtractFloat(properties, '$value')), event_type = 'ordered') AS revenue, "
            "sumIf(JSONExtractFloat(properties, '$value'), event_type = 'ordered') AS value "
            f"FROM `{self.database}`.email_events FINAL "
            f"WHERE tenant = {{tenant:String}} AND {column} != '' "
            "GROUP BY source ORDER BY value DESC, clicks DESC, source "
            "LIMIT {limit:UInt32}",
            {"tenant": tenant, "limit": limit},
        )
        return [
            SourceStats(
                source_id=str(r[0]),
                deliveries=int(r[1]),
                opens=int(r[2]),
                clicks=int(r[3]),
                orders=int(r[4]),
                revenue={str(k): float(v) for k, v in dict(r[5] or {}).items()},
                order_value=float(r[6]),
            )
            for r in rows
        ]

    # -- orders, for exports -----------------------------------------------------------------
    def orders_page(
        self, tenant: str, day: date | None, limit: int, after: Cursor | None = None
    ) -> list[dict[str, Any]]:
        """Up to `limit` orders (newest first, then by ESP event id descending) that sort after
        `after`; each row's cursor is (occurred_at in ms, esp_event_id)."""
        where = "tenant = {tenant:String} AND event_type = 'ordered'"
        params: dict[str, Any] = {"tenant": tenant, "limit": limit}
        if day is not None:
            where += " AND toDate(occurred_at) = {day:Date}"
            params["day"] = day.isoformat()
        if after is not None:
            where += (
                " AND (occurred_at, esp_event_id) < "
                "(fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'), {after_id:String})"
            )
            params["after_ms"], params["after_id"] = after
        rows = self._rows(
            f"SELECT {ORDER_COLUMNS} FROM `{self.database}`.email_events FINAL WHERE {where} "
            "ORDER BY occurred_at DESC, esp_event_id DESC LIMIT {limit:UInt32}",
            params,
        )
        return [order_row(r) for r in rows]

    # -- timing decisions (explanation rows) -------------------------------------------------
    def _decision_filter(self, tenant: str, since: datetime | None) -> tuple[str, dict[str, Any]]:
        where = "tenant = {tenant:String}"
        params: dict[str, Any] = {"tenant": tenant}
        if since is not None:
            where += " AND created_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
            params["since"] = to_ms(since)
        return where, params

    def count_decisions(self, tenant: str, since: datetime | None = None) -> int:
        self.flush_explanations()  # a decision already answered is counted
        where, params = self._decision_filter(tenant, since)
        rows = self._rows(
            f"SELECT count() FROM `{self.database}`.timing_explanations FINAL WHERE {where}",
            params,
        )
        return int(rows[0][0]) if rows else 0

    def decisions(
        self,
        tenant: str,
        limit: int,
        *,
        offset: int = 0,
        since: datetime | None = None,
        after: Cursor | None = None,
    ) -> list[DecisionRow]:
        """The tenant's decisions, newest first (then by explanation ref descending): a page
        by `offset`, or the rows sorting after `after` (a previous row's `cursor`)."""
        self.flush_explanations()  # buffered rows of answered decisions are listed too
        where, params = self._decision_filter(tenant, since)
        params.update(limit=limit, offset=offset)
        if after is not None:
            where += (
                " AND (created_at, explanation_ref) < "
                "(fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'), {after_ref:String})"
            )
            params["after_ms"], params["after_ref"] = after
        rows = self._rows(
            "SELECT explanation_ref, decision_id, universal_id, intent_id, "
            "toUnixTimestamp64Milli(created_at), model_version, "
            "toUnixTimestamp64Milli(target_minute_utc), "
            "toUnixTimestamp64Milli(trigger_timestamp_utc), confidence_score, fallback_level, "
            "machine_opens_excluded, policies, exploration, JSONHas(details, 'suppressed'), "
            "JSONExtractString(details, 'suppressed', 'policy'), "
            "JSONExtractString(details, 'suppressed', 'reason'), model_confidence "
            f"FROM `{self.database}`.timing_explanations FINAL WHERE {where} "
            "ORDER BY created_at DESC, explanation_ref DESC "
            "LIMIT {limit:UInt32} OFFSET {offset:UInt64}",
            params,
        )
        return [
            DecisionRow(
                explanation_ref=str(r[0]),
                decision_id=str(r[1]),
                universal_id=str(r[2]),
                intent_id=str(r[3]),
                created_at=from_ms(r[4]),
                model_version=str(r[5]),
                target_minute_utc=from_ms(r[6]),
                trigger_timestamp_utc=from_ms(r[7]),
                confidence_score=float(r[8]),
                fallback_level=str(r[9]),
                machine_opens_excluded=int(r[10]),
                policies=tuple(str(p) for p in r[11]),
                exploration=bool(r[12]),
                suppressed=bool(int(r[13])),
                suppression_policy=str(r[14]) if int(r[13]) else None,
                suppression_reason=str(r[15]) if int(r[13]) else None,
                model_confidence=float(r[16]),
            )
            for r in rows
        ]
