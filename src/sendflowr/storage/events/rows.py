"""Canonical events -> the columnar rows of `email_events` (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pyarrow as pa

from sendflowr.events import CanonicalEvent
from sendflowr.timing.explanation import Explanation

EMAIL_EVENT_SCHEMA = pa.schema(
    [
        ("tenant", pa.string()),
        ("universal_id", pa.string()),
        ("occurred_at", pa.timestamp("ms", tz="UTC")),
        ("event_id", pa.string()),
        ("esp", pa.string()),
        ("esp_event_id", pa.string()),
        ("event_type", pa.string()),
        ("email_hash", pa.string()),
        ("esp_profile_id", pa.string()),
        ("phone", pa.string()),
        ("external_ids", pa.map_(pa.string(), pa.string())),
        ("anonymous_id", pa.string()),
        ("campaign_id", pa.string()),
        ("flow_id", pa.string()),
        ("message_id", pa.string()),
        ("is_machine_open", pa.bool_()),
        ("properties", pa.string()),
        ("schema_version", pa.uint8()),
    ]
)


def events_to_arrow(events: Sequence[CanonicalEvent], universal_ids: Sequence[str]) -> pa.Table:
    """Column by column: one comprehension a column is several times faster than one loop
    appending to eighteen lists (this is the hottest function of the ingest path)."""
    if len(events) != len(universal_ids):
        raise ValueError("one universal id per event is required")
    dumps = orjson.dumps
    ids = [e.identifiers for e in events]
    cols: dict[str, object] = {
        "tenant": [e.tenant for e in events],
        "universal_id": universal_ids,
        "occurred_at": [e.occurred_at for e in events],
        "event_id": [e.event_id for e in events],
        "esp": [e.esp for e in events],
        "esp_event_id": [e.esp_event_id for e in events],
        "event_type": [e.event_type for e in events],  # a StrEnum is a str: no .value lookup
        "email_hash": [i.email_hash or "" for i in ids],
        "esp_profile_id": [i.esp_profile_id or "" for i in ids],
        "phone": [i.phone or "" for i in ids],
        "external_ids": [list(i.external_ids.items()) if i.external_ids else [] for i in ids],
        "anonymous_id": [i.anonymous_id or "" for i in ids],
        "campaign_id": [e.campaign_id or "" for e in events],
        "flow_id": [e.flow_id or "" for e in events],
        "message_id": [e.message_id or "" for e in events],
        "is_machine_open": [e.is_machine_open for e in events],
        "properties": [dumps(e.properties).decode() if e.properties else "{}" for e in events],
        "schema_version": [e.schema_version for e in events],
    }
    return pa.Table.from_pydict(cols, schema=EMAIL_EVENT_SCHEMA)


EXPLANATION_SCHEMA = pa.schema(
    [
        ("tenant", pa.string()),
        ("explanation_ref", pa.string()),
        ("decision_id", pa.string()),
        ("universal_id", pa.string()),
        ("intent_id", pa.string()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
        ("model_version", pa.string()),
        ("target_minute_utc", pa.timestamp("ms", tz="UTC")),
        ("trigger_timestamp_utc", pa.timestamp("ms", tz="UTC")),
        ("confidence_score", pa.float32()),
        ("fallback_level", pa.string()),
        ("weight_personal", pa.float32()),
        ("weight_audience", pa.float32()),
        ("weight_global", pa.float32()),
        ("evidence", pa.string()),
        ("machine_opens_excluded", pa.uint32()),
        ("policies", pa.list_(pa.string())),
        ("exploration", pa.bool_()),
        ("details", pa.string()),
    ]
)


def explanations_to_arrow(rows: Sequence[Explanation]) -> pa.Table:
    dumps = orjson.dumps
    cols: dict[str, object] = {
        "tenant": [r.tenant for r in rows],
        "explanation_ref": [r.explanation_ref for r in rows],
        "decision_id": [r.decision_id for r in rows],
        "universal_id": [r.universal_id for r in rows],
        "intent_id": [r.intent_id for r in rows],
        "created_at": [r.created_at for r in rows],
        "model_version": [r.model_version for r in rows],
        "target_minute_utc": [r.target_minute_utc for r in rows],
        "trigger_timestamp_utc": [r.trigger_timestamp_utc for r in rows],
        "confidence_score": [r.confidence_score for r in rows],
        "fallback_level": [r.fallback_level for r in rows],
        "weight_personal": [r.weight_personal for r in rows],
        "weight_audience": [r.weight_audience for r in rows],
        "weight_global": [r.weight_global for r in rows],
        "evidence": [dumps(r.evidence).decode() for r in rows],
        "machine_opens_excluded": [r.machine_opens_excluded for r in rows],
        "policies": [list(r.policies) for r in rows],
        "exploration": [r.exploration for r in rows],
        "details": [dumps(r.details).decode() for r in rows],
    }
    return pa.Table.from_pydict(cols, schema=EXPLANATION_SCHEMA)
