"""Replay results as JSON-ready dicts, and calibration measures for policies that state a
confidence per window (pure)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from sendflowr.evaluate.replay import PolicyResult, Windows


def _checked(
    confidences: npt.ArrayLike, outcomes: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    conf = np.asarray(confidences, np.float64)
    out = np.asarray(outcomes, np.float64)
    if conf.shape != out.shape or conf.ndim != 1:
        raise ValueError(f"confidences {conf.shape} and outcomes {out.shape} must be equal 1-D")
    if len(conf) == 0:
        raise ValueError("no confidences")
    if not np.all((conf >= 0) & (conf <= 1)):
        raise ValueError("confidences must lie in [0, 1]")
    if not np.all((out == 0) | (out == 1)):
        raise ValueError("outcomes must be 0 or 1")
    return conf, out


def brier_score(confidences: npt.ArrayLike, outcomes: npt.ArrayLike) -> float:
    """Mean squared difference between the stated probability and what happened."""
    conf, out = _checked(confidences, outcomes)
    return float(np.mean((conf - out) ** 2))


def reliability_table(
    confidences: npt.ArrayLike, outcomes: npt.ArrayLike, bins: int = 10
) -> list[dict[str, Any]]:
    """Equal-width bins over [0, 1] (the last one closed): count, mean confidence, observed rate.

    Empty bins are kept, with None means, so tables of different policies line up row by row.
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    conf, out = _checked(confidences, outcomes)
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    hit_sum = np.bincount(which, weights=out, minlength=bins)
    rows: list[dict[str, Any]] = []
    for b in range(bins):
        n = int(count[b])
        rows.append(
            {
                "bin_low": b / bins,
                "bin_high": (b + 1) / bins,
                "count": n,
                "mean_confidence": float(conf_sum[b] / n) if n else None,
                "observed_rate": float(hit_sum[b] / n) if n else None,
            }
        )
    return rows


def policy_summary(result: PolicyResult) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "ewh": result.ewh,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "windows": len(result.success),
        "successes": int(result.success.sum()),
    }
    if result.confidence is not None:
        stated = ~np.isnan(result.confidence)
        conf, outcome = result.confidence[stated], result.success[stated]
        if len(conf):
            summary["calibration"] = {
                "windows_with_confidence": len(conf),
                "brier": brier_score(conf, outcome),
                "reliability": reliability_table(conf, outcome),
            }
    return summary


def evaluation_report(
    windows: Windows, results: list[PolicyResult], seed: int, resamples: int
) -> dict[str, Any]:
    ev = windows.events
    return {
        "metric": "EWH@60",
        "events": len(ev.unix_ts),
        "users": len(ev.labels),
        "zones": [clock.zone for clock in windows.setup.clocks],
        "cutoff_unix_ts": windows.cutoff,
        "windows": len(windows),
        "days": len(windows.days),
        "seed": seed,
        "bootstrap_resamples": resamples,
        "policies": {r.name: policy_summary(r) for r in results},
    }
