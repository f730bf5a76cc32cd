"""Timing-quality evaluation: the EWH@60 replay of EVALUATION.md section 1 and its baselines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sendflowr.evaluate.baselines import GlobalHourPolicy, RandomPolicy, UserHourPolicy, baselines
from sendflowr.evaluate.replay import (
    RESAMPLES,
    ActivityEvents,
    Day,
    Decisions,
    Policy,
    PolicyResult,
    ReplaySetup,
    Windows,
    build_windows,
    evaluate_policy,
)
from sendflowr.evaluate.report import brier_score, evaluation_report, reliability_table

__all__ = [
    "ActivityEvents",
    "Day",
    "Decisions",
    "GlobalHourPolicy",
    "Policy",
    "PolicyResult",
    "RandomPolicy",
    "ReplaySetup",
    "UserHourPolicy",
    "Windows",
    "baselines",
    "brier_score",
    "build_windows",
    "evaluate_policy",
    "reliability_table",
    "run_evaluation",
]


def run_evaluation(
    events: ActivityEvents,
    zone_or_zones: str | Sequence[str],
    policies: Mapping[str, Policy],
    seed: int = 0,
) -> dict[str, Any]:
    """Replay every policy over the same windows; a JSON-ready report (see report.py).

    `zone_or_zones`: one IANA zone for everyone, or one per user code (e.g. `events.zones`).
    `seed` drives both the `random` baseline and the bootstrap.
    """
    windows = build_windows(events, zone_or_zones, seed)
    results = [evaluate_policy(windows, name, p, seed) for name, p in policies.items()]
    return evaluation_report(windows, results, seed, RESAMPLES)
