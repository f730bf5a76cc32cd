"""Canonical events -> the columnar rows of `email_events` (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import orjson
import pyarrow as pa

from sendflowr.event_columns import columns
from sendflowr.events import CanonicalEvent
from sendflowr.storage.events.millis import whole_ms
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
    """The rows of `email_events` for these events (this is the hottest function of the
    ingest path). Built from the events' columns (`event_columns.columns`: one C-level
    transposition, or the batch decoder's); missing values become '' in Arrow."""
    if len(events) != len(universal_ids):
        raise ValueError("one universal id per event is required")
    if not events:  # through from_pydict: the consumer builds one at start-up to warm pyarrow
        return pa.Table.from_pydict({n: [] for n in EMAIL_EVENT_SCHEMA.names}, EMAIL_EVENT_SCHEMA)
    dumps = orjson.dumps
    col = columns(events)  # reused from the batch decoder when it made them
    ids = columns(col["identifiers"])
    external_ids = ids["external_ids"]
    arrays = [
        _strings(col["tenant"]),
        _strings(universal_ids),
        pa.array(whole_ms(col["occurred_at"]), _TIMESTAMP),
        _strings(col["event_id"]),
        _strings(col["esp"]),
        _strings(col["esp_event_id"]),
        _strings(col["event_type"]),  # a StrEnum is a str
        _strings(ids["email_hash"]),
        _strings(ids["esp_profile_id"]),
        _strings(ids["phone"]),
        pa.array(
            [list(x.items()) for x in external_ids] if any(external_ids) else [()] * len(events),
            _EXTERNAL_IDS,
        ),
        _strings(ids["anonymous_id"]),
        _strings(col["campaign_id"]),
        _strings(col["flow_id"]),
        _strings(col["message_id"]),
        pa.array(col["is_machine_open"], pa.bool_()),
        pa.array([dumps(p).decode() if p else "{}" for p in col["properties"]], pa.string()),
        pa.array(col["schema_version"], pa.uint8()),
    ]
    return pa.Table.from_arrays(arrays, schema=EMAIL_EVENT_SCHEMA)


_TIMESTAMP: Final = EMAIL_EVENT_SCHEMA.field("occurred_at").type
_EXTERNAL_IDS: Final = EMAIL_EVENT_SCHEMA.field("external_ids").type


def _strings(values: Sequence[str | None]) -> pa.Array:
    """A string column, None as '' (the store's "absent")."""
    arr = pa.array(values, pa.string())
    return arr.fill_null("") if arr.null_count else arr


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
        ("model_confidence", pa.float32()),
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
        "model_confidence": [
            r.confidence_score if r.model_confidence is None else r.model_confidence for r in rows
        ],
    }
    return pa.Table.from_pydict(cols, schema=EXPLANATION_SCHEMA)
