"""Numbered, typed ClickHouse migrations shared by chDB and ClickHouse server.

Each migration is a list of operations rendered to SQL; `sendflowr migrate` applies those not yet
recorded in `schema_migrations`. Operations are written so re-running one is harmless
(IF NOT EXISTS), so a crash between applying and recording never wedges the store.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    default: str | None = None
    comment: str = ""

    def sql(self) -> str:
        out = f"`{self.name}` {self.type}"
        if self.default is not None:
            out += f" DEFAULT {self.default}"
        if self.comment:
            out += " COMMENT '" + self.comment.replace("'", "\\'") + "'"
        return out


@dataclass(frozen=True, slots=True)
class CreateTable:
    table: str
    columns: tuple[Column, ...]
    engine: str
    order_by: tuple[str, ...]
    partition_by: str | None = None
    settings: tuple[tuple[str, str], ...] = ()

    def sql(self, database: str) -> str:
        cols = ",\n  ".join(c.sql() for c in self.columns)
        out = (
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.table}` (\n  {cols}\n) "
            f"ENGINE = {self.engine}"
        )
        if self.partition_by:
            out += f" PARTITION BY {self.partition_by}"
        out += f" ORDER BY ({', '.join(self.order_by)})"
        if self.settings:
            out += " SETTINGS " + ", ".join(f"{k} = {v}" for k, v in self.settings)
        return out


@dataclass(frozen=True, slots=True)
class AddColumn:
    table: str
    column: Column
    after: str | None = None

    def sql(self, database: str) -> str:
        out = (
            f"ALTER TABLE `{database}`.`{self.table}` ADD COLUMN IF NOT EXISTS {self.column.sql()}"
        )
        if self.after:
            out += f" AFTER `{self.after}`"
        return out


Operation = CreateTable | AddColumn


@dataclass(frozen=True, slots=True)
class Migration:
    number: int
    name: str
    operations: tuple[Operation, ...]

    @property
    def id(self) -> str:
        return f"{self.number:04d}_{self.name}"


STATUS_TABLE = CreateTable(
    "schema_migrations",
    (
        Column("id", "String"),
        Column("applied_at", "DateTime64(3, 'UTC')", "now64(3)"),
    ),
    engine="ReplacingMergeTree(applied_at)",
    order_by=("id",),
)

UTC_MS = "DateTime64(3, 'UTC')"

EMAIL_EVENTS = CreateTable(
    "email_events",
    (
        Column("tenant", "LowCardinality(String)"),
        Column("universal_id", "String", comment="resolved person; sf_ + 16 hex"),
        Column("occurred_at", UTC_MS),
        Column("event_id", "UUID", comment="uuid5 of esp and esp_event_id"),
        Column("esp", "LowCardinality(String)"),
        Column("esp_event_id", "String"),
        Column("event_type", "LowCardinality(String)"),
        Column("email_hash", "String"),
        Column("esp_profile_id", "String"),
        Column("phone", "String"),
        Column("external_ids", "Map(String, String)"),
        Column("anonymous_id", "String"),
        Column("campaign_id", "String"),
        Column("flow_id", "String"),
        Column("message_id", "String"),
        Column("is_machine_open", "Bool"),
        Column("properties", "String", comment="JSON object"),
        Column("schema_version", "UInt8"),
        Column("ingested_at", UTC_MS, "now64(3)", comment="version: the latest copy wins"),
    ),
    # Per-tenant, per-person time scans read one contiguous key range.
    engine="ReplacingMergeTree(ingested_at)",
    order_by=("tenant", "universal_id", "occurred_at", "event_id"),
    partition_by="toYYYYMM(occurred_at)",
)

TIMING_EXPLANATIONS = CreateTable(
    "timing_explanations",
    (
        Column("tenant", "LowCardinality(String)"),
        Column("explanation_ref", "String"),
        Column("decision_id", "String"),
        Column("universal_id", "String"),
        Column("intent_id", "String"),
        Column("created_at", UTC_MS),
        Column("model_version", "LowCardinality(String)"),
        Column("target_minute_utc", UTC_MS),
        Column("trigger_timestamp_utc", UTC_MS),
        Column("confidence_score", "Float32"),
        Column("fallback_level", "LowCardinality(String)"),
        Column("weight_personal", "Float32"),
        Column("weight_audience", "Float32"),
        Column("weight_global", "Float32"),
        Column("evidence", "String", comment="JSON: counts, recency"),
        Column("machine_opens_excluded", "UInt32"),
        Column("policies", "Array(String)", comment="policies that moved or suppressed the time"),
        Column("exploration", "Bool"),
        Column("details", "String", comment="JSON: anything else worth auditing"),
    ),
    engine="ReplacingMergeTree(created_at)",
    order_by=("tenant", "explanation_ref"),
    partition_by="toYYYYMM(created_at)",
)

# The engine's own confidence, before the tenant's calibration map (timing/calibration.py):
# what the next map is fitted on. Rows written before it had no map, so theirs is the stated.
MODEL_CONFIDENCE = AddColumn(
    "timing_explanations",
    Column(
        "model_confidence",
        "Float32",
        "confidence_score",
        comment="confidence before the tenant's calibration map",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "email_events", (EMAIL_EVENTS,)),
    Migration(2, "timing_explanations", (TIMING_EXPLANATIONS,)),
    Migration(3, "explanation_model_confidence", (MODEL_CONFIDENCE,)),
)
