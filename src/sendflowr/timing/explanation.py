"""The explanation of one timing decision: what an operator audits (pure data).

One row per decision in the event store's `timing_explanations` table, looked up by
`explanation_ref`. Evidence and details are JSON objects so the engine can add facts without a
migration; the columns are what dashboards filter and aggregate on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Explanation:
    tenant: str
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
    weight_personal: float
    weight_audience: float
    weight_global: float
    machine_opens_excluded: int
    policies: tuple[str, ...] = ()
    exploration: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # the engine's confidence before the tenant's calibration map; None: no map (as stated)
    model_confidence: float | None = None
