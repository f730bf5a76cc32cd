"""The engagement curve a decision was chosen from, as points to plot (pure: no I/O).

The points are the engine's own candidates and values (engine.score_batch, after the send
policies when they ran): every quarter hour of the window (where a 15-minute bin edge meets
the target or the end of its horizon, so where the score can change slope), the window's
first and last minute, and the boundaries of any refused interval (quiet hours, a cap, an
order cool-off). Between two points the score is interpolated linearly, the convention the
policies and the planner use. No second model: the values ARE the scores the choice was made
over, so the chosen minute is the best allowed point (unless a hot path or exploration placed
it, which the decision's policies say).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sendflowr.timing.engine import BatchScores
from sendflowr.timing.policy import Applied


@dataclass(frozen=True, slots=True)
class CurvePoint:
    minute_utc: int  # candidate target (delivery) minute, unix seconds
    score: float  # P(engagement within the horizon) if delivered then, before any policy
    allowed: bool  # False where a policy refuses the minute


def decision_curve(scored: Applied | BatchScores, row: int = 0) -> list[CurvePoint]:
    """One row's curve: with policies applied, their candidates (boundaries included), the
    unmasked values and the allowed mask; from bare engine scores, every point allowed."""
    if isinstance(scored, Applied):
        cands, values, allowed = scored.candidates, scored.raw[row], scored.allowed[row]
    else:
        cands, values = scored.candidates, scored.prob[row]
        allowed = np.ones(len(cands), np.bool_)
    return [
        CurvePoint(int(t), float(v), bool(a))
        for t, v, a in zip(cands.tolist(), values.tolist(), allowed.tolist(), strict=True)
    ]
