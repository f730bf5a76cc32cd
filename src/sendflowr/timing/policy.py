"""Send policies over a batch's candidate minutes (pure numpy: no I/O, no clock).

What a tenant configures (quiet hours, a frequency cap, circuit breakers, an order cool-off,
exploration) and what is known about each person (their breaker events, last order, sends
already made or planned, hot-path signals) turn the engine's scores into:

- an allowed mask over the candidate minutes, per person;
- suppressions: a person nobody may send to now (a breaker), or with no allowed minute in the
  window, gets a policy name and a reason instead of a minute (never dropped silently);
- forced minutes: a hot-path signal promotes the send to the earliest allowed minute; an
  exploration decision (a configured share, chosen from the decision id so it is reproducible)
  takes a minute drawn uniformly from the allowed whole minutes;
- per person, the policies that moved the decision away from its preferred minute, with
  details (preferred minute, expected engagement there, reason).

Exactness: the engine scores the kinks of a piecewise-linear curve. A policy allows unions of
whole-minute intervals; both sides of every boundary (the last allowed and the first refused
minute) are added as candidates, valued by linear interpolation between their neighbouring
kinks (the convention the planner uses for whole minutes). Between two consecutive candidates
a person's allowedness is then constant, so the best allowed minute is always a candidate and
is found exactly; refused candidates are valued `prob - REFUSED` (below every allowed value),
so anything interpolating between candidates (the planner) never prefers a refused minute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np

from sendflowr.timing.activity import FloatArray, IntArray
from sendflowr.timing.engine import (
    BatchDecisions,
    BatchScores,
    EngineParams,
    choose,
    local_minute_of_week,
)

MINUTE: Final = 60
DAY_MINUTES: Final = 1_440
REFUSED: Final = 2.0  # subtracted from a refused candidate's value: below every allowed one
PERSON_BREAKERS: Final = ("unsubscribed", "bounced", "spam_complaint")
MASKS: Final = ("quiet_hours", "recent_order", "frequency_cap")
BoolArray = np.ndarray[tuple[int, ...], np.dtype[np.bool_]]


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """One tenant's policies. Defaults: no quiet hours, no cap, the person breakers on, no
    order cool-off, no exploration; the ESP breaker trips at half of at least 20 recent
    trigger calls failing."""

    quiet_start_minute: int | None = None  # local minute of the day quiet hours begin
    quiet_end_minute: int | None = None  # ... and end (exclusive); may wrap past midnight
    cap_count: int | None = None  # at most this many sends per person ...
    cap_period_seconds: int = 7 * 86_400  # ... in any rolling period this long
    breakers: frozenset[str] = frozenset(PERSON_BREAKERS)
    order_cooloff_seconds: int = 0  # no send this long after an order (0: off)
    exploration_share: float = 0.0  # share of decisions placed at a random allowed minute
    esp_error_rate: float = 0.5  # ESP breaker: failed / (failed + sent) above this ...
    esp_error_min_calls: int = 20  # ... over at least this many calls ...
    esp_error_window_seconds: int = 3_600  # ... due in this long before now

    @property
    def quiet_hours(self) -> bool:
        return (
            self.quiet_start_minute is not None
            and self.quiet_end_minute is not None
            and self.quiet_start_minute != self.quiet_end_minute
        )


@dataclass(frozen=True, slots=True)
class Suppression:
    policy: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HotPathHit:
    signal: str  # the event type
    at: int  # unix seconds of the person's latest such event
    within_seconds: int


@dataclass(slots=True)
class Facts:
    """What is known about each person of a batch (rows), gathered by sendflowr.policy_facts."""

    n: int
    breaker: dict[int, Suppression] = field(default_factory=dict)  # person breakers per row
    tenant_breaker: Suppression | None = None  # operator or ESP error-rate breaker: everyone
    last_order: dict[int, int] = field(default_factory=dict)  # unix seconds
    sends: dict[int, list[int]] = field(default_factory=dict)  # target seconds, sent or planned
    hot_path: dict[int, HotPathHit] = field(default_factory=dict)


def recipient_zone(tenant_zone: ZoneInfo, person: Mapping[str, Any] | None = None) -> ZoneInfo:
    """The zone a person's quiet hours are read in. Today the tenant's zone; the one place a
    per-person estimate (from the ESP or the person's rhythm) plugs in."""
    return tenant_zone


def match_hot_path(
    signals: Sequence[tuple[str, int]], latest: Mapping[str, int], now: int
) -> HotPathHit | None:
    """The first (event_type, within_seconds) signal whose latest event (`latest`: event type ->
    unix seconds) is recent enough. Shared by single decisions and scheduled promotions."""
    for kind, within in signals:
        at = latest.get(kind)
        if at is not None and now - at <= within:
            return HotPathHit(kind, at, within)
    return None


def exploration_draws(decision_ids: Sequence[str]) -> tuple[FloatArray, FloatArray]:
    """Two uniform [0, 1) numbers per decision id (whether to explore, which minute):
    deterministic, so a decision's exploration can be reproduced from its id."""
    a = np.empty(len(decision_ids))
    b = np.empty(len(decision_ids))
    for i, d in enumerate(decision_ids):
        h = hashlib.blake2b(d.encode(), digest_size=16, person=b"sendflowr-explr").digest()
        a[i] = int.from_bytes(h[:8], "big") / 2.0**64
        b[i] = int.from_bytes(h[8:], "big") / 2.0**64
    return a, b


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def quiet_mask(minutes: IntArray, zone: ZoneInfo, cfg: PolicyConfig) -> BoolArray:
    """True where a target minute (unix seconds) falls in quiet hours, in `zone`'s local time
    (each minute's own UTC offset, so DST days are right)."""
    if not cfg.quiet_hours or not len(minutes):
        return np.zeros(len(minutes), np.bool_)
    assert cfg.quiet_start_minute is not None
    assert cfg.quiet_end_minute is not None
    local = local_minute_of_week(minutes, zone) % DAY_MINUTES
    s, e = cfg.quiet_start_minute, cfg.quiet_end_minute
    out: BoolArray = (local >= s) & (local < e) if s < e else (local >= s) | (local < e)
    return out


def _cap_intervals(sends: Sequence[int], count: int, period: int) -> list[tuple[int, int]]:
    """Target-second intervals [lo, hi] (inclusive, whole minutes) where one more send would
    make `count + 1` sends within some period: for `count` consecutive existing sends s_i..s_j
    that is every t with max(t, s_j) - min(t, s_i) < period."""
    s = sorted(sends)
    out = []
    for i in range(len(s) - count + 1):
        first, last = s[i], s[i + count - 1]
        lo, hi = last - period, first + period  # open interval (lo, hi)
        lo_m = (lo // MINUTE + 1) * MINUTE
        hi_m = -(-hi // MINUTE) * MINUTE - MINUTE
        if lo_m <= hi_m:
            out.append((lo_m, hi_m))
    return out


@dataclass(frozen=True, slots=True)
class Applied:
    """The policies applied to one batch's scores."""

    scores: BatchScores  # candidates incl. boundaries; refused values lowered by REFUSED
    raw: FloatArray  # (N, C) values before masking (for engagement lost)
    allowed: BoolArray  # (N, C)
    suppressed: list[Suppression | None]
    moved_by: list[tuple[str, ...]]  # per row: mask policies that refused the preferred minute
    preferred: IntArray  # (N,) index of the best candidate before masking
    reasons: dict[int, dict[str, str]]  # moved rows: policy -> why it refused the preferred minute
    forced: dict[int, tuple[str, int]]  # row -> (hot_path | exploration, target minute)
    hot_path: dict[int, HotPathHit]
    exploration: BoolArray  # (N,)

    @property
    def candidates(self) -> IntArray:
        return self.scores.candidates

    def value_at(self, row: int, minute: int) -> float:
        """Unmasked value of a whole minute for one row (linear between candidates)."""
        return float(np.interp(minute, self.scores.candidates, self.raw[row]))

    def allowed_at(self, rows: IntArray, minutes: IntArray) -> BoolArray:
        """Whether each (row, minute) is allowed: a candidate's own mask, or between two
        candidates both of which are allowed."""
        c = self.scores.candidates
        j = np.clip(np.searchsorted(c, minutes, side="right") - 1, 0, len(c) - 1)
        at = c[j] == minutes
        nxt = np.minimum(j + 1, len(c) - 1)
        inside = (minutes >= c[0]) & (minutes <= c[-1])
        ok = self.allowed[rows, j] & (at | self.allowed[rows, nxt])
        out: BoolArray = ok & inside
        return out


def apply(
    scores: BatchScores,
    cfg: PolicyConfig,
    facts: Facts,
    zone: ZoneInfo,
    decision_ids: Sequence[str],
) -> Applied:
    """Masks, suppressions and forced minutes for a batch (see the module notes)."""
    n = len(scores.prob)
    cands = scores.candidates
    first, last = int(cands[0]), int(cands[-1])
    zone = recipient_zone(zone)
    # -- refused intervals per row, and every boundary minute
    bounds: list[int] = []
    grid = np.arange(first, last + MINUTE, MINUTE, dtype=np.int64)
    quiet_grid = quiet_mask(grid, zone, cfg)
    if quiet_grid.any():
        change = np.flatnonzero(quiet_grid[1:] != quiet_grid[:-1])
        bounds.extend(grid[change].tolist())
        bounds.extend(grid[change + 1].tolist())
    row_intervals: dict[int, list[tuple[str, int, int]]] = {}
    if cfg.order_cooloff_seconds > 0:
        for r, at in facts.last_order.items():
            until = at + cfg.order_cooloff_seconds  # the first allowed instant
            hi = -(-until // MINUTE) * MINUTE - MINUTE
            if hi >= first:
                row_intervals.setdefault(r, []).append(("recent_order", first - MINUTE, hi))
    if cfg.cap_count is not None:
        for r, sends in facts.sends.items():
            for lo, hi in _cap_intervals(sends, cfg.cap_count, cfg.cap_period_seconds):
                if hi >= first and lo <= last:
                    row_intervals.setdefault(r, []).append(("frequency_cap", lo, hi))
    for spans in row_intervals.values():
        for _, lo, hi in spans:
            bounds.extend((lo - MINUTE, lo, hi, hi + MINUTE))
    # -- candidates: the kinks plus the boundaries, valued by linear interpolation
    prob = scores.prob
    if bounds:
        b = np.asarray(bounds, np.int64)
        b = b[(b >= first) & (b <= last)]
        new = np.setdiff1d(b, cands)  # strictly between two candidates: c0 > 1
        if len(new):
            prob = _with_columns(prob, cands, new)
            cands = np.union1d(cands, new)
    c = len(cands)
    quiet = quiet_mask(cands, zone, cfg)  # (C,) one zone for the batch today
    masks: dict[str, BoolArray] = {}  # refused, per policy, (N, C) only where used
    if quiet.any():
        masks["quiet_hours"] = np.broadcast_to(quiet, (n, c))
    for r, spans in row_intervals.items():
        for name, lo, hi in spans:
            m = masks.get(name)
            if m is None:
                m = masks[name] = np.zeros((n, c), np.bool_)
            m[r] |= (cands >= lo) & (cands <= hi)
    refused = np.zeros((n, c), np.bool_)
    for m in masks.values():
        refused |= m
    allowed = ~refused
    preferred = np.argmax(prob, axis=1)
    # -- suppressions
    suppressed: list[Suppression | None] = [facts.tenant_breaker] * n
    if facts.tenant_breaker is None:
        for r, s in facts.breaker.items():
            suppressed[r] = s
    empty = np.flatnonzero(~allowed.any(axis=1))
    for r in empty.tolist():
        if suppressed[r] is not None:
            continue
        alone = [k for k in MASKS if k in masks and masks[k][r].all()]
        used = [k for k in MASKS if k in masks and masks[k][r].any()]
        names = alone[:1] or used
        why: dict[str, Any] = {k: _why(k, r, cfg, facts, zone) for k in names}
        suppressed[r] = Suppression(
            "+".join(names),
            "no minute of the window is allowed by "
            + " and ".join(f"{_WHY[k]} ({why[k]})" for k in names),
            why,
        )
    # -- what moved the preferred minute
    moved_by: list[tuple[str, ...]] = [()] * n
    reasons: dict[int, dict[str, str]] = {}
    for name, m in masks.items():
        hit = m[np.arange(n), preferred]
        same = _why(name, 0, cfg, facts, zone) if name == "quiet_hours" else None  # no row in it
        for r in np.flatnonzero(hit).tolist():
            if suppressed[r] is None:
                moved_by[r] = (*moved_by[r], name)
                why_r = same if same is not None else _why(name, r, cfg, facts, zone)
                reasons.setdefault(r, {})[name] = why_r
    # -- forced minutes: hot paths first, then exploration
    forced: dict[int, tuple[str, int]] = {}
    live = np.ones(n, np.bool_)  # not suppressed: by a breaker, or with no allowed minute
    if facts.tenant_breaker is not None:
        live[:] = False
    live[list(facts.breaker)] = False
    live[empty] = False
    earliest = np.argmax(allowed, axis=1)
    hot = {r: h for r, h in facts.hot_path.items() if live[r]}
    for r in hot:
        forced[r] = ("hot_path", int(cands[earliest[r]]))
    exploring = np.zeros(n, np.bool_)
    if cfg.exploration_share > 0:
        draw, pick = exploration_draws(decision_ids)
        exploring = (draw < cfg.exploration_share) & live
        exploring[list(hot)] = False
        rows = np.flatnonzero(exploring)
        if len(rows):
            picked = _uniform_minutes(cands, allowed[rows], pick[rows])
            for r, t in zip(rows.tolist(), picked, strict=True):
                forced[r] = ("exploration", t)
    masked = prob.copy()
    np.subtract(masked, REFUSED, out=masked, where=refused)
    return Applied(
        BatchScores(cands, masked, scores.weights, scores.calibration),
        prob,
        allowed,
        suppressed,
        moved_by,
        preferred,
        reasons,
        forced,
        hot,
        exploring,
    )


_WHY: Final = {
    "quiet_hours": "quiet hours",
    "recent_order": "the order cool-off",
    "frequency_cap": "the frequency cap",
}


def _why(name: str, r: int, cfg: PolicyConfig, facts: Facts, zone: ZoneInfo) -> str:
    if name == "quiet_hours":
        assert cfg.quiet_start_minute is not None
        assert cfg.quiet_end_minute is not None
        return (
            f"quiet hours {_hhmm(cfg.quiet_start_minute)}-{_hhmm(cfg.quiet_end_minute)} "
            f"in {zone.key}"
        )
    if name == "recent_order":
        at = facts.last_order[r]
        return (
            f"ordered at {_iso(at)}; no send until {_iso(at + cfg.order_cooloff_seconds)} "
            f"({cfg.order_cooloff_seconds // 3600} h cool-off)"
        )
    return (
        f"at most {cfg.cap_count} sends per {cfg.cap_period_seconds // 3600} h; "
        f"{len(facts.sends.get(r, []))} sent or scheduled around the window"
    )


class _IsoCache(dict[int, str]):
    """_iso for many rows whose minutes repeat (the candidates of one window)."""

    def __call__(self, t: int) -> str:
        out = self.get(t)
        if out is None:
            out = self[t] = _iso(t)
        return out


def _hhmm(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def _with_columns(prob: FloatArray, cands: IntArray, new: IntArray) -> FloatArray:
    """`prob` over `cands` with columns for `new` minutes (sorted, each strictly between two
    candidates) inserted, valued by linear interpolation: the existing columns are copied
    slice by slice, only the new ones are computed."""
    n, c0 = prob.shape
    j = np.searchsorted(cands, new, side="right") - 1
    w = (new - cands[j]) / (cands[j + 1] - cands[j])
    values = prob[:, j] * (1.0 - w) + prob[:, j + 1] * w
    out: FloatArray = np.empty((n, c0 + len(new)), np.result_type(prob, values))
    prev = 0
    for i, at in enumerate((j + 1).tolist()):  # new[i] goes before old column j[i] + 1
        out[:, prev + i : at + i] = prob[:, prev:at]
        out[:, at + i] = values[:, i]
        prev = at
    out[:, prev + len(new) :] = prob[:, prev:]
    return out


def _uniform_minutes(cands: IntArray, allowed: BoolArray, u: FloatArray) -> list[int]:
    """A whole minute per row drawn uniformly (u in [0, 1)) from its allowed minutes: an allowed
    candidate counts one, the minutes strictly between two allowed candidates count too."""
    k, c = allowed.shape
    gaps = np.diff(cands) // MINUTE - 1  # whole minutes strictly between candidates
    units = np.zeros((k, 2 * c - 1), np.int64)
    units[:, 0::2] = allowed
    if c > 1:
        units[:, 1::2] = (allowed[:, :-1] & allowed[:, 1:]) * gaps
    cum = np.cumsum(units, axis=1)
    total = cum[:, -1]
    r = np.minimum((u * total).astype(np.int64), total - 1)
    pos = np.sum(cum <= r[:, None], axis=1)  # the unit holding draw r
    before = np.where(pos > 0, cum[np.arange(k), np.maximum(pos - 1, 0)], 0)
    cand = pos // 2
    out = np.where(pos % 2 == 0, cands[cand], cands[cand] + MINUTE * (1 + r - before))
    return [int(x) for x in out]


@dataclass(frozen=True, slots=True)
class Chosen:
    decisions: BatchDecisions  # rows of suppressed people are meaningless
    policies: list[tuple[str, ...]]
    details: list[dict[str, Any]]


def choose_allowed(applied: Applied, latency_s: int, params: EngineParams | None = None) -> Chosen:
    """Each row's decision under the policies: the engine's choice over the masked scores,
    forced minutes where a hot path or exploration placed the send, alternatives only among
    allowed minutes, and the named policies with their details."""
    d = choose(applied.scores, latency_s, params or EngineParams())
    target = d.target.copy()
    confidence = d.confidence.copy()
    model = None if d.model_confidence is None else d.model_confidence.copy()
    cal = applied.scores.calibration
    for r, (_, t) in applied.forced.items():
        target[r] = t
        value = applied.value_at(r, t)
        confidence[r] = value if cal is None else cal.apply_one(value)
        if model is not None:
            model[r] = value
    bad = ~(d.alternative_scores >= 0)  # refused (lowered below 0) or absent
    alts = np.where(bad, -1, d.alternatives)
    alt_scores = np.where(bad, np.nan, d.alternative_scores)
    decisions = BatchDecisions(
        target,
        target - latency_s,
        confidence,
        alts,
        alt_scores,
        d.level,
        d.weights,
        model,
    )
    policies, details = describe(applied, target)
    return Chosen(decisions, policies, details)


def describe(
    applied: Applied, target: IntArray
) -> tuple[list[tuple[str, ...]], list[dict[str, Any]]]:
    """Per row, the policies that moved or suppressed the decision and what they did
    (`target`: the minute each row finally got; ignored for suppressed rows)."""
    n = len(applied.suppressed)
    policies: list[tuple[str, ...]] = [()] * n
    details: list[dict[str, Any]] = [{} for _ in range(n)]
    cands = applied.candidates
    iso = _IsoCache()
    touched = set(applied.reasons) | set(applied.forced)  # moved or placed
    if applied.suppressed.count(None) < n:
        touched |= {r for r, s in enumerate(applied.suppressed) if s is not None}
    rows = np.array(sorted(touched), np.int64)
    # per touched row, as Python numbers: what the loop below reads; the unmasked value at
    # the final minute is a candidate's own value where it is one (what value_at's
    # interpolation gives there), interpolated otherwise
    final = np.asarray(target, np.int64)[rows]
    at = np.clip(np.searchsorted(cands, final), 0, len(cands) - 1)
    best = applied.preferred[rows]
    pref_l = cands[best].tolist()
    raw_pref_l = applied.raw[rows, best].tolist()
    raw_at_l = applied.raw[rows, at].tolist()
    on_l = (cands[at] == final).tolist()
    chosen_l = final.tolist()
    for i, r in enumerate(rows.tolist()):
        s = applied.suppressed[r]
        if s is not None:
            policies[r] = tuple(s.policy.split("+"))
            details[r] = {"suppressed": {"policy": s.policy, "reason": s.reason, **s.details}}
            continue
        names: list[str] = []
        info: dict[str, Any] = {}
        pref, chosen = pref_l[i], chosen_l[i]
        forced = applied.forced.get(r)
        if applied.moved_by[r] and pref != chosen and forced is None:
            here = raw_at_l[i] if on_l[i] else applied.value_at(r, chosen)
            lost = raw_pref_l[i] - here
            for name in applied.moved_by[r]:
                names.append(name)
                info[name] = {
                    "preferred_minute_utc": iso(pref),
                    "chosen_minute_utc": iso(chosen),
                    "engagement_preferred": round(raw_pref_l[i], 6),
                    "engagement_lost": round(lost, 6),
                    "reason": applied.reasons[r][name],
                }
        if forced is not None:  # placed by a rule, within the allowed minutes
            kind, t = forced
            names.append(kind)
            if kind == "hot_path":
                h = applied.hot_path[r]
                info["hot_path"] = {
                    "signal": h.signal,
                    "signal_at": _iso(h.at),
                    "within_seconds": h.within_seconds,
                    "promoted_to_utc": _iso(t),
                }
            else:
                info["exploration"] = {
                    "rule": "uniform over the allowed minutes, drawn from the decision id",
                    "minute_utc": _iso(t),
                    "engagement_best": round(float(applied.raw[r].max()), 6),
                    "engagement_here": round(applied.value_at(r, t), 6),
                }
        policies[r] = tuple(names)
        details[r] = info
    return policies, details
